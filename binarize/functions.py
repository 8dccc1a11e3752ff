"""Weight and activation binarizers: the exact DAB solver, its baselines, and their autograd rules.

DAB (Prabhu et al., WACV 2018, Sec. 3 and Algorithm 1) replaces each conv filter W (n values) by the
two-value code ``alpha * e + beta * (1 - e)``. For a fixed selection e with K ones the least-squares
values are the group means, and the best e maximises

    D(K) = (sum of the K largest)^2 / K + (sum of the other n - K)^2 / (n - K)

(the squared error is ||W||^2 - D). The optimum always splits the *sorted* values, so one sort plus
prefix sums scores every split K = 1..n-1 at once. Conventions (shared/spec/dab.md): alpha is the
mean of the upper group (the K largest values), beta of the lower one, so alpha >= beta; n == 1 gives
alpha = beta = w and K = 1; a constant filter gives zero error.

The baselines use the same return convention ``(w_hat, alpha, beta, k)``:
  * ``xnor`` (BWN / XNOR-Net): ``a * sign(W)`` with ``a = mean(|W|)``; zeros map to ``+a`` so the code
    stays two-valued (XNOR-Net's torch.sign would give a third value, 0).
  * ``bnn``: ``sign(W)`` with the same zero convention.

This module imports torch only (no torchvision), so the engine can be used on its own.
"""

import torch

__all__ = ["dab", "xnor", "bnn", "SOLVERS", "dab_with_mask", "gradient_scale", "WeightBinarizeFn", "SignSTEFn",
           "DABActiveFn"]


def _accumulate_dtype(dtype):
    """Prefix sums of half-precision weights are formed in fp32 (fp64 stays fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dab_solve(weight):
    """The DAB solve: ``(w_hat, alpha, beta, k, order)``, ``order`` the descending sort permutation.

    One ``torch.sort`` per call for all filters of the layer; no Python loop over filters. The code is
    built in sorted order (K times alpha, then beta) and scattered back once; every other step is a
    plain pass over the prefix sums (the broadcasting ``where``/``addcmul`` forms are slower on CPU).
    """
    if weight.dim() < 1 or weight.shape[0] == 0 or weight[0].numel() == 0:
        raise ValueError(f"dab expects a weight of shape [C_out, ...] with C_out >= 1 and at least one value "
                         f"per filter, got {tuple(weight.shape)}")
    rows = weight.reshape(weight.shape[0], -1)
    c_out, n = rows.shape
    acc = _accumulate_dtype(weight.dtype)
    device = weight.device

    if n == 1:  # a single value: alpha = beta = w, K = 1, exact
        values = rows[:, 0]
        k = torch.ones(c_out, dtype=torch.long, device=device)
        order = torch.zeros_like(rows, dtype=torch.long)
        return weight.clone(), values.clone(), values.clone(), k, order

    sorted_vals, order = torch.sort(rows, dim=1, descending=True)
    prefix = torch.cumsum(sorted_vals, dim=1, dtype=acc)  # prefix[:, K-1] = sum of the K largest
    total = prefix[:, -1]
    upper = prefix[:, :-1]                                # K = 1 .. n-1
    sizes = torch.arange(1, n, device=device, dtype=acc)
    # D(K) = T^2/n + n c_K^2 / (K (n - K)) with c_K = u_K - K T/n (u_K the prefix sum, T the total).
    # c_K >= 0 (the K largest values sum to at least K times the mean), so argmax D is the argmax of
    # c_K / sqrt(K (n - K)): two passes over the prefix sums.
    score = torch.addr(upper, total, sizes, alpha=-1.0 / n).mul_((sizes * (n - sizes)).rsqrt_())
    best = score.max(dim=1, keepdim=True).indices        # first maximiser: ties resolve to the smallest K
    k = best.squeeze(1) + 1
    upper_sum = upper.gather(1, best).squeeze(1)
    alpha = upper_sum / k
    beta = (total - upper_sum) / (n - k)

    # In sorted order the code is clamp(K - i, 0, 1) * (alpha - beta) + beta: alpha for i < K, beta after.
    in_sorted = (k.unsqueeze(1).to(acc) - torch.arange(n, device=device, dtype=acc)).clamp_(0, 1)
    gap = alpha - beta
    in_sorted = in_sorted.mul_(gap.unsqueeze(1)).add_(beta.unsqueeze(1)).to(weight.dtype)
    w_hat = torch.empty_like(rows).scatter_(1, order, in_sorted)
    alpha = gap + beta  # the value the code holds, bit for bit (the group mean up to one rounding)
    return w_hat.reshape(weight.shape), alpha.to(weight.dtype), beta.to(weight.dtype), k, order


def _upper_mask(order, k):
    """The upper-group mask ``e`` (bool, [C_out, n]) in each filter's own order, from the sort permutation."""
    n = order.shape[1]
    in_upper = torch.arange(n, device=order.device) < k.unsqueeze(1)
    return torch.empty(order.shape, dtype=torch.bool, device=order.device).scatter_(1, order, in_upper)


def dab(weight):
    """Exact per-filter DAB code of ``weight`` [C_out, ...]: returns ``(w_hat, alpha, beta, k)``.

    ``w_hat`` has the weight's shape and dtype; ``alpha``, ``beta`` (dtype of the weight) and ``k``
    (long) have shape [C_out].
    """
    return _dab_solve(weight)[:4]


def dab_with_mask(weight):
    """:func:`dab` plus the upper-group mask ``e`` (bool, the shape of ``weight``)."""
    w_hat, alpha, beta, k, order = _dab_solve(weight)
    return w_hat, alpha, beta, k, _upper_mask(order, k).reshape(weight.shape)


def _sign_code(weight):
    """(+1/-1 code, K): zeros go to +1 so the code stays two-valued."""
    upper = weight >= 0
    return 2 * upper.to(weight.dtype) - 1, upper.reshape(weight.shape[0], -1).sum(dim=1)


def xnor(weight):
    """BWN / XNOR-Net weights through the DAB interface: ``(a * sign(W), a, -a, k)``, ``a = mean|W|``."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().mean(dim=1, dtype=_accumulate_dtype(weight.dtype)).to(weight.dtype)
    code, k = _sign_code(weight)
    return code * scale.reshape((-1,) + (1,) * (weight.dim() - 1)), scale, -scale, k


def bnn(weight):
    """BNN weights through the DAB interface: ``(sign(W), 1, -1, k)``."""
    code, k = _sign_code(weight)
    ones = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return code, ones, -ones, k


SOLVERS = {"dab": dab, "xnor": xnor, "bnn": bnn}


def _per_filter(t, like):
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def gradient_scale(method, weight, mask, alpha, beta, k, centred):
    """Element-wise factor applied to the gradient that reaches the latent weight.

    With ``c = (1 - 1/C_in)`` (the derivative of the mean-centring; 1 where centring is skipped) and
    ``inside = [|W_i| < 1]`` (the clamp's pass-through region):

    * dab  (the original's updateDualGradWeight, dab.md):
      ``c * ( e_i (1/K + |alpha| inside) + (1 - e_i) (1/(n-K) + |beta| inside) )``;
      alpha >= 0 whenever the filter is mean-centred, so |alpha| is the formula's alpha there.
    * xnor (the original's updateBinaryGradWeight): ``c * (n * a * inside + 1)``.
    * bnn  (clipped straight-through estimator): ``inside``.
    """
    inside = weight.abs().lt_(1)  # 1.0 where |W| < 1, else 0.0, in the weight's dtype
    if method == "bnn":
        return inside
    n = weight[0].numel()
    c_in = weight.shape[1] if weight.dim() > 1 else 1
    centring = (1.0 - 1.0 / c_in) if centred else 1.0
    if method == "xnor":
        return inside.mul_(_per_filter(n * centring * alpha.abs(), weight)).add_(centring)
    # scale = lower + e * (upper - lower), each branch c * (1/|group| + |mean| * inside); in place,
    # with the per-filter constants folded together (no broadcasting where/addcmul: slow on CPU).
    kf = k.to(weight.dtype)
    a_up, a_lo = centring / kf, centring / (n - kf).clamp_min(1)  # n - K == 0 only when n == 1
    b_up, b_lo = centring * alpha.abs(), centring * beta.abs()
    scale = inside * _per_filter(b_up - b_lo, weight)
    scale.add_(_per_filter(a_up - a_lo, weight)).mul_(mask)
    return scale.add_(inside.mul_(_per_filter(b_lo, weight))).add_(_per_filter(a_lo, weight))


class WeightBinarizeFn(torch.autograd.Function):
    """Forward: the binarized weight of ``method``. Backward: the gradient rule of ``method``.

    The solve happens once, in the forward; its permutation, alpha, beta and K are saved for the
    backward, so a training step sorts each layer's weight exactly once.
    """

    @staticmethod
    def forward(ctx, weight, method, centred):
        latent = weight.detach()
        if method == "dab":
            w_hat, alpha, beta, k, order = _dab_solve(latent)
        else:
            (w_hat, alpha, beta, k), order = SOLVERS[method](latent), None
        ctx.method, ctx.centred = method, centred
        ctx.save_for_backward(latent, order, alpha, beta, k)
        ctx.mark_non_differentiable(alpha, beta, k)
        return w_hat, alpha, beta, k

    @staticmethod
    def backward(ctx, grad, *unused):
        weight, order, alpha, beta, k = ctx.saved_tensors
        mask = _upper_mask(order, k).reshape(weight.shape) if order is not None else None
        scale = gradient_scale(ctx.method, weight, mask, alpha, beta, k, ctx.centred)
        return scale.mul_(grad), None, None  # scale is a fresh tensor: reuse it for the result


class SignSTEFn(torch.autograd.Function):
    """``sign(x)`` forward; backward passes the gradient where |x| <= 1 (hard-tanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class DABActiveFn(torch.autograd.Function):
    """Activation DAB (the original's DualActive), per sample with the threshold fixed at 0.

    Forward: ``x_c = x - mean_channels(x)``; entries with ``x_c > 0`` take the mean of those entries
    (alpha_n), the others the mean of the non-positive ones (beta_n <= 0). Backward: the
    straight-through gradient, passed where |x| <= 1 (the original's backward mixed its two branch
    terms; see README).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        centred = x - x.mean(dim=1, keepdim=True)
        flat = centred.reshape(centred.shape[0], -1)
        upper = (flat > 0).to(x.dtype)
        k = upper.sum(dim=1)
        n = flat.shape[1]
        alpha = (flat * upper).sum(dim=1) / k.clamp_min(1)
        beta = (flat * (1 - upper)).sum(dim=1) / (n - k).clamp_min(1)
        out = torch.addcmul(beta.unsqueeze(1), (alpha - beta).unsqueeze(1), upper)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)
