"""Weight binarizers: one registered class per method, each a parametrization ``latent W -> binarized W``.

A binarizer is one object in the shape of larq's quantizers: it holds its forward solve (``solve``),
its backward rule (``grad_scale``, with the clipped window of the rule supplied by its surrogate, see
surrogates.py), its learnable parameters (an optional per-filter weight shift), the per-filter
statistics of its last solve (``last``), and how its code is stored (``scales``, ``encode``,
``decode``). Training, the export, the summary and the packed inference all ask the object; none of
them switches on a method's name. A new method is one subclass plus ``@register_weight_binarizer``.

Every binarized layer's latent weight is *projected* (the original training loop's step: mean-centre
over the input-channel dimension, then clamp to [-1, 1]) when the binarizer is attached and after every
optimizer step (a global optimizer step post-hook, below), so at rest the latent weights are always
projected and every way of loading them gives the same model. Filters with one input channel are not
centred (centring would zero them), and the gradient rules drop the ``(1 - 1/C_in)`` factor there.

Methods (DAB: Prabhu et al., WACV 2018; SD-BNN: Xue et al., "Self-Distribution Binary Neural Networks";
``c = 1 - 1/C_in`` where centred, else 1; ``win`` the surrogate window, ``[|W| < 1]`` for the
straight-through estimator):

* ``dab``: the exact optimal two-value code; gradient ``c (e (1/K + |alpha| win) + (1-e) (1/(n-K) + |beta| win))``.
* ``xnor``: ``a sign(W)``, ``a = mean|W|``; gradient ``c (n a win + 1)`` (the original's updateBinaryGradWeight).
* ``bnn``: ``sign(W)``; gradient ``win``.
* ``sign``: ``sign(W)`` as SD-BNN and IR-Net binarize weights: no scale and **no projection** of the
  latent weights (neither centred nor clamped); gradient ``win``.

sign(0) is +1 for every weight binarizer, so each code stays two-valued.
"""

from collections import namedtuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from .functions import _dab_solve, bnn, no_autocast, xnor
from .registry import registrar
from .surrogates import make_surrogate

__all__ = ["WeightBinarizer", "DAB", "XNOR", "BNN", "Sign", "WeightShift", "FilterStats", "WEIGHT_BINARIZERS",
           "WEIGHT_SHIFTS", "register_weight_binarizer", "make_weight_binarizer"]

FilterStats = namedtuple("FilterStats", "k alpha beta n")  # per filter: K, alpha, beta ([C_out]); n per filter

WEIGHT_BINARIZERS = {}  # name -> class


register_weight_binarizer = registrar(WEIGHT_BINARIZERS, "weight binarizer")


def _per_filter(t):
    return t.unsqueeze(1)


class _BinarizeRows(torch.autograd.Function):
    """Forward: ``binarizer.solve``; backward: ``binarizer.grad_scale`` times the incoming gradient.

    The solve runs once, in the forward; what it saves (K, alpha, beta, DAB's upper-group mask) serves the
    backward, so a training step sorts each layer's weight exactly once.
    """

    @staticmethod
    def forward(ctx, rows, binarizer):
        w_hat, alpha, beta, k, *saved = binarizer.solve(rows.detach())
        ctx.binarizer = binarizer
        ctx.save_for_backward(rows.detach(), alpha, beta, k, *saved)
        ctx.mark_non_differentiable(alpha, beta, k)
        return w_hat, alpha, beta, k

    @staticmethod
    def backward(ctx, grad, *unused):
        rows, alpha, beta, k, *saved = ctx.saved_tensors
        binarizer = ctx.binarizer
        scale = binarizer.grad_scale(rows, alpha, beta, k, saved, binarizer.surrogate.window(rows))
        return scale.mul_(grad), None  # scale is a fresh tensor: reuse it for the result


class WeightBinarizer(nn.Module):
    """Base class: subclasses set ``name`` and ``scales`` and implement ``solve`` and ``grad_scale``.

    ``shape`` is the latent weight's shape ([C_out, C_in, ...]); ``backward`` the surrogate (``ste``,
    ``ede`` or an instance); ``shift`` an optional learnable shift applied before the solve (``wsd``).
    """

    name = None
    scales = ()          # per-filter values the export stores besides the bits: a subset of (alpha, beta)
    projected = True     # centre (C_in > 1) and clamp the latent weight after every optimizer step

    def __init__(self, shape, *, backward=None, shift=None):
        super().__init__()
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"a weight binarizer needs a weight of shape [C_out, C_in, ...], got {shape}")
        self.shape = shape
        self.centred = self.projected and shape[1] > 1
        self.centring = 1.0 - 1.0 / shape[1] if self.centred else 1.0
        self.surrogate = make_surrogate(backward)
        self.shift = None if shift is None else make_shift(shift, shape)
        self.last = None  # FilterStats of the last solve

    @property
    def method(self):
        return self.name

    def solve(self, rows):
        """``(w_hat, alpha, beta, k, *saved)`` for the rows [C_out, n] (fp32 or fp64)."""
        raise NotImplementedError

    def grad_scale(self, rows, alpha, beta, k, saved, window):
        """The factor on the gradient reaching each latent value; ``window`` may be changed in place."""
        raise NotImplementedError

    def forward(self, latent):
        if isinstance(latent, nn.Parameter):
            _LATENTS[latent] = self  # so the optimizer step hook finds it (also after a deepcopy)
        with no_autocast(latent.device):
            w = latent if latent.dtype in (torch.float32, torch.float64) else latent.float()
            if self.shift is not None:
                w = self.shift(w)
            rows = w.reshape(w.shape[0], -1)
            w_hat, alpha, beta, k = _BinarizeRows.apply(rows, self)
        self.last = FilterStats(k, alpha, beta, rows.shape[1])
        return w_hat.reshape(latent.shape).to(latent.dtype)

    @torch.no_grad()
    def project_(self, latent):
        """The original loop's projection, in place: mean-centre over dim 1 (if centred), clamp to [-1, 1]."""
        if not self.projected:
            return
        if self.centred:
            latent.sub_(latent.mean(dim=1, keepdim=True))
        latent.clamp_(-1.0, 1.0)

    # -- how the code is stored: bits e plus the per-filter values named in ``scales``
    @classmethod
    def code_values(cls, rows):
        """Per filter ``(alpha, beta)`` read off a code [C_out, n]: the +-1 code by default."""
        ones = torch.ones(rows.shape[0], dtype=rows.dtype, device=rows.device)
        return ones, -ones

    @classmethod
    @torch.no_grad()
    def encode(cls, w_hat):
        """``(e, stored)``: the mask (bool, shape of ``w_hat``) and the per-filter tensors named in ``scales``.

        Raises ValueError unless ``w_hat`` holds this method's two-value code in every filter.
        """
        rows = w_hat.detach().reshape(w_hat.shape[0], -1)
        alpha, beta = cls.code_values(rows)
        mask = rows == _per_filter(alpha)
        if not torch.equal(torch.where(mask, _per_filter(alpha), _per_filter(beta)), rows):
            raise ValueError(f"the weight does not hold a two-value {cls.name} code per filter")
        values = {"alpha": alpha, "beta": beta}
        return mask.reshape(w_hat.shape), {s: values[s] for s in cls.scales}

    @classmethod
    def decode_values(cls, stored, c_out, dtype, device="cpu"):
        """Per filter ``(alpha, beta)`` from the stored tensors: alpha defaults to 1, beta to -alpha."""
        alpha = stored["alpha"] if "alpha" in stored else torch.ones(c_out, dtype=dtype, device=device)
        beta = stored["beta"] if "beta" in stored else -alpha
        return alpha, beta

    @classmethod
    def decode(cls, mask, stored, dtype):
        """The dense weight ``beta + (alpha - beta) e`` (shape of ``mask``) from the stored code."""
        alpha, beta = cls.decode_values(stored, mask.shape[0], dtype, mask.device)
        rows = mask.reshape(mask.shape[0], -1)
        return torch.where(rows, _per_filter(alpha), _per_filter(beta)).reshape(mask.shape)

    def extra_repr(self):
        return (f"shape={self.shape}, centred={self.centred}, projected={self.projected}, "
                f"backward={self.surrogate!r}")


@register_weight_binarizer
class DAB(WeightBinarizer):
    """Distribution-aware binarization (Prabhu et al., WACV 2018): the exact optimal two-value code per
    filter, ``alpha`` the mean of the K largest values and ``beta`` the mean of the rest.

    Gradient (the original implementation's updateDualGradWeight):
    ``c (e (1/K + |alpha| win) + (1 - e) (1/(n - K) + |beta| win))``; alpha >= 0 whenever the filter is
    mean-centred, so |alpha| is the formula's alpha there.
    """

    name = "dab"
    scales = ("alpha", "beta")

    def solve(self, rows):
        # The last solve's permutation nearly sorts the next step's weights: a warm start halves the sort
        # (at the cost of keeping it, 8 bytes a weight, between steps).
        w_hat, alpha, beta, k, self._order, mask = _dab_solve(rows, getattr(self, "_order", None))
        return w_hat, alpha, beta, k, mask

    def grad_scale(self, rows, alpha, beta, k, saved, window):
        (mask,) = saved
        n, c = rows.shape[1], self.centring
        # scale = lower + e * (upper - lower), each branch c (1/|group| + |mean| win); in place, with the
        # per-filter constants folded together (no broadcasting where/addcmul: slow on CPU).
        kf = k.to(rows.dtype)
        a_up, a_lo = c / kf, c / (n - kf).clamp_min(1)  # n - K == 0 only when n == 1
        b_up, b_lo = c * alpha.abs(), c * beta.abs()
        scale = window * _per_filter(b_up - b_lo)
        scale.add_(_per_filter(a_up - a_lo)).mul_(mask)
        return scale.add_(window.mul_(_per_filter(b_lo))).add_(_per_filter(a_lo))

    @classmethod
    def code_values(cls, rows):
        return rows.amax(dim=1), rows.amin(dim=1)


@register_weight_binarizer
class XNOR(WeightBinarizer):
    """BWN / XNOR-Net (Rastegari et al., ECCV 2016): ``a sign(W)``, ``a = mean|W|`` per filter.

    Gradient (the original's updateBinaryGradWeight): ``c (n a win + 1)``.
    """

    name = "xnor"
    scales = ("alpha",)

    def solve(self, rows):
        return xnor(rows)

    def grad_scale(self, rows, alpha, beta, k, saved, window):
        n, c = rows.shape[1], self.centring
        return window.mul_(_per_filter(n * c * alpha.abs())).add_(c)

    @classmethod
    def code_values(cls, rows):
        scale = rows.abs().amax(dim=1)
        return scale, -scale


@register_weight_binarizer
class BNN(WeightBinarizer):
    """BNN (Hubara et al., 2016): ``sign(W)``; gradient ``win`` (the clipped straight-through estimator)."""

    name = "bnn"

    def solve(self, rows):
        return bnn(rows)

    def grad_scale(self, rows, alpha, beta, k, saved, window):
        return window


@register_weight_binarizer
class Sign(BNN):
    """``sign(W)`` as SD-BNN and IR-Net binarize weights: no scale, and the latent weights are neither
    centred nor clamped (the following BatchNorm absorbs the scale); gradient ``win``."""

    name = "sign"
    projected = False


class WeightShift(nn.Module):
    """SD-BNN's weight self-distribution (WSD): ``w' = w + sigmoid(p_c) * 0.01 * m_c`` before the solve,
    with ``m_c`` the detached mean of filter c and ``p`` learnable per filter, initialised to 0."""

    name = "wsd"

    def __init__(self, c_out):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(c_out))

    def forward(self, w):
        dims = tuple(range(1, w.dim()))
        mean = w.detach().mean(dim=dims, keepdim=True)
        gate = torch.sigmoid(self.p).to(w.dtype).view((-1,) + (1,) * len(dims))
        return w + gate * 0.01 * mean


WEIGHT_SHIFTS = {WeightShift.name: WeightShift}


def make_shift(spec, shape):
    if isinstance(spec, nn.Module):
        return spec
    if spec not in WEIGHT_SHIFTS:
        raise ValueError(f"unknown weight shift {spec!r}; choose from {', '.join(WEIGHT_SHIFTS)}")
    return WEIGHT_SHIFTS[spec](shape[0])


def make_weight_binarizer(spec, shape, *, backward=None, shift=None):
    """A binarizer for a weight of ``shape`` from a registered name or a WeightBinarizer subclass."""
    if isinstance(spec, type) and issubclass(spec, WeightBinarizer):
        cls = spec
    elif spec in WEIGHT_BINARIZERS:
        cls = WEIGHT_BINARIZERS[spec]
    else:
        raise ValueError(f"unknown weight binarizer {spec!r}; choose from {', '.join(sorted(WEIGHT_BINARIZERS))}")
    return cls(shape, backward=backward, shift=shift)


# Latent weight -> its binarizer. Filled when a binarizer is attached and on every forward (so a deep
# copy of a model registers its own latents on first use). The hook projects, after any optimizer's
# step, the latent weights that optimizer holds: at rest they are always projected.
_LATENTS = WeakIdKeyDictionary()


def _project_after_step(optimizer, args, kwargs):
    for group in optimizer.param_groups:
        for param in group["params"]:
            binarizer = _LATENTS.get(param)
            if binarizer is not None:
                binarizer.project_(param)


register_optimizer_step_post_hook(_project_after_step)
