"""GoogLeNet (Szegedy et al., 2015) with BN, as the original builds it for
1-channel sketches, and its DAB variants: googlenet, googlenetwbin, googlenetfbin, as the original
DAB code's models/googlenet*.py define them.

57 convs: stem 1-3, then six per Inception in the order b1, b2 reduce, b2 3x3, b3 reduce, b3 5x5,
b4 projection. Inception a4 keeps the original's 204-channel 3x3 branch (508 outputs, not 512).
A full-precision conv is conv -> BN -> ReLU, except stem convs 2 and 3 (conv -> ReLU, no BN);
a binarized-input conv is BN(in) -> sign -> conv -> ReLU. The classifier is a Linear layer, which
--binStart/--binEnd never count.
"""

import itertools
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from . import register
from .blocks import Classifier, Family, conv_unit, size_range

# (name, (n1x1, n3x3 reduce, n3x3, n5x5 reduce, n5x5, pool projection)) or (name, max-pool (k, s, p))
LAYOUT = [
    ("a3", (64, 96, 128, 16, 32, 32)),
    ("b3", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", (3, 2, 0)),
    ("a4", (192, 96, 204, 16, 48, 64)),
    ("b4", (160, 112, 224, 24, 64, 64)),
    ("c4", (128, 128, 256, 24, 64, 64)),
    ("d4", (112, 144, 288, 32, 64, 64)),
    ("e4", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", (3, 2, 1)),
    ("a5", (256, 160, 320, 48, 128, 128)),
    ("b5", (384, 192, 384, 48, 128, 128)),
]
STEM_OPS = [(7, 2, 3), (3, 2, 1), (1, 1, 0), (3, 1, 1), (3, 2, 1)]  # conv1, pool, conv2, conv3, pool
POOL_SIZE = 7  # AvgPool(7, stride 1): the Linear needs a 1x1 map


def _spatial_ops():
    ops = list(STEM_OPS)
    for _, cfg in LAYOUT:
        ops += [cfg] if len(cfg) == 3 else [(3, 1, 1)]  # Inception branches keep the size
    return ops + [(POOL_SIZE, 1, 0)]


FAMILY = Family("googlenet", default_inpsize=224, input_sizes=size_range(_spatial_ops()), in_channels=1,
                bin_range=(2, 100), label="GoogLeNet")

VARIANTS = {  # suffix -> convs with sign-binarized input, bias on convs 2-57, dropout before the Linear
    "": dict(binary_inputs=(), conv_bias=True, dropout=0.0),
    "wbin": dict(binary_inputs=(), conv_bias=False, dropout=0.0),
    "fbin": dict(binary_inputs=range(2, 58), conv_bias=False, dropout=0.4),
}


class Inception(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | max-pool -> 1x1."""

    def __init__(self, cin, n1, n3r, n3, n5r, n5, pool_proj, *, unit, index):
        super().__init__()
        self.out_channels = n1 + n3 + n5 + pool_proj
        self.b1 = unit(cin, n1, 1, 0, next(index))
        self.b2 = nn.Sequential(unit(cin, n3r, 1, 0, next(index)), unit(n3r, n3, 3, 1, next(index)))
        self.b3 = nn.Sequential(unit(cin, n5r, 1, 0, next(index)), unit(n5r, n5, 5, 2, next(index)))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), unit(cin, pool_proj, 1, 0, next(index)))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=(), conv_bias=True, dropout=0.0):
        super().__init__(family, binary_inputs)

        def unit(cin, cout, kernel, padding, i, norm="post"):
            return conv_unit(cin, cout, kernel, 1, padding, bias=conv_bias, norm=norm,
                             binary_input=i in self.binary_inputs)

        index = itertools.count(2)
        self.pre_layers = nn.Sequential(OrderedDict(
            conv1=conv_unit(in_channels, 64, 7, 2, 3, bias=True),
            pool1=nn.MaxPool2d(3, 2, 1),
            conv2=unit(64, 64, 1, 0, next(index), norm="none"),
            conv3=unit(64, 192, 3, 1, next(index), norm="none"),
            pool3=nn.MaxPool2d(3, 2, 1),
        ))
        cin = 192
        for name, cfg in LAYOUT:
            if len(cfg) == 3:
                setattr(self, name, nn.MaxPool2d(*cfg))
            else:
                setattr(self, name, Inception(cin, *cfg, unit=unit, index=index))
                cin = getattr(self, name).out_channels
        self.avgpool = nn.AvgPool2d(POOL_SIZE, 1)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(cin, num_classes)

    def logits(self, x):
        x = self.pre_layers(x)
        for name, _ in LAYOUT:
            x = getattr(self, name)(x)
        return self.linear(self.drop(self.avgpool(x)).flatten(1))


for suffix, cfg in VARIANTS.items():
    register(f"googlenet{suffix}", partial(GoogLeNet, family=FAMILY, **cfg), FAMILY, variant=suffix or "fp")
