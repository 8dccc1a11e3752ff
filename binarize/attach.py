"""Attach weight binarization to a model's conv layers by their 1-based index.

``--binStart s --binEnd t`` mean: number every ``nn.Conv2d`` in ``model.modules()`` order from 1 and
binarize the weights of convs s..t (inclusive; t is clipped to the number of convs). Each selected conv
keeps a real-valued latent weight (``conv.parametrizations.weight.original``) that the optimizer
updates, and every forward, in training and in evaluation, uses its binarized version.

The original training loop also projected the latent weights before every forward: mean-centre over
the input-channel dimension, then clamp to [-1, 1], in place and permanently. Here a forward pre-hook
on each binarized conv does that projection whenever the latent weight has changed since the last
projection (an optimizer step, a ``load_state_dict``), so the training loop stays a plain PyTorch loop.
Centring is skipped for filters with one input channel (a first conv on grayscale input, depthwise
convs): there the original zeroed the filter, and the gradient's ``(1 - 1/C_in)`` factor is dropped too.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from .modules import WeightBinarizer


def conv_layers(model):
    """``[(index, name, conv)]`` for every nn.Conv2d in ``model.modules()`` order, index from 1."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return [(i, name, conv) for i, (name, conv) in enumerate(convs, start=1)]


def _binarizer(conv):
    if not parametrize.is_parametrized(conv, "weight"):
        return None
    for p in conv.parametrizations.weight:
        if isinstance(p, WeightBinarizer):
            return p
    return None


def binarized_layers(model):
    """``[(index, name, conv, binarizer)]`` for the convs whose weights are binarized."""
    out = []
    for index, name, conv in conv_layers(model):
        binarizer = _binarizer(conv)
        if binarizer is not None:
            out.append((index, name, conv, binarizer))
    return out


@torch.no_grad()
def _project(conv, binarizer):
    latent = conv.parametrizations.weight.original
    if binarizer.centred:
        latent.sub_(latent.mean(dim=1, keepdim=True))
    latent.clamp_(-1.0, 1.0)
    binarizer.projected_version = latent._version


def _project_if_changed(conv, args):
    """Forward pre-hook: re-project the latent weight if it changed since the last projection."""
    binarizer = _binarizer(conv)
    if binarizer is not None and conv.parametrizations.weight.original._version != binarizer.projected_version:
        _project(conv, binarizer)


def project_pending_(model):
    """Apply any projection a forward would apply now (latent weights changed since their last projection)."""
    for _, _, conv, _ in binarized_layers(model):
        _project_if_changed(conv, ())


def project_latent_(model):
    """Mean-centre (over input channels) and clamp to [-1, 1] every binarized latent weight, now."""
    for _, _, conv, binarizer in binarized_layers(model):
        _project(conv, binarizer)


def resolve_range(num_convs, start, end):
    """Validate ``start..end`` against a model with ``num_convs`` convs; return the clipped indices."""
    if num_convs == 0:
        raise ValueError("this model has no nn.Conv2d layers to binarize")
    if start < 1 or start > end or start > num_convs:
        raise ValueError(
            f"invalid bin range {start}..{end}: this model has {num_convs} convs; "
            f"use 1 <= binStart <= binEnd with binStart <= {num_convs} (binEnd is clipped to {num_convs})"
        )
    return list(range(start, min(end, num_convs) + 1))


def binarize_weights(model, start, end, method="dab"):
    """Binarize the weights of convs ``start..end`` of ``model`` with ``method`` (dab, xnor or bnn).

    Returns the list of binarized conv indices. Raises ValueError for an invalid range or method.
    """
    layers = conv_layers(model)
    indices = resolve_range(len(layers), start, end)
    WeightBinarizer(method)  # validates the method name before anything is changed
    for index, name, conv in layers:
        if index not in indices:
            continue
        if _binarizer(conv) is not None:
            raise ValueError(f"conv {index} ({name}) is already binarized")
        binarizer = WeightBinarizer(method, centred=conv.weight.shape[1] > 1)
        binarizer.projected_version = -1
        parametrize.register_parametrization(conv, "weight", binarizer, unsafe=True)
        conv.register_forward_pre_hook(_project_if_changed)
    return indices


def layer_stats(model):
    """Per binarized conv, the statistics of its last solve: ``[{index, name, method, k_frac, alpha, beta}]``."""
    return [
        dict(index=index, name=name, method=b.method,
             k_frac=b.k_frac.item(), alpha=b.alpha.item(), beta=b.beta.item())
        for index, name, conv, b in binarized_layers(model)
    ]


def mark_projected_(model):
    """Record the current latent weights as already projected (e.g. just loaded from a checkpoint that
    was saved after a projecting forward), so the next forward does not project them a second time."""
    for _, _, conv, binarizer in binarized_layers(model):
        binarizer.projected_version = conv.parametrizations.weight.original._version
