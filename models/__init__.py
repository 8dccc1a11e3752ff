"""Model registry: every ``--model_def`` name of the original DAB code and of SD-BNN builds here.

    import models
    models.list_models()                                  # the 39 names, sorted
    model = models.build_model("sketchanetfbin", num_classes=250)
    info = models.model_info("sketchanetfbin")
    info.bin_range, info.label                            # (2, 7), "Sketch-A-Net fbin"
    models.conv_table(model, 225, 1)                       # what --binStart/--binEnd count

A family is one module of this package (sketchanet.py, resnet.py, ...) holding one definition of its
architecture, its layer tables as constants, a ``Family`` with its shared facts and one ``register``
call per variant. The package imports every module it holds (``blocks`` and ``__main__`` aside), so a
new family is its file alone. The registry keys are the original CLI names: there is no mapping layer.
"""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

import binarize

from .blocks import Family, conv_table, init_weights

__all__ = ["Family", "ModelInfo", "build_model", "check_bin_inputs", "check_input_size", "conv_table",
           "digits_recipe", "list_models", "model_info", "register", "unregister"]

NOT_FAMILIES = ("blocks", "__main__")  # modules of this package that register nothing


class Entry(NamedTuple):
    """One registered name: how to build it and the facts given at registration."""

    builder: Callable  # builder(num_classes=, in_channels=[, binary_inputs=]) -> nn.Module
    family: Family
    binarized: bool
    variant: str


MODELS = {}  # name -> Entry


def _binarized_by_name(name):
    """The original's naming: *wbin*, *fbin*, *hybrid* and bincifar* models train with binary weights."""
    return any(tag in name for tag in ("wbin", "fbin", "hybrid")) or name.startswith("bincifar")


def register(name, builder, family, *, binarized=None, variant=None):
    """Add ``name`` to the registry; ``builder(num_classes=, in_channels=[, binary_inputs=])`` returns the model.

    ``binarized``: whether its weights are binarized by default (None: the original's naming, see
    ``_binarized_by_name``). ``variant``: its name within the family as users know it ("fp", "wbin",
    "fbin", "hybrid", "1w1a", ...; None: the name without the family's name, "fp" if nothing is left).
    """
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    if not isinstance(family, Family):
        raise TypeError(f"family of {name!r} must be a models.Family, got {type(family).__name__}")
    if variant is None:
        variant = name.replace(family.name, "", 1).strip("_") or "fp"
    if not isinstance(variant, str) or variant.split() != [variant]:
        raise ValueError(f"variant of {name!r} must be one word, e.g. 'fbin', got {variant!r}")
    MODELS[name] = Entry(builder, family, _binarized_by_name(name) if binarized is None else bool(binarized),
                         variant)


def unregister(name):
    """Remove ``name`` from the registry (a model added for a while, e.g. by a test) and forget its cached facts."""
    _entry(name)
    del MODELS[name]
    model_info.cache_clear()
    _binarizable_inputs.cache_clear()


def list_models():
    """The registered names, sorted."""
    return sorted(MODELS)


def _entry(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return MODELS[name]


def build_model(name, num_classes, in_channels=None, init=True, *, bin_inputs=None):
    """Build ``name`` for ``num_classes`` classes and ``in_channels`` input channels (None: family default).

    init=True applies the original's init (``blocks.init_weights``), which the original applied by default,
    or the model's own ``init_parameters()`` where its family defines one.
    ``bin_inputs`` (conv indices, 1-based) replaces the variant's own choice of the convs whose input is
    binarized (``()``: every input real); ValueError for a conv that does not exist or cannot take one.
    """
    builder, family = _entry(name)[:2]
    in_channels = family.in_channels if in_channels is None else in_channels
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    options = {} if bin_inputs is None else {"binary_inputs": tuple(check_bin_inputs(name, bin_inputs))}
    model = builder(num_classes=int(num_classes), in_channels=int(in_channels), **options)
    if init and hasattr(model, "init_parameters"):  # a family with an init of its own (SD-BNN's models)
        model.init_parameters()
        return model
    return init_weights(model) if init else model


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model (conv indices are 1-based, ``model.modules()`` order)."""

    name: str
    family: str
    default_inpsize: int
    min_inpsize: int
    max_inpsize: int
    default_in_channels: int
    bin_range: tuple
    bin_layers: tuple  # the convs whose weights are binarized by default
    binarized: bool    # whether the weights are binarized by default (--binaryWeight)
    num_convs: int
    binary_inputs: tuple
    activation: str    # the activation binarizer of its binarized inputs ("sign" where it has none)
    variant: str       # the variant within the family ("fp", "wbin", "fbin", "hybrid", "1w1a", ...)
    family_label: str  # the family's display name ("Sketch-A-Net", "ResNet-20", ...)

    @property
    def inputs_binarized(self):
        """Whether some conv has a binarized input by default."""
        return bool(self.binary_inputs)

    @property
    def label(self):
        """The display label, family and variant: "Sketch-A-Net fbin", "ResNet-20 1w1a"."""
        return f"{self.family_label} {self.variant}"


def _meta_build(name, **options):
    builder, family = _entry(name)[:2]
    with torch.device("meta"):
        return builder(num_classes=2, in_channels=family.in_channels, **options)


@lru_cache(maxsize=None)
def model_info(name):
    """The ModelInfo of ``name`` (the conv count comes from a build on the "meta" device: no memory)."""
    entry = _entry(name)
    family = entry.family
    model = _meta_build(name)
    num_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    start, end = family.bin_range
    bin_layers = tuple(family.bin_layers) if family.bin_layers else tuple(range(start, min(end, num_convs) + 1))
    return ModelInfo(name=name, family=family.name, default_inpsize=family.default_inpsize,
                     min_inpsize=family.input_sizes[0], max_inpsize=family.input_sizes[1],
                     default_in_channels=family.in_channels, bin_range=tuple(family.bin_range),
                     bin_layers=bin_layers, binarized=entry.binarized, num_convs=num_convs,
                     binary_inputs=tuple(model.binary_inputs), activation=_activation_name(model),
                     variant=entry.variant, family_label=family.label)


def _activation_name(model):
    slots = binarize.input_binarizers(model)
    return slots[0][4].name if slots else "sign"


@lru_cache(maxsize=None)
def _binarizable_inputs(name):
    """The convs of ``name`` whose input can be binarized (built once on the meta device)."""
    model = _meta_build(name, binary_inputs=tuple(range(1, model_info(name).num_convs + 1)))
    return tuple(index for index, *_ in binarize.input_binarizers(model))


def check_bin_inputs(name, indices):
    """The sorted conv indices of ``indices`` if ``name`` can binarize all their inputs; ValueError otherwise."""
    indices = binarize.resolve_layers(model_info(name).num_convs, indices, "binarized inputs of convs")
    refused = sorted(set(indices) - set(_binarizable_inputs(name)))
    if refused:
        raise ValueError(f"{name} cannot binarize the input of convs {refused} (first convs and classifiers keep "
                         f"real inputs); choose from {binarize.format_indices(_binarizable_inputs(name))}")
    return indices


def check_input_size(name, size):
    """Raise ValueError unless ``name`` accepts ``size`` x ``size`` inputs."""
    lo, hi = _entry(name).family.input_sizes
    if not lo <= size <= hi:
        raise ValueError(f"{name} accepts input sizes {lo}..{hi}, got {size}")


def _import_families():
    """Import every family module of this package; each registers its names as it is imported."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in NOT_FAMILIES:
            importlib.import_module(f"{__name__}.{module.name}")


_import_families()

from .sdbnn import digits_recipe  # noqa: E402  (after the families are imported)
