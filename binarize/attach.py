"""Attach binarizers to a model: weight binarizers by conv index (or to any Conv2d/Linear), activation
binarizers in front of chosen convs (of a registry model, or inserted into any model), and the per-epoch
settings of the backward rules.

``--binStart s --binEnd t`` mean: number every ``nn.Conv2d`` in ``model.modules()`` order from 1 and
binarize the weights of convs s..t (inclusive; t is clipped to the number of convs). Each selected layer
keeps a real-valued latent weight (``module.parametrizations.weight.original``) that the optimizer
updates, and every forward, in training and in evaluation, uses its binarized version. The binarizer
object (weights.py) is that parametrization: one per layer, so every layer can use its own method,
backward rule and shift. Linear layers take the same parametrization through :func:`binarize_layer`.

The latent weight is projected (centre over input channels, clamp to [-1, 1], as the original loop did
before every forward) when the binarizer is attached and after every optimizer step, so the training
loop stays a plain PyTorch loop and a model at rest always holds projected latents.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from .activations import ActivationBinarizer, activation_class, make_activation
from .surrogates import EDE
from .weights import _LATENTS, WeightBinarizer, make_weight_binarizer

__all__ = ["conv_layers", "parse_indices", "format_indices", "resolve_range", "resolve_layers", "weight_binarizer",
           "binarized_layers", "binarize_layer", "binarize_weights", "project_latent_", "layer_stats", "filter_stats",
           "input_binarizers", "binarize_inputs", "set_input_binarizer", "insert_input_binarizer", "INPUT_SLOT",
           "set_ede"]

BINARIZABLE = (nn.Conv2d, nn.Linear)


def conv_layers(model):
    """``[(index, name, conv)]`` for every nn.Conv2d in ``model.modules()`` order, index from 1."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return [(i, name, conv) for i, (name, conv) in enumerate(convs, start=1)]


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


def parse_indices(text):
    """``"2-5,7"`` -> [2, 3, 4, 5, 7]; ``"none"`` or ``""`` -> []; ValueError otherwise."""
    text = text.strip().lower()
    if text in ("none", ""):
        return []
    out = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first > last:
            raise ValueError(f"empty range {part.strip()!r}")
        out.extend(range(first, last + 1))
    return sorted(set(out))


def format_indices(indices):
    """[2, 3, 4, 7] -> ``"2-4,7"`` (the form :func:`parse_indices` reads); [] -> ``"none"``."""
    indices, runs, first = sorted(indices), [], None
    for i, value in enumerate(indices):
        first = value if first is None else first
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            runs.append(f"{first}-{value}" if value > first else str(value))
            first = None
    return ",".join(runs) or "none"


def resolve_layers(num_convs, indices, what="binarized convs"):
    """Validate a set of conv indices against a model with ``num_convs`` convs; return them sorted."""
    indices = sorted({int(i) for i in indices})
    bad = [i for i in indices if not 1 <= i <= num_convs]
    if bad:
        raise ValueError(f"{what} {bad} do not exist: this model has convs 1..{num_convs}")
    return indices


def weight_binarizer(module):
    """The WeightBinarizer parametrizing ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, WeightBinarizer):
            return p
    return None


def binarized_layers(model):
    """``[(index, name, module, binarizer)]`` for every layer with binarized weights, in ``model.modules()``
    order; ``index`` is the conv number (None for a Linear layer)."""
    index_of = {id(conv): i for i, _, conv in conv_layers(model)}
    out = []
    for name, module in model.named_modules():
        if isinstance(module, BINARIZABLE):
            binarizer = weight_binarizer(module)
            if binarizer is not None:
                out.append((index_of.get(id(module)), name, module, binarizer))
    return out


def binarize_layer(module, method="dab", *, backward=None, shift=None):
    """Give ``module`` (a Conv2d or Linear) a binarized weight; returns its binarizer.

    ``method`` is a registered name (``binarize.WEIGHT_BINARIZERS``) or a WeightBinarizer subclass;
    ``backward`` a surrogate (``ste``, ``ede``); ``shift`` an optional learnable shift (``wsd``). The latent
    weight is projected at once (see weights.py).
    """
    if not isinstance(module, BINARIZABLE):
        raise ValueError(f"only nn.Conv2d and nn.Linear weights can be binarized, not {type(module).__name__}")
    if weight_binarizer(module) is not None:
        raise ValueError(f"{type(module).__name__} is already binarized")
    binarizer = make_weight_binarizer(method, module.weight.shape, backward=backward, shift=shift)
    binarizer.to(device=module.weight.device, dtype=module.weight.dtype)  # its own parameters (a shift) too
    parametrize.register_parametrization(module, "weight", binarizer, unsafe=True)
    latent = module.parametrizations.weight.original
    _LATENTS[latent] = binarizer
    binarizer.project_(latent)
    return binarizer


def binarize_weights(model, start=None, end=None, method="dab", *, layers=None, backward=None, shift=None):
    """Binarize the weights of convs ``start..end`` of ``model`` (1-based, inclusive, end clipped), or of the
    convs in ``layers``: an iterable of indices, or a dict ``{index: method}`` for a method per conv.

    Returns the sorted list of binarized conv indices. Raises ValueError, changing nothing, for an
    invalid range, index or method, or a conv that is already binarized.
    """
    convs = conv_layers(model)
    if layers is None:
        if start is None or end is None:
            raise ValueError("give start and end, or layers")
        chosen = {i: method for i in resolve_range(len(convs), start, end)}
    else:
        if not convs:
            raise ValueError("this model has no nn.Conv2d layers to binarize")
        per_layer = layers if isinstance(layers, dict) else {i: method for i in layers}
        chosen = {i: per_layer[i] for i in resolve_layers(len(convs), per_layer)}
    for i, spec in chosen.items():  # validate everything before changing anything
        make_weight_binarizer(spec, convs[i - 1][2].weight.shape, backward=backward, shift=shift)
        if weight_binarizer(convs[i - 1][2]) is not None:
            raise ValueError(f"conv {i} ({convs[i - 1][1]}) is already binarized")
    for i, spec in chosen.items():
        binarize_layer(convs[i - 1][2], spec, backward=backward, shift=shift)
    return sorted(chosen)


def project_latent_(model):
    """Project every binarized latent weight now (centre over input channels, clamp to [-1, 1])."""
    for _, _, module, binarizer in binarized_layers(model):
        binarizer.project_(module.parametrizations.weight.original)


def layer_stats(model):
    """Per binarized layer, the means of its last solve: ``[{index, name, method, k_frac, alpha, beta}]``
    (zeros before the first forward)."""
    out = []
    for index, name, _, b in binarized_layers(model):
        last = b.last
        k_frac = (last.k.float().mean() / last.n).item() if last else 0.0
        alpha = last.alpha.float().mean().item() if last else 0.0
        beta = last.beta.float().mean().item() if last else 0.0
        out.append(dict(index=index, name=name, method=b.name, k_frac=k_frac, alpha=alpha, beta=beta))
    return out


@torch.no_grad()
def filter_stats(model):
    """Per binarized layer, the per-filter statistics of its last solve (no new solve):
    ``[{index, name, method, n, k, alpha, beta}]`` with ``k`` (int64) and ``alpha``, ``beta`` (float32) as
    CPU tensors of one value per filter; layers not yet run are left out."""
    out = []
    for index, name, _, b in binarized_layers(model):
        if b.last is None:
            continue
        out.append(dict(index=index, name=name, method=b.name, n=b.last.n, k=b.last.k.cpu(),
                        alpha=b.last.alpha.float().cpu(), beta=b.last.beta.float().cpu()))
    return out


# The child name of an activation binarizer inserted in front of a conv that had none (binarize_inputs).
INPUT_SLOT = "input_binarizer"


def input_binarizers(model):
    """``[(index, conv_name, parent, child_name, binarizer)]`` for every conv whose input is binarized: an
    ActivationBinarizer followed (dropouts aside) by the conv among the children of one module, or one that
    :func:`binarize_inputs` inserted into the conv itself (``parent`` is then the conv, ``child_name``
    ``INPUT_SLOT``)."""
    index_of = {id(conv): i for i, _, conv in conv_layers(model)}
    found = []
    for parent_name, parent in model.named_modules():
        inserted = getattr(parent, INPUT_SLOT, None) if isinstance(parent, nn.Conv2d) else None
        if isinstance(inserted, ActivationBinarizer):
            found.append((index_of[id(parent)], parent_name, parent, INPUT_SLOT, inserted))
        pending = None
        for child_name, child in parent.named_children():
            if isinstance(child, ActivationBinarizer):
                pending = (child_name, child)
            elif isinstance(child, nn.Conv2d) and pending is not None:
                conv_name = f"{parent_name}.{child_name}" if parent_name else child_name
                found.append((index_of[id(child)], conv_name, parent, *pending))
                pending = None
            elif not isinstance(child, (nn.Dropout, nn.Dropout2d)):
                pending = None
    return sorted(found, key=lambda row: row[0])


def _activation_for(model, method, channels, like, backward, kwargs):
    """A new activation binarizer for ``channels`` inputs, on the device of ``like`` (a module or None)."""
    options = dict(getattr(model, "activation_kwargs", {}), **kwargs)
    new = make_activation(method, channels, backward=backward, **options)
    param = next(like.parameters(), None) if like is not None else None
    if param is not None:
        new.to(param.device)
    return new


def set_input_binarizer(model, index, method, *, backward=None, **kwargs):
    """Replace the activation binarizer in front of conv ``index`` by ``method`` (name or class); returns it.

    ``kwargs`` (e.g. ASD's ``reduction``) default to the model's ``activation_kwargs`` attribute. A conv
    without one is refused; :func:`binarize_inputs` with its index inserts one.
    """
    slots = {row[0]: row for row in input_binarizers(model)}
    if index not in slots:
        raise ValueError(f"conv {index} has no binarized input in this model (convs with one: "
                         f"{sorted(slots) or 'none'}); binarize_inputs(model, method, [{index}]) inserts one")
    _, _, parent, child_name, old = slots[index]
    setattr(parent, child_name, _activation_for(model, method, old.channels, model, backward, kwargs))
    return getattr(parent, child_name)


def _binarize_conv_input(conv, inputs):
    """Forward pre-hook of a conv given an inserted input binarizer: its input goes through it first. A
    module-level function reading the conv's own child, so copies and pickles of the model stay whole."""
    return (getattr(conv, INPUT_SLOT)(inputs[0]), *inputs[1:])


def insert_input_binarizer(conv, binarizer):
    """Binarize the input of ``conv`` (an nn.Conv2d without one) through ``binarizer``: it becomes the conv's
    child ``INPUT_SLOT`` (trained and saved with it: ``<conv>.input_binarizer.*`` in the state dict; the
    conv's own parameter names do not change) and runs on the conv's input before every forward."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"an input binarizer goes in front of an nn.Conv2d, not a {type(conv).__name__}")
    if isinstance(getattr(conv, INPUT_SLOT, None), ActivationBinarizer):
        raise ValueError("this conv already has an inserted input binarizer; set_input_binarizer replaces it")
    conv.add_module(INPUT_SLOT, binarizer)
    conv.register_forward_pre_hook(_binarize_conv_input)
    return binarizer


def binarize_inputs(model, method, indices=None, *, backward=None, **kwargs):
    """Binarize the inputs of convs ``indices`` (1-based, ``conv_layers`` order) of any model with ``method``:
    a conv that has an activation binarizer gets it replaced, one without gets one inserted in front of it
    (:func:`insert_input_binarizer`). ``indices`` None: every conv whose input is binarized already.

    Returns the sorted conv indices whose input binarizer was set (``[]`` when nothing changed). Raises
    ValueError, changing nothing, for an unknown method or a conv that does not exist."""
    convs = conv_layers(model)
    slots = {row[0] for row in input_binarizers(model)}
    chosen = sorted(slots) if indices is None else resolve_layers(len(convs), indices, "convs")
    activation_class(method)  # validate before changing anything
    for index in chosen:
        if index in slots:
            set_input_binarizer(model, index, method, backward=backward, **kwargs)
        else:
            conv = convs[index - 1][2]
            insert_input_binarizer(conv, _activation_for(model, method, conv.in_channels, conv, backward, kwargs))
    return chosen


def set_ede(model, t, k):
    """Set EDE's ``t`` and ``k`` on every binarizer of ``model`` that uses it; returns how many."""
    count = 0
    for module in model.modules():
        surrogate = getattr(module, "surrogate", None)
        if isinstance(module, (WeightBinarizer, ActivationBinarizer)) and isinstance(surrogate, EDE):
            surrogate.t, surrogate.k = float(t), float(k)
            count += 1
    return count
