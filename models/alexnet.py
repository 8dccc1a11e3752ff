"""AlexNet with BN and its fully connected layers written as convs (conv6 is 6x6, conv7 and the
classifier conv8 are 1x1), and its DAB variants: alexnet, alexnetwbin, alexnetfbin, alexnethybrid,
alexnethybridv2, as the original DAB code's models/alexnet*.py define them. Input 3 x 224 x 224 by default.

The original's fbin and hybridv2 keep a Dropout2d(0.0) module; a p = 0 dropout does nothing, so it is
left out here.
"""

from functools import partial

from . import register, sketchanet
from .blocks import ConvStack, Family, size_range, stack_ops

CONVS = [(96, 11, 4, 2), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1),
         (256, 3, 1, 1), (4096, 6, 1, 0), (4096, 1, 1, 0)]  # (out, kernel, stride, padding) of convs 1..7
POOL = (3, 2)
POOL_AFTER = {1, 2, 5}
DROPOUT_AFTER = {5, 6}  # after pool 5 and after block 6

FAMILY = Family("alexnet", default_inpsize=224, input_sizes=size_range(stack_ops(CONVS, POOL, POOL_AFTER)),
                in_channels=3, bin_range=(2, 8), label="AlexNet")

# The original applied Sketch-A-Net's variant scheme to AlexNet: the same convs get sign-binarized
# inputs and the same convs (2-7) lose their bias; only the dropout differs.
DROPOUT = {"": 0.5, "wbin": 0.5, "fbin": 0.0, "hybrid": 0.1, "hybridv2": 0.0}
VARIANTS = {suffix: dict(cfg, dropout=DROPOUT[suffix]) for suffix, cfg in sketchanet.VARIANTS.items()}

for suffix, cfg in VARIANTS.items():
    register(f"alexnet{suffix}", partial(ConvStack, family=FAMILY, convs=CONVS, pool=POOL,
                                         pool_after=POOL_AFTER, dropout_after=DROPOUT_AFTER, **cfg), FAMILY,
             variant=suffix or "fp")
