"""Sketch-A-Net (Yu et al., BMVC 2015) and its DAB variants: sketchanet, sketchanetwbin,
sketchanetfbin, sketchanethybrid, sketchanethybridv2.

One ConvStack built from the layer table below, as the original DAB code's models/sketchanet*.py
define it; the variants differ only in the settings of ``VARIANTS``. Input 1 x 225 x 225; conv 8 is the
classifier.
"""

from functools import partial

from . import register
from .blocks import ConvStack, Family, size_range, stack_ops

CONVS = [(64, 15, 3, 0), (128, 5, 1, 0), (256, 3, 1, 1), (256, 3, 1, 1),
         (256, 3, 1, 1), (512, 7, 1, 0), (512, 1, 1, 0)]  # (out, kernel, stride, padding) of convs 1..7
POOL = (3, 2)  # every max-pool: kernel 3, stride 2
POOL_AFTER = {1, 2, 5}
DROPOUT_AFTER = {6, 7}

FAMILY = Family("sketchanet", default_inpsize=225, input_sizes=size_range(stack_ops(CONVS, POOL, POOL_AFTER)),
                in_channels=1, bin_range=(2, 7), label="Sketch-A-Net")

VARIANTS = {  # suffix -> convs (1-based) with sign-binarized input, bias on convs 2-7, Dropout2d p
    "": dict(binary_inputs=(), conv_bias=True, dropout=0.1),
    "wbin": dict(binary_inputs=(), conv_bias=False, dropout=0.1),
    "fbin": dict(binary_inputs=(2, 3, 4, 5, 6, 7), conv_bias=False, dropout=0.2),
    "hybrid": dict(binary_inputs=(2, 3, 4, 5), conv_bias=False, dropout=0.2),
    "hybridv2": dict(binary_inputs=(2, 3, 4, 5, 6), conv_bias=False, dropout=0.2),
}

for suffix, cfg in VARIANTS.items():
    register(f"sketchanet{suffix}", partial(ConvStack, family=FAMILY, convs=CONVS, pool=POOL,
                                            pool_after=POOL_AFTER, dropout_after=DROPOUT_AFTER, **cfg), FAMILY,
             variant=suffix or "fp")
