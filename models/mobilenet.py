"""MobileNet v1 (Howard et al., 2017) for 1-channel sketches, as the original DAB code's models/mobilenet.py
builds it: mobilenet, full precision. No binarized variant exists in the original.

27 convs: stem 1, then a depthwise 3x3 (2j) and a pointwise 1x1 (2j+1) per block j = 1..13, each
conv -> BN -> ReLU; AvgPool(7) -> Linear classifier (never counted by --binStart/--binEnd).
Default bin range 2..27 (all but the stem; the original has none). Caveat: depthwise filters have
one input channel, so the original's mean-centring would zero them; binarize/ skips the centring
for such filters.
"""

from collections import OrderedDict
from functools import partial

from torch import nn

from . import register
from .blocks import Classifier, Family, conv_unit, size_range

BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
          (512, 1), (512, 1), (1024, 2), (1024, 1)]  # (pointwise out channels, depthwise stride)
POOL_SIZE = 7  # AvgPool(7), stride 7
OPS = [(3, 2, 1)] + [(3, stride, 1) for _, stride in BLOCKS] + [(POOL_SIZE, POOL_SIZE, 0)]

FAMILY = Family("mobilenet", default_inpsize=224, input_sizes=size_range(OPS), in_channels=1,
                bin_range=(2, 2 * len(BLOCKS) + 1), label="MobileNet")


class MobileNet(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=()):
        super().__init__(family, binary_inputs)
        layers = OrderedDict(conv1=conv_unit(in_channels, 32, 3, 2, 1))
        cin = 32
        for j, (cout, stride) in enumerate(BLOCKS, start=1):
            # convs 2j and 2j + 1; a binarized input is BN(in) -> sign -> conv (--binInputs)
            layers[f"dw{j}"] = conv_unit(cin, cin, 3, stride, 1, groups=cin, binary_input=2 * j in self.binary_inputs)
            layers[f"pw{j}"] = conv_unit(cin, cout, 1, binary_input=2 * j + 1 in self.binary_inputs)
            cin = cout
        layers["avgpool"] = nn.AvgPool2d(POOL_SIZE)
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(cin, num_classes)

    def logits(self, x):
        return self.fc(self.features(x).flatten(1))


register("mobilenet", partial(MobileNet, family=FAMILY), FAMILY, variant="fp")
