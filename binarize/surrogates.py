"""Backward rules: the derivative that stands in for sign's, shared by weight and activation binarizers.

sign has a zero derivative almost everywhere, so every binarizer passes its gradient through a window
``w(x)`` instead. Each rule below is one small object with ``window(x)``; a binarizer multiplies the
incoming gradient by its own formula with ``[|x| < 1]`` replaced by ``window(x)``:

* ``ste``: the clipped straight-through estimator, ``[|x| < 1]`` (``[|x| <= 1]`` for activations, the
  sign activation's convention here: a value of exactly +-1 still passes).
* ``ede``: IR-Net's error decay estimator (Qin et al., CVPR 2020), the derivative of ``k tanh(t x)``:
  ``k t (1 - tanh^2(t x))``. ``t`` and ``k`` follow :func:`ede_schedule`, set at the start of every epoch
  with :func:`binarize.set_ede`.
* ``approxsign``: Bi-Real Net's ApproxSign (Liu et al., ECCV 2018), the derivative of its piecewise
  quadratic: ``2 - 2|x|`` on ``|x| < 1``, 0 elsewhere.

A window is computed in fp32 for half-precision inputs (fp64 stays fp64) and returned as a fresh
tensor, which the caller may modify in place.
"""

import math

import torch

__all__ = ["Surrogate", "STE", "EDE", "ApproxSignWindow", "SURROGATES", "make_surrogate", "ede_schedule"]


def _wide(x):
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class Surrogate:
    """Base of the backward rules: ``window(x, closed=False)`` replaces ``[|x| < 1]``."""

    name = None

    def window(self, x, closed=False):
        raise NotImplementedError

    def pass_through(self, grad, x, closed=False):
        """``grad * window(x)``, in ``grad``'s dtype (a rule may fuse the two)."""
        return grad * self.window(x, closed).to(grad.dtype)

    def __repr__(self):
        return f"{type(self).__name__}()"


class STE(Surrogate):
    """``[|x| < 1]`` (``closed``: ``[|x| <= 1]``), 1.0 or 0.0 in the input's dtype."""

    name = "ste"

    def window(self, x, closed=False):
        return x.abs().le_(1) if closed else x.abs().lt_(1)

    def pass_through(self, grad, x, closed=False):
        # hardtanh's backward passes g where -b < x < b in one pass; b = 1 + eps makes that |x| <= 1 exactly
        bound = 1.0 + torch.finfo(x.dtype).eps if closed else 1.0
        if x.dtype != grad.dtype:
            return super().pass_through(grad, x, closed)
        return torch.ops.aten.hardtanh_backward(grad, x, -bound, bound)


class EDE(Surrogate):
    """IR-Net's error decay estimator: ``k t (1 - tanh^2(t x))``; ``t`` and ``k`` are set every epoch."""

    name = "ede"

    def __init__(self, t=1.0, k=1.0):
        self.t, self.k = float(t), float(k)

    def window(self, x, closed=False):
        th = torch.tanh(_wide(x) * self.t)
        return th.square_().neg_().add_(1.0).mul_(self.k * self.t)

    def pass_through(self, grad, x, closed=False):
        # tanh's own backward kernel computes g (1 - y^2) in one pass over activation-sized tensors
        th = torch.tanh(_wide(x) * self.t)
        scaled = (grad * (self.k * self.t)).to(th.dtype)
        return torch.ops.aten.tanh_backward(scaled, th).to(grad.dtype)

    def __repr__(self):
        return f"EDE(t={self.t:.4g}, k={self.k:.4g})"


class ApproxSignWindow(Surrogate):
    """Bi-Real Net's ApproxSign derivative: ``2 - 2|x|`` for ``|x| < 1``, else 0."""

    name = "approxsign"

    def window(self, x, closed=False):
        return _wide(x).abs().mul_(-2.0).add_(2.0).clamp_(min=0.0)


SURROGATES = {cls.name: cls for cls in (STE, EDE, ApproxSignWindow)}


def make_surrogate(spec):
    """A Surrogate from a name (``ste``, ``ede``, ``approxsign``), an instance, or None (``ste``)."""
    if spec is None:
        return STE()
    if isinstance(spec, Surrogate):
        return spec
    if spec not in SURROGATES:
        raise ValueError(f"unknown backward rule {spec!r}; choose from {', '.join(SURROGATES)}")
    return SURROGATES[spec]()


def ede_schedule(epoch, epochs, t_min, t_max):
    """IR-Net's EDE schedule at 0-based ``epoch`` of ``epochs``: ``(t, k)`` with
    ``t = 10^(log10 t_min + (log10 t_max - log10 t_min) * epoch / epochs)`` and ``k = max(1/t, 1)``."""
    if not (0 < t_min <= t_max) or epochs < 1:
        raise ValueError(f"EDE needs 0 < t_min <= t_max and epochs >= 1, got {t_min}, {t_max}, {epochs}")
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10 ** (lo + (hi - lo) * epoch / epochs)
    return t, max(1.0 / t, 1.0)
