"""nn.Module faces of the binarizers: activation binarizers and the weight parametrization."""

import torch
from torch import nn

from .functions import DABActiveFn, SignSTEFn, WeightBinarizeFn, SOLVERS


class BinActive(nn.Module):
    """Sign activation (the original's ``Active``): ``sign(x)``, gradient passed where |x| <= 1."""

    def forward(self, x):
        return SignSTEFn.apply(x)


class DABActive(nn.Module):
    """Activation DAB (the original's ``DualActive``): a per-sample two-value code, threshold 0.

    See :class:`binarize.functions.DABActiveFn` for the forward and gradient formulas.
    """

    def forward(self, x):
        return DABActiveFn.apply(x)


ACTIVATIONS = {"sign": BinActive, "dab": DABActive}


class WeightBinarizer(nn.Module):
    """Parametrization ``latent W -> binarized W`` for ``torch.nn.utils.parametrize``.

    Every forward solves the code of ``method`` for all filters at once and keeps per-layer statistics
    of the last solve (``k_frac`` = mean K/n, ``alpha`` and ``beta`` = means over filters) as
    non-persistent buffers, so logging reads them without another solve and checkpoints are unchanged.

    ``centred`` says whether the latent weight is mean-centred over input channels each step (False for
    filters with one input channel, where centring would zero them); the gradient rule then keeps or
    drops its ``(1 - 1/C_in)`` factor.
    """

    def __init__(self, method="dab", centred=True):
        super().__init__()
        if method not in SOLVERS:
            raise ValueError(f"unknown weight binarizer {method!r}; choose from {sorted(SOLVERS)}")
        self.method = method
        self.centred = centred
        self.register_buffer("k_frac", torch.zeros(()), persistent=False)
        self.register_buffer("alpha", torch.zeros(()), persistent=False)
        self.register_buffer("beta", torch.zeros(()), persistent=False)

    def forward(self, weight):
        w_hat, alpha, beta, k = WeightBinarizeFn.apply(weight, self.method, self.centred)
        with torch.no_grad():
            n = weight[0].numel()
            self.k_frac = k.float().mean() / n
            self.alpha = alpha.float().mean()
            self.beta = beta.float().mean()
        return w_hat

    def extra_repr(self):
        return f"method={self.method!r}, centred={self.centred}"
