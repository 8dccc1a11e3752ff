"""Activation binarizers: one registered module class per method, placed in front of a conv.

Models put one of these between a conv's BatchNorm and the conv (the fbin/hybrid blocks BN -> binarize
-> conv; SD-BNN and Bi-Real blocks binarize -> conv -> BN); ``binarize.binarize_inputs`` and
``binarize.set_input_binarizer`` swap them per conv. Each class holds its forward, its backward (a
surrogate window, see surrogates.py) and its learnable parameters if any. ``packable`` says whether the
output is ``sign(pre_sign(x))`` (values -1 and +1), which a packed XNOR/popcount conv can consume.

* ``sign`` (:class:`BinActive`, the original's ``Active``): ``sign(x)``; backward ``g win(x)``, with the
  straight-through window ``[|x| <= 1]`` (or EDE's).
* ``approxsign``: ``sign(x)`` with Bi-Real Net's ApproxSign backward ``2 - 2|x|`` on ``|x| < 1``.
* ``asd``: SD-BNN's activation self-distribution, ``sign(x + s(x))`` with ``s`` a squeeze-excitation
  branch (global average pool -> Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> sigmoid, no biases), so
  the sign threshold of each sample and channel moves to ``-s`` with ``s`` in (0, 1). Its backward is
  any rule, taken at the shifted value: EDE in SD-BNN's CIFAR recipe, ApproxSign (``backward=
  "approxsign"``) in its ImageNet Bi-Real recipe.
* ``dab`` (:class:`DABActive`, the original's ``DualActive``): per sample, mean-centre over channels and
  take a two-value code with the threshold at 0: entries at or above it take the mean of those entries,
  the rest the mean of the rest. Its statistics are computed in fp32 whatever the input's precision.
  Backward: ``g win(x)`` (the original mixed its two branch terms; see README).

sign(0) is +1 in every activation binarizer, as in every weight binarizer (weights.py): an input of
exactly 0 (or -0.0) gives +1, a NaN gives -1, so the output is always two-valued. (``torch.sign``,
which the original's Active and SD-BNN's code use, gives 0 there.) For ``dab`` the same rule puts a
centred value of exactly 0 in the upper group.
"""

import inspect

import torch
from torch import nn

from .functions import binary_sign, no_autocast
from .registry import registrar
from .surrogates import ApproxSignWindow, make_surrogate

__all__ = ["ActivationBinarizer", "BinActive", "ApproxSign", "ASD", "DABActive", "ACTIVATIONS",
           "register_activation_binarizer", "activation_class", "make_activation"]

ACTIVATIONS = {}  # name -> class


register_activation_binarizer = registrar(ACTIVATIONS, "activation binarizer")


class _SignWithWindow(torch.autograd.Function):
    """``sign(x)`` forward (+1 for x >= 0, -1 elsewhere); backward ``g * window(x)`` (closed window: |x| <= 1
    passes under the STE)."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.surrogate.pass_through(grad, x, closed=True), None


class ActivationBinarizer(nn.Module):
    """Base class: ``forward(x) = sign(pre_sign(x))`` with the surrogate's backward.

    ``channels`` is the number of input channels (needed by learnable binarizers such as ASD);
    ``backward`` a surrogate name or instance (``ste`` by default).
    """

    name = None
    packable = True

    def __init__(self, channels=None, *, backward=None):
        super().__init__()
        self.channels = channels
        self.surrogate = make_surrogate(backward)

    def pre_sign(self, x):
        """The tensor whose sign is the output (``x`` itself unless the binarizer shifts it)."""
        return x

    def settings(self):
        """The constructor settings that shape this binarizer's parameters (rebuilding an export needs them)."""
        return {}

    def forward(self, x):
        return _SignWithWindow.apply(self.pre_sign(x), self.surrogate)

    def extra_repr(self):
        return f"backward={self.surrogate!r}"


@register_activation_binarizer
class BinActive(ActivationBinarizer):
    """Sign activation (the original's ``Active``): ``sign(x)`` with sign(0) = +1, gradient passed where
    |x| <= 1."""

    name = "sign"


@register_activation_binarizer
class ApproxSign(ActivationBinarizer):
    """``sign(x)`` with Bi-Real Net's ApproxSign backward: ``g (2 - 2|x|)`` on ``|x| < 1``, 0 elsewhere.

    The backward is the method itself, so a ``backward`` argument other than ``approxsign`` is refused.
    """

    name = "approxsign"

    def __init__(self, channels=None, *, backward=None):
        if backward not in (None, "approxsign") and not isinstance(backward, ApproxSignWindow):
            raise ValueError("approxsign is sign with Bi-Real's backward; it takes no other backward rule "
                             "(for another rule use the sign activation with that backward)")
        super().__init__(channels, backward=ApproxSignWindow())


@register_activation_binarizer
class ASD(ActivationBinarizer):
    """SD-BNN's activation self-distribution: ``sign(x + s(x))``, ``s`` a squeeze-excitation branch.

    ``reduction`` is r (16 on CIFAR, 8 on ImageNet in SD-BNN); the hidden width is max(1, C // r).
    ``init_std`` None initialises the two Linears Kaiming-normal (fan-in, as SD-BNN's ResNets), a number
    N(0, init_std) (0.01 in its VGG-Small).
    """

    name = "asd"

    def __init__(self, channels=None, *, backward=None, reduction=16, init_std=None):
        super().__init__(channels, backward=backward)
        if not channels:
            raise ValueError("the asd activation binarizer needs the number of input channels")
        hidden = max(1, channels // reduction)
        self.reduction = reduction
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        for fc in (self.fc1, self.fc2):
            if init_std is None:
                nn.init.kaiming_normal_(fc.weight)
            else:
                nn.init.normal_(fc.weight, 0.0, init_std)

    def shift(self, x):
        """``s(x)``, shape [B, C, 1, 1], values in (0, 1)."""
        squeezed = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))[:, :, None, None]

    def pre_sign(self, x):
        return x + self.shift(x).to(x.dtype)

    def settings(self):
        return {"reduction": self.reduction}

    def extra_repr(self):
        return f"channels={self.channels}, reduction={self.reduction}, backward={self.surrogate!r}"


class _DABActiveFn(torch.autograd.Function):
    """Activation DAB forward, counted and summed in fp32 (fp64 stays fp64); backward ``g * window(x)``."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        with no_autocast(x.device):
            wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
            centred = wide - wide.mean(dim=1, keepdim=True)
            flat = centred.reshape(centred.shape[0], -1)
            upper = (flat >= 0).to(wide.dtype)
            k = upper.sum(dim=1)
            n = flat.shape[1]
            alpha = (flat * upper).sum(dim=1) / k.clamp_min(1)
            beta = (flat * (1 - upper)).sum(dim=1) / (n - k).clamp_min(1)
            out = torch.addcmul(beta.unsqueeze(1), (alpha - beta).unsqueeze(1), upper)
        return out.reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.surrogate.pass_through(grad, x, closed=True), None


@register_activation_binarizer
class DABActive(ActivationBinarizer):
    """Activation DAB (the original's ``DualActive``): a per-sample two-value code with threshold 0.

    Forward: ``x_c = x - mean_channels(x)``; entries with ``x_c >= 0`` take the mean of those entries
    (alpha_n >= 0), the others the mean of the negative ones (beta_n < 0; 0 when there is none).
    Backward: ``g win(x)``.
    """

    name = "dab"
    packable = False

    def forward(self, x):
        return _DABActiveFn.apply(x, self.surrogate)


def activation_class(spec):
    """The ActivationBinarizer class of a registered name (or the class itself); ValueError otherwise."""
    cls = spec if isinstance(spec, type) and issubclass(spec, ActivationBinarizer) else ACTIVATIONS.get(spec)
    if cls is None:
        raise ValueError(f"unknown activation binarizer {spec!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
    return cls


def make_activation(spec, channels=None, *, backward=None, **kwargs):
    """An activation binarizer from a registered name or class; ``kwargs`` go to classes that take them
    (e.g. ASD's ``reduction`` and ``init_std``) and are ignored by the others."""
    cls = activation_class(spec)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(channels, backward=backward, **{k: v for k, v in kwargs.items() if k in accepted})
