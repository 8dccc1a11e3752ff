"""VGG-16 with BN for CIFAR (configuration D with extra Dropout2d), as the original DAB code's models/vgg.py
builds it: vgg16_bncifar, full precision. 13 convs, each 3x3 (bias) -> BN -> ReLU; classifier
Dropout(0.4) -> Linear(512, C), never counted by --binStart/--binEnd. Default bin range 2..13 (all
but the first conv; the original has none).

Fixes of the original (see README): it hard-coded 10 classes (here ``num_classes``), and it returned
raw logits while training used NLLLoss; here it returns log-probabilities like every other model.
"""

from collections import OrderedDict
from functools import partial

from torch import nn

from . import register
from .blocks import Classifier, Family, conv_unit, size_range

# out channels of a conv, "M" = MaxPool(2, 2), "D" = Dropout2d(0.3) after the preceding ReLU
CFG = [64, 64, "M", 128, "D", 128, "M", 256, "D", 256, "D", 256, "M",
       512, "D", 512, "D", 512, "M", 512, "D", 512, "D", 512, "M"]
OPS = [(2, 2, 0) if v == "M" else (3, 1, 1) for v in CFG if v != "D"]
NUM_CONVS = sum(isinstance(v, int) for v in CFG)

FAMILY = Family("vgg", default_inpsize=32, input_sizes=size_range(OPS), in_channels=3, bin_range=(2, NUM_CONVS),
                label="VGG-16-BN")


class VGG(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=()):
        super().__init__(family, binary_inputs)
        layers = OrderedDict()
        cin, i = in_channels, 0
        for v in CFG:
            if v == "M":
                layers[f"pool{i}"] = nn.MaxPool2d(2, 2)
            elif v == "D":
                layers[f"drop{i}"] = nn.Dropout2d(0.3)
            else:
                i += 1
                layers[f"conv{i}"] = conv_unit(cin, v, 3, 1, 1, bias=True, binary_input=i in self.binary_inputs)
                cin = v
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(nn.Dropout(0.4), nn.Linear(cin, num_classes))

    def logits(self, x):
        return self.classifier(self.features(x).flatten(1))


register("vgg16_bncifar", partial(VGG, family=FAMILY), FAMILY, variant="fp")
