"""Model registry: every ``--model_def`` name of the original DAB code builds here.

    import models
    models.list_models()                                  # the 31 original names, sorted
    model = models.build_model("sketchanetfbin", num_classes=250)
    models.model_info("sketchanetfbin").bin_range          # (2, 7), as in the original scripts
    models.conv_table(model, 225, 1)                       # what --binStart/--binEnd count

Each family file (sketchanet.py, resnet.py, ...) holds one definition of its architecture, its layer
tables as constants and a ``VARIANTS`` dict (CLI suffix -> settings); importing it registers its
names. The registry keys are the original CLI names, so there is no mapping layer.
"""

from dataclasses import dataclass
from functools import lru_cache

import torch

from .blocks import conv_table, init_weights

__all__ = ["ModelInfo", "build_model", "check_input_size", "conv_table", "list_models", "model_info",
           "register"]

MODELS = {}  # name -> (builder(num_classes, in_channels) -> nn.Module, Family)


def register(name, builder, family):
    """Add ``name`` to the registry; ``builder(num_classes=, in_channels=)`` returns the model."""
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    MODELS[name] = (builder, family)


def list_models():
    """The registered names, sorted."""
    return sorted(MODELS)


def _entry(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return MODELS[name]


def build_model(name, num_classes, in_channels=None, init=True):
    """Build ``name`` for ``num_classes`` classes and ``in_channels`` input channels (None: family default).

    init=True applies the original's init (``blocks.init_weights``), which the original applied by default.
    """
    builder, family = _entry(name)
    in_channels = family.in_channels if in_channels is None else in_channels
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    model = builder(num_classes=int(num_classes), in_channels=int(in_channels))
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
    num_convs: int
    binary_inputs: tuple


@lru_cache(maxsize=None)
def model_info(name):
    """The ModelInfo of ``name`` (the conv count comes from a build on the "meta" device: no memory)."""
    builder, family = _entry(name)
    with torch.device("meta"):
        model = builder(num_classes=2, in_channels=family.in_channels)
    num_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return ModelInfo(name=name, family=family.name, default_inpsize=family.default_inpsize,
                     min_inpsize=family.input_sizes[0], max_inpsize=family.input_sizes[1],
                     default_in_channels=family.in_channels, bin_range=tuple(family.bin_range),
                     num_convs=num_convs, binary_inputs=tuple(model.binary_inputs))


def check_input_size(name, size):
    """Raise ValueError unless ``name`` accepts ``size`` x ``size`` inputs."""
    _, family = _entry(name)
    lo, hi = family.input_sizes
    if not lo <= size <= hi:
        raise ValueError(f"{name} accepts input sizes {lo}..{hi}, got {size}")


from . import (alexnet, bincifar, densenet, googlenet, mobilenet, nin, resnet, sketchanet,  # noqa: E402,F401
               squeezenet, vgg)
