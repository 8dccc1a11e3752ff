"""ResNet-18 (He et al., 2016; torchvision layout) for 1-channel sketches, and its DAB variants:
resnet18, resnetwbin18, resnetfbin18, resnethybrid18, resnethybridv218, resnethybridv318, as the
original DAB code's models/resnet*.py define them.

One BasicBlock calls ``conv_unit`` for conv1, conv2 and the downsample shortcut in that order, so
the 21 convs are numbered as in every original ResNet file: stem 1, blocks 2-20 (downsamples 8, 13,
18), classifier 21 (a 1x1 conv after AvgPool(7), as in the original, so --binEnd 100 reaches it).
A conv whose index is in ``binary_inputs`` is BN(in) -> sign -> conv, any other conv -> BN(out).

Fixes of the original (see README):
- ``resnet18`` crashed (models/resnet.py had no ``resnet18(nClasses)``, only kuangliu's CIFAR
  ``ResNet18()``). Here it is the full-precision member of this family: the resnetwbin18 layout with
  a bias on the classifier conv, as torchvision's ResNet-18 has on its fc; same 21 convs and numbering.
- The hand-unrolled resnethybrid* files fed the second block of layer1 the stem output instead of
  block 1's output; here every block is fed by its predecessor.
"""

import itertools
from functools import partial

import torch.nn.functional as F
from torch import nn

from . import register
from .blocks import Classifier, Family, add_stages, conv_unit, size_range

STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]  # (planes, stride of the first block); two blocks each
BLOCKS_PER_STAGE = 2
POOL_SIZE = 7  # AvgPool(7) before the classifier


def _spatial_ops():
    ops = [(7, 2, 3), (3, 2, 1)]  # stem conv, max-pool
    for _, stride in STAGES:
        ops += [(3, stride, 1)] + [(3, 1, 1)] * (2 * BLOCKS_PER_STAGE - 1)  # the 1x1/stride shortcut agrees
    return ops + [(POOL_SIZE, POOL_SIZE, 0)]


FAMILY = Family("resnet", default_inpsize=224, input_sizes=size_range(_spatial_ops()), in_channels=1,
                bin_range=(2, 100), label="ResNet-18")

VARIANTS = {  # suffix -> convs with sign-binarized input (the rest are conv -> BN), bias on the classifier
    "": dict(binary_inputs=(), fc_bias=True),
    "wbin": dict(binary_inputs=()),
    "fbin": dict(binary_inputs=range(2, 21)),
    "hybrid": dict(binary_inputs=range(2, 19)),
    "hybridv2": dict(binary_inputs=range(2, 14)),
    "hybridv3": dict(binary_inputs=(2, 4, 5, 6, 7, 8, 11, 12, 13)),
}


class BasicBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the identity or a 1x1 downsample, then ReLU.

    ``index`` yields the global conv numbers, so each conv knows whether its input is binarized.
    """

    def __init__(self, cin, planes, stride, binary_inputs, index):
        super().__init__()
        self.conv1 = conv_unit(cin, planes, 3, stride, 1, binary_input=next(index) in binary_inputs)
        self.conv2 = conv_unit(planes, planes, 3, 1, 1, binary_input=next(index) in binary_inputs, relu=False)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = conv_unit(cin, planes, 1, stride, 0, binary_input=next(index) in binary_inputs,
                                        relu=False)

    def forward(self, x):
        out = self.conv2(self.conv1(x))  # main path first, then the shortcut: the registration order
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(Classifier):
    """Stem (7x7/2 conv, 3x3/2 max-pool), four stages of BasicBlocks, AvgPool(7), 1x1 conv classifier."""

    def __init__(self, num_classes, in_channels, *, family, binary_inputs=(), fc_bias=False):
        super().__init__(family, binary_inputs)
        index = itertools.count(2)
        self.conv1 = conv_unit(in_channels, 64, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = add_stages(self, STAGES, BLOCKS_PER_STAGE, BasicBlock, 64, index)
        self.avgpool = nn.AvgPool2d(POOL_SIZE)
        self.fc = nn.Conv2d(cin, num_classes, 1, bias=fc_bias)

    def logits(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x)).flatten(1)


for suffix, cfg in VARIANTS.items():
    register(f"resnet{suffix}18", partial(ResNet18, family=FAMILY, **cfg), FAMILY, variant=suffix or "fp")
