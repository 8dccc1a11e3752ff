"""Network-in-Network as in XNOR-Net's CIFAR-10 code (Rastegari et al., 2016), which the original DAB
code's models/nin.py follows: nin.

XNOR-Net's NIN is a binary network: convs 2-8 take sign-binarized inputs. Its weights stay real unless
--binaryWeight is given (recommended range 2..8, the convs with binarized inputs), as with the original's
flags, whose full-precision-weight NIN log trained it that way; so its variant is "abin" (binarized
activations), and with --binaryWeight it is the fully binary network.

Conv 1 is full precision (conv -> BN(affine=False) -> ReLU); convs 2-8 are XNOR-Net BinConv2d units,
BN(in, affine) -> sign -> [Dropout 0.5 on convs 4 and 7] -> conv (bias) -> ReLU; conv 9 is the
classifier, BN(affine=False) -> conv -> ReLU -> AvgPool(8, stride 1). Every BN has eps 1e-4.
The ReLU on the class maps is the original's, kept.

Fix of the original (see README): it hard-coded 10 classes and ignored nClasses; the classifier conv
here has ``num_classes`` outputs.
"""

from collections import OrderedDict
from functools import partial

from torch import nn

from . import register
from .blocks import Classifier, Family, conv_unit, size_range

BN = dict(eps=1e-4)
# (out, kernel, padding, dropout before the conv) of convs 2-8, or ("maxpool"|"avgpool", 3, stride 2, pad 1)
LAYOUT = [(160, 1, 0, 0.0), (96, 1, 0, 0.0), ("maxpool", 3, 2, 1),
          (192, 5, 2, 0.5), (192, 1, 0, 0.0), (192, 1, 0, 0.0), ("avgpool", 3, 2, 1),
          (192, 3, 1, 0.5), (192, 1, 0, 0.0)]
POOLS = {"maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d}
POOL_SIZE = 8  # final AvgPool(8, stride 1)
OPS = ([(5, 1, 2)] + [row[1:] if row[0] in POOLS else (row[1], 1, row[2]) for row in LAYOUT]
       + [(1, 1, 0), (POOL_SIZE, 1, 0)])

FAMILY = Family("nin", default_inpsize=32, input_sizes=size_range(OPS), in_channels=3, bin_range=(2, 8),
                label="NIN")


class NIN(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=range(2, 9)):
        super().__init__(family, binary_inputs)
        layers = OrderedDict(conv1=conv_unit(in_channels, 192, 5, 1, 2, bias=True,
                                             bn_kwargs=dict(BN, affine=False)))
        cin, i = 192, 2
        for row in LAYOUT:
            if row[0] in POOLS:
                layers[f"{row[0]}{i - 1}"] = POOLS[row[0]](*row[1:])
                continue
            cout, kernel, padding, dropout = row
            # A conv without a binarized input (--binInputs) keeps the BN in front: BN -> conv -> ReLU.
            layers[f"conv{i}"] = conv_unit(cin, cout, kernel, 1, padding, bias=True, norm="pre",
                                           binary_input=i in self.binary_inputs, dropout=dropout, bn_kwargs=BN)
            cin, i = cout, i + 1
        layers[f"conv{i}"] = conv_unit(cin, num_classes, 1, bias=True, norm="pre", bn_kwargs=dict(BN, affine=False))
        layers["avgpool"] = nn.AvgPool2d(POOL_SIZE, 1)
        self.features = nn.Sequential(layers)

    def logits(self, x):
        return self.features(x).flatten(1)


register("nin", partial(NIN, family=FAMILY), FAMILY, binarized=False, variant="abin")
