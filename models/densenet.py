"""DenseNet-BC for CIFAR as the original DAB code's models/densenet.py builds it, ``DenseNet3(depth=32)``:
densenet, full precision. Growth 12, bottleneck layers, compression 0.5, dropout 0.2
after every conv; 4 bottleneck layers per dense block, 3 blocks, 27 convs.

Every conv is pre-activation: BN -> ReLU -> conv -> Dropout; a conv given a binarized input
(--binInputs) is BN -> sign -> conv -> Dropout. Stem conv 1 (3x3, 3 -> 24); block 1 is
convs 2-9 (1x1, 3x3 pairs), transition 1 conv 10, block 2 convs 11-18, transition 2 conv 19,
block 3 convs 20-27; head BN -> ReLU -> AvgPool(8) -> Linear.

Fix of the original (see README): its registry built ``DenseNet3(32, 10)`` whatever nClasses said;
here the Linear has ``num_classes`` outputs.
"""

import itertools
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from binarize import make_activation

from . import register
from .blocks import Classifier, Family, size_range

GROWTH = 12
LAYERS_PER_BLOCK = 4  # int((depth 32 - 4) / 3 / 2), bottleneck
NUM_BLOCKS = 3
BOTTLENECK_WIDTH = 4 * GROWTH
REDUCTION = 0.5
DROPOUT = 0.2
POOL_SIZE = 8  # avg_pool2d(8) before the Linear
OPS = [(3, 1, 1)] + [(2, 2, 0)] * (NUM_BLOCKS - 1) + [(POOL_SIZE, POOL_SIZE, 0)]

FAMILY = Family("densenet", default_inpsize=32, input_sizes=size_range(OPS), in_channels=3, bin_range=(2, 7),
                label="DenseNet-BC-32")


def preact_conv(cin, cout, kernel, padding, binary_input=False):
    """BN -> ReLU (sign for a binarized input) -> conv (no bias) -> Dropout(DROPOUT)."""
    act = make_activation("sign", cin) if binary_input else nn.ReLU(inplace=True)
    return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(cin), **{"sign" if binary_input else "relu": act},
                                     conv=nn.Conv2d(cin, cout, kernel, 1, padding, bias=False),
                                     drop=nn.Dropout(DROPOUT)))


class Bottleneck(nn.Module):
    """1x1 conv to 4*growth, 3x3 conv to growth, output concatenated to the input."""

    def __init__(self, cin, binary_inputs, index):
        super().__init__()
        self.conv1 = preact_conv(cin, BOTTLENECK_WIDTH, 1, 0, next(index) in binary_inputs)
        self.conv2 = preact_conv(BOTTLENECK_WIDTH, GROWTH, 3, 1, next(index) in binary_inputs)

    def forward(self, x):
        return torch.cat([x, self.conv2(self.conv1(x))], 1)


class DenseNet(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=()):
        super().__init__(family, binary_inputs)
        index = itertools.count(2)
        cin = 2 * GROWTH
        layers = OrderedDict(conv1=nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False))
        for b in range(1, NUM_BLOCKS + 1):
            layers[f"block{b}"] = nn.Sequential(*(Bottleneck(cin + i * GROWTH, self.binary_inputs, index)
                                                  for i in range(LAYERS_PER_BLOCK)))
            cin += LAYERS_PER_BLOCK * GROWTH
            if b < NUM_BLOCKS:
                cout = int(cin * REDUCTION)
                layers[f"trans{b}"] = nn.Sequential(
                    preact_conv(cin, cout, 1, 0, next(index) in self.binary_inputs), nn.AvgPool2d(2))
                cin = cout
        layers.update(bn=nn.BatchNorm2d(cin), relu=nn.ReLU(inplace=True), avgpool=nn.AvgPool2d(POOL_SIZE))
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(cin, num_classes)

    def logits(self, x):
        return self.fc(self.features(x).flatten(1))


register("densenet", partial(DenseNet, family=FAMILY), FAMILY, variant="fp")
