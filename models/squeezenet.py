"""SqueezeNet 1.0 (Iandola et al., 2016) with BN after every conv, for 1-channel sketches, and its DAB
variants: squeezenet, squeezenetwbin, squeezenetfbin, squeezenethybrid, squeezenethybridv2,
squeezenethybridv3, as the original DAB code's models/squeezenet*.py define them.

26 convs: stem 1, then squeeze, expand1x1, expand3x3 of Fire2..Fire9 (2-25), classifier 26.
A full-precision conv is conv -> BN -> ReLU, a binarized-input conv BN(in) -> sign -> conv -> ReLU.
The classifier is Dropout(0.2) -> 1x1 conv (bias) -> ReLU -> AvgPool(13); the ReLU on the class
maps is SqueezeNet 1.0's and the original's, kept.
"""

import itertools
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from . import register
from .blocks import Classifier, Family, conv_unit, size_range

POOL = "pool"  # MaxPool(3, stride 2, ceil_mode) in LAYOUT
LAYOUT = [(16, 64, 64), (16, 64, 64), (32, 128, 128), POOL, (32, 128, 128), (48, 192, 192),
          (48, 192, 192), (64, 256, 256), POOL, (64, 256, 256)]  # Fire2..Fire9: (squeeze, expand1x1, expand3x3)
POOL_OPS = (3, 2, 0, True)
POOL_SIZE = 13  # AvgPool(13), stride 13


def _spatial_ops():
    ops = [(7, 2, 0), POOL_OPS]
    for cfg in LAYOUT:
        ops += [POOL_OPS] if cfg == POOL else [(1, 1, 0), (3, 1, 1)]
    return ops + [(1, 1, 0), (POOL_SIZE, POOL_SIZE, 0)]


FAMILY = Family("squeezenet", default_inpsize=224, input_sizes=size_range(_spatial_ops()), in_channels=1,
                bin_range=(2, 100), label="SqueezeNet")

EXPANDS_3_TO_8 = (6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22)  # expand convs of Fire3..Fire8
VARIANTS = {  # suffix -> convs with sign-binarized input, convs without bias (1 and 26 always have one)
    "": dict(binary_inputs=(), no_bias=()),
    "wbin": dict(binary_inputs=(), no_bias=range(2, 26)),
    "fbin": dict(binary_inputs=range(2, 26), no_bias=range(2, 26)),
    "hybrid": dict(binary_inputs=range(5, 26), no_bias=range(5, 26)),
    "hybridv2": dict(binary_inputs=range(5, 23), no_bias=range(5, 26)),
    "hybridv3": dict(binary_inputs=EXPANDS_3_TO_8, no_bias=range(5, 26)),
}


class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expands of the squeezed map, concatenated."""

    def __init__(self, cin, squeeze, e1, e3, *, unit, index):
        super().__init__()
        self.out_channels = e1 + e3
        self.squeeze = unit(cin, squeeze, 1, 0, next(index))
        self.expand1x1 = unit(squeeze, e1, 1, 0, next(index))
        self.expand3x3 = unit(squeeze, e3, 3, 1, next(index))

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=(), no_bias=()):
        super().__init__(family, binary_inputs)
        no_bias = set(no_bias)

        def unit(cin, cout, kernel, padding, i):
            return conv_unit(cin, cout, kernel, 1, padding, bias=i not in no_bias,
                             binary_input=i in self.binary_inputs)

        index = itertools.count(2)
        layers = OrderedDict(conv1=conv_unit(in_channels, 96, 7, 2, 0, bias=True),
                             pool1=nn.MaxPool2d(*POOL_OPS[:2], ceil_mode=True))
        cin, fire_no = 96, 2
        for cfg in LAYOUT:
            if cfg == POOL:
                layers[f"pool{fire_no - 1}"] = nn.MaxPool2d(*POOL_OPS[:2], ceil_mode=True)
                continue
            layers[f"fire{fire_no}"] = Fire(cin, *cfg, unit=unit, index=index)
            cin, fire_no = layers[f"fire{fire_no}"].out_channels, fire_no + 1
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), conv_unit(cin, num_classes, 1, bias=True, norm="none"),
                                        nn.AvgPool2d(POOL_SIZE))

    def logits(self, x):
        return self.classifier(self.features(x)).flatten(1)


for suffix, cfg in VARIANTS.items():
    register(f"squeezenet{suffix}", partial(SqueezeNet, family=FAMILY, **cfg), FAMILY, variant=suffix or "fp")
