"""BinCifar, the original DAB code's VGG-like CIFAR network (its models/bincifar.py and bincifarfbin.py):
bincifar (pre-activation BN, real inputs; its weights are binarized through --binaryWeight, on by default,
so its variant is "wbin") and bincifarfbin (sign-binarized inputs on convs 2-7 as well).
Input 3 x 32 x 32; conv 7 (4x4) reduces the map to 1x1 and conv 8 is the classifier.

All convs keep their bias in both variants, as in the original. The unused Hardtanh is dropped.
"""

from functools import partial

from . import register
from .blocks import ConvStack, Family, size_range, stack_ops

CONVS = [(128, 3, 1, 1), (128, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1),
         (512, 3, 1, 1), (512, 3, 1, 1), (1024, 4, 1, 0)]  # (out, kernel, stride, padding) of convs 1..7
POOL = (2, 2)
POOL_AFTER = {2, 4, 6}
DROPOUT_AFTER = {4, 6}

FAMILY = Family("bincifar", default_inpsize=32, input_sizes=size_range(stack_ops(CONVS, POOL, POOL_AFTER)),
                in_channels=3, bin_range=(2, 7), label="BinCifar")

VARIANTS = {  # bincifar: BN(in) -> conv -> ReLU on convs 2-8 (ReLU on the logits too); fbin: B-blocks 2-7
    "": dict(binary_inputs=(), pre_norm=True),
    "fbin": dict(binary_inputs=(2, 3, 4, 5, 6, 7), pre_norm=False),
}
VARIANT_NAMES = {"": "wbin", "fbin": "fbin"}  # both train with binary weights by default

for suffix, cfg in VARIANTS.items():
    register(f"bincifar{suffix}", partial(ConvStack, family=FAMILY, convs=CONVS, pool=POOL, pool_after=POOL_AFTER,
                                          dropout_after=DROPOUT_AFTER, dropout=0.4, **cfg), FAMILY,
             binarized=True, variant=VARIANT_NAMES[suffix])
