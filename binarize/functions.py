"""The weight solvers as pure functions: the exact DAB code of every filter and its BWN/XNOR and BNN baselines.

DAB (Prabhu et al., WACV 2018, Sec. 3 and Algorithm 1) replaces each conv filter W (n values) by the
two-value code ``alpha * e + beta * (1 - e)``. For a fixed selection e with K ones the least-squares
values are the group means, and the best e maximises

    D(K) = (sum of the K largest)^2 / K + (sum of the other n - K)^2 / (n - K)

(the squared error is ||W||^2 - D). The optimum always splits the *sorted* values, so one sort plus
prefix sums scores every split K = 1..n-1 at once. The prefix sums are accumulated in fp64 for every
input precision, so K is the optimum of D evaluated in fp64. Conventions, as in the paper: alpha is
the mean of the upper group (the K largest values), beta of the lower one, and alpha >= beta always;
n == 1 gives alpha = beta = w and K = 1; a constant filter gives alpha == beta == its value and zero
error.

The baselines use the same return convention ``(w_hat, alpha, beta, k)``:
  * ``xnor`` (BWN / XNOR-Net): ``a * sign(W)`` with ``a = mean(|W|)``; zeros map to ``+a`` so the code
    stays two-valued (XNOR-Net's torch.sign would give a third value, 0).
  * ``bnn``: ``sign(W)`` with the same zero convention.

Every solver runs with autocast off and in fp32 for half-precision weights (fp64 stays fp64), see
:func:`exact`; the binarizer classes of weights.py wrap them with their gradient rules. This module
imports torch only (no torchvision), so the engine can be used on its own.
"""

import contextlib
import functools

import torch

__all__ = ["dab", "xnor", "bnn", "binary_sign", "dab_with_mask", "exact", "no_autocast", "upper_mask"]


def _accumulate_dtype(dtype):
    """The dtype of XNOR's mean of |W|: fp32 for half-precision and fp32 weights, fp64 for fp64 ones."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def no_autocast(device):
    """A context with autocast off on ``device`` (a no-op where autocast does not exist, e.g. "meta")."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def exact(solver):
    """Run ``solver(weight)`` with autocast off and half-precision weights widened to fp32 (fp64 stays
    fp64), whatever autocast says: choosing K in half precision picks another split in almost every
    filter. Floating outputs come back in the weight's dtype."""
    @functools.wraps(solver)
    def run(weight, *args):
        with no_autocast(weight.device):
            wide = weight if weight.dtype in (torch.float32, torch.float64) else weight.float()
            out = solver(wide, *args)
        if wide is weight:
            return out
        return tuple(t.to(weight.dtype) if t.is_floating_point() else t for t in out)
    return run


@exact
def _dab_solve(weight, hint=None):
    """The DAB solve: ``(w_hat, alpha, beta, k, order, e)``, ``order`` the descending sort permutation of
    each filter and ``e`` its upper-group mask (bool, [C_out, n]).

    One ``torch.sort`` per call for all filters of the layer; no Python loop over filters. After it, the
    fp64 prefix sums choose K (:func:`_best_split`), the group means follow (:func:`_group_means`) and
    the code is written in place over the 0/1 upper-group indicator.

    ``hint``: a permutation that nearly sorts the rows (the previous step's ``order`` during training);
    the rows are sorted in that order, which takes about half the time of sorting them afresh. The
    sorted values, and so K, alpha and beta, are the same either way; only the order of equal values
    may differ, which changes no weight of the code (equal values never straddle an optimal split
    unless they lie exactly halfway between alpha and beta).
    """
    if weight.dim() < 1 or weight.shape[0] == 0 or weight[0].numel() == 0:
        raise ValueError(f"dab expects a weight of shape [C_out, ...] with C_out >= 1 and at least one value "
                         f"per filter, got {tuple(weight.shape)}")
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] == 1:  # a single value: alpha = beta = w, K = 1, exact
        values = rows[:, 0]
        k = torch.ones(rows.shape[0], dtype=torch.long, device=weight.device)
        order = torch.zeros_like(rows, dtype=torch.long)
        return weight.clone(), values.clone(), values.clone(), k, order, torch.ones_like(rows, dtype=torch.bool)

    sorted_vals, order = _sort_rows(rows, hint)
    best, upper_sum, total = _best_split(sorted_vals)
    k = best.squeeze(1) + 1
    kth, below = sorted_vals.gather(1, best), sorted_vals.gather(1, best + 1)
    alpha, beta = _group_means(sorted_vals, k, kth, below, upper_sum, total)

    gap, low = (alpha - beta).to(weight.dtype), beta.to(weight.dtype)
    alpha = gap + low  # the value the code holds, bit for bit (>= beta: gap >= 0 and rounding is monotone)
    # The upper group is every value >= the K-th largest unless that equals the (K+1)-th (equal values
    # straddling the split); then, and on GPUs (where checking would cost a host sync), the mask comes
    # through the permutation. On the CPU one compare replaces a scatter; it writes 1.0 / 0.0 in the
    # weight's dtype, which is about twice as fast there as a bool compare, and the bool mask follows.
    if weight.device.type == "cpu" and not bool((below == kth).any()):
        upper = torch.ge(rows, kth, out=torch.empty_like(rows))
        mask = upper.bool()
    else:
        mask = upper_mask(order, k)
        upper = mask.to(rows.dtype)
    w_hat = upper.mul_(gap.unsqueeze(1)).add_(low.unsqueeze(1))  # beta + e (alpha - beta)
    return w_hat.reshape(weight.shape), alpha, low, k, order, mask


def _sort_rows(rows, hint):
    """``(sorted values, permutation)`` of each row in descending order, through ``hint`` when it fits."""
    if hint is not None and hint.shape == rows.shape and hint.device == rows.device:
        sorted_vals, within = torch.sort(rows.gather(1, hint), dim=1, descending=True)
        return sorted_vals, hint.gather(1, within)
    return torch.sort(rows, dim=1, descending=True)


def _best_split(sorted_vals):
    """The optimal split of each sorted row: ``(K - 1 as [C_out, 1], u_K, T)``, sums in fp64.

    The prefix sums are accumulated in fp64 whatever the input precision (fp32 sums pick another K than
    the fp64 optimum in about one filter in eight of a 3x3x512 layer: D is flat near its maximum).
    D(K) = T^2/n + n c_K^2 / (K (n - K)) with c_K = u_K - K T/n (u_K the prefix sum, T the total);
    c_K >= 0 (the K largest values sum to at least K times the mean), so argmax D is the argmax of
    c_K / sqrt(K (n - K)): two passes over the prefix sums.
    """
    n = sorted_vals.shape[1]
    prefix = torch.cumsum(sorted_vals, dim=1, dtype=torch.float64)  # prefix[:, K-1] = sum of the K largest
    total = prefix[:, -1]
    upper = prefix[:, :-1]                                           # K = 1 .. n-1
    sizes = torch.arange(1, n, device=sorted_vals.device, dtype=torch.float64)
    score = torch.addr(upper, total, sizes, alpha=-1.0 / n).mul_((sizes * (n - sizes)).rsqrt_())
    best = score.max(dim=1, keepdim=True).indices                    # first maximiser: ties go to the smallest K
    return best, upper.gather(1, best).squeeze(1), total


def _group_means(sorted_vals, k, kth, below, upper_sum, total):
    """fp64 ``(alpha, beta)``: the means of the K largest values and of the rest.

    Each mean is clamped to its group's range (the K-th largest value and the maximum for alpha, the
    minimum and the (K+1)-th largest for beta), which a mean cannot leave: so alpha >= beta always, and
    a constant filter, whose prefix sums round in fp64, gets alpha == beta == its value exactly.
    """
    n = sorted_vals.shape[1]
    wide = torch.float64
    alpha = upper_sum / k
    beta = (total - upper_sum) / (n - k)
    alpha = torch.clamp(alpha, kth.squeeze(1).to(wide), sorted_vals[:, 0].to(wide))
    beta = torch.clamp(beta, sorted_vals[:, -1].to(wide), below.squeeze(1).to(wide))
    return alpha, beta


def upper_mask(order, k):
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
    w_hat, alpha, beta, k, _, mask = _dab_solve(weight)
    return w_hat, alpha, beta, k, mask.reshape(weight.shape)


def binary_sign(x):
    """The sign binarization used throughout the engine, for weights and activations alike: +1 where
    ``x >= 0`` (so an exact zero, of either sign, gives +1) and -1 elsewhere (a NaN gives -1), in ``x``'s
    dtype. ``torch.sign`` would give a third value, 0, for a zero input. (The compare writes 1.0 / 0.0
    straight into ``x``'s dtype: on the CPU a bool compare and a conversion take about four times as long.)"""
    return torch.ge(x, 0, out=torch.empty_like(x)).mul_(2).sub_(1)


def _sign_code(weight):
    """(+1/-1 code, K): :func:`binary_sign`'s rule (zeros go to +1)."""
    code = binary_sign(weight)
    return code, code.reshape(weight.shape[0], -1).gt(0).sum(dim=1)


@exact
def xnor(weight):
    """BWN / XNOR-Net weights through the DAB interface: ``(a * sign(W), a, -a, k)``, ``a = mean|W|``."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().mean(dim=1, dtype=_accumulate_dtype(weight.dtype)).to(weight.dtype)
    code, k = _sign_code(weight)
    return code * scale.reshape((-1,) + (1,) * (weight.dim() - 1)), scale, -scale, k


@exact
def bnn(weight):
    """BNN weights through the DAB interface: ``(sign(W), 1, -1, k)``."""
    code, k = _sign_code(weight)
    ones = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return code, ones, -ones, k


