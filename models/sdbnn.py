"""SD-BNN's four model families, each as a 1w1a model and its full-precision twin: resnet20_1w1a and
resnet20_fp, vgg_small_1w1a and vgg_small_fp, resnet18_1w1a and resnet18_cifar_fp (CIFAR), birealnet18
and birealnet18_fp (ImageNet), as the SD-BNN repository (pingxue-hfut/SD-BNN:
cifar10/{ResNet20,VGG-Small,ResNet18}, imagenet/birealnet.py) defines them. The binary ones are the
"1w1a" variant of their family (1-bit weights, 1-bit activations), birealnet18 included.

Every binary conv is SD-BNN's: activation binarizer -> 3x3 conv, no bias -> BN(out) (``sd_conv``, a
``conv_unit`` with ``binary_norm="post"``); the fp twin builds the same unit without the binarizer
(conv -> BN), so both have the same parameter names and shapes. ASD, WSD and EDE are not part of the
definitions: they are binarizer options (``binarize.binarize_inputs(model, "asd")``, ``shift="wsd"``,
``backward="ede"``), and ``activation_kwargs`` hands an ASD swapped in later SD-BNN's settings.

Convs are numbered from 1 in ``model.modules()`` order (what --binStart/--binEnd and
``binarize.conv_layers`` count). The stem is conv 1 and stays full precision; the classifiers are
Linear layers, which are not numbered; the 1x1 downsampling convs stay full precision:

- resnet20 (19 convs): stem 1, binary 2-19 (stage s, block b: 2 + 6(s-1) + 2b and the next one); the
  option-A shortcuts have no conv.
- vgg_small (6 convs): stem 1, binary 2-6.
- resnet18_cifar (20 convs): stem 1, binary 2-7, 9-12, 14-17, 19-20; downsamples 8, 13, 18 (a block
  registers conv1, conv2, then its shortcut, the numbering of models/resnet.py).
- birealnet18 (20 convs): stem 1, binary 2-6, 8-11, 13-16, 18-20; downsamples 7, 12, 17 (a block
  registers its binary conv, then its shortcut).

Where we differ from SD-BNN's code:
- a binarized activation of exactly 0 is +1, as a weight of 0 is (``torch.sign`` in their code gives 0);
- the models return log-probabilities (theirs return logits for cross-entropy: the same loss);
- ResNet-20 pools globally; theirs ``avg_pool2d`` with the map's width as kernel, the same on square maps;
- Bi-Real's downsampling AvgPool2d(2) uses ``ceil_mode``, so an odd map pools to the size the strided
  conv gives (identical on even maps, e.g. every stage at 224); theirs fails on odd maps, so the sizes
  it accepts are not one interval (29-32, 61-64, ..., 221-224, 253-256, ...);
- a globally pooled head sets no upper bound on the input side: those families accept up to 4095,
  the largest side ``size_range`` considers;
- Bi-Real's init is ours (see ``BiRealNet18.init_parameters``): theirs keeps torch's defaults.
"""

import itertools
import math
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .blocks import Classifier, Family, add_stages, conv_unit, size_range, spatial_out

MAX_INPSIZE = 4095  # global pooling bounds nothing above; the largest side size_range considers

RESNET20_STAGES = [(16, 1), (32, 2), (64, 2)]  # (planes, stride of the first block); 3 blocks each
RESNET20_BLOCKS = 3
# (out channels, MaxPool2d(2) after the conv) of VGG-Small's six convs; conv 1 is the fp stem
VGG_SMALL_CONVS = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]
VGG_SMALL_SIDE = 4  # the classifier is Linear(512 * 4 * 4, classes)
RESNET18_STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]  # 2 blocks each
RESNET18_BLOCKS = 2
RESNET18_POOL = 4  # avg_pool2d(4) before BatchNorm1d(512)
BIREAL18_STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]  # 4 blocks of one binary conv each
BIREAL18_BLOCKS = 4

# The convs SD-BNN binarizes (weights and inputs), 1-based in model.modules() order.
RESNET20_BINARY = tuple(range(2, 20))
VGG_SMALL_BINARY = tuple(range(2, 7))
RESNET18_BINARY = (2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20)  # 8, 13, 18: fp downsamples
BIREAL18_BINARY = (2, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19, 20)  # 7, 12, 17: fp downsamples

VARIANTS = {  # name -> (family, binarized): a 1w1a model binarizes its family's bin_layers, its fp twin nothing
    "resnet20_1w1a": ("resnet20", True), "resnet20_fp": ("resnet20", False),
    "vgg_small_1w1a": ("vgg_small", True), "vgg_small_fp": ("vgg_small", False),
    "resnet18_1w1a": ("resnet18_cifar", True), "resnet18_cifar_fp": ("resnet18_cifar", False),
    "birealnet18": ("birealnet18", True), "birealnet18_fp": ("birealnet18", False),
}


def _stage_ops(stages, blocks, convs_per_block):
    """Spatial ops of the main path of residual stages of 3x3 convs (a shortcut keeps the same size)."""
    ops = []
    for _, stride in stages:
        ops += [(3, stride, 1)] + [(3, 1, 1)] * (blocks * convs_per_block - 1)
    return ops


def _global_pool_sizes(ops):
    """(min, max) input side of a globally pooled head: every side whose maps stay non-empty."""
    return next(n for n in range(1, MAX_INPSIZE + 1) if spatial_out(n, ops)), MAX_INPSIZE


# Option A subsamples with ::2 and the 1x1/2 downsample conv gives (n - 1) // 2 + 1: both equal the
# strided 3x3 conv's side, so the main path alone fixes the sizes. So does Bi-Real's ceil-mode pool.
FAMILIES = {
    "resnet20": Family("resnet20", default_inpsize=32, in_channels=3, bin_range=(2, 19), bin_layers=RESNET20_BINARY,
                       label="ResNet-20",
                       input_sizes=_global_pool_sizes([(3, 1, 1)] + _stage_ops(RESNET20_STAGES, RESNET20_BLOCKS, 2))),
    "vgg_small": Family("vgg_small", default_inpsize=32, in_channels=3, bin_range=(2, 6), bin_layers=VGG_SMALL_BINARY,
                        label="VGG-Small",
                        input_sizes=size_range([op for _, pool in VGG_SMALL_CONVS
                                                for op in [(3, 1, 1)] + [(2, 2, 0)] * pool], final=VGG_SMALL_SIDE)),
    "resnet18_cifar": Family("resnet18_cifar", default_inpsize=32, in_channels=3, bin_range=(2, 20),
                             bin_layers=RESNET18_BINARY, label="CIFAR ResNet-18",
                             input_sizes=size_range([(3, 1, 1)] + _stage_ops(RESNET18_STAGES, RESNET18_BLOCKS, 2)
                                                    + [(RESNET18_POOL, RESNET18_POOL, 0)])),
    "birealnet18": Family("birealnet18", default_inpsize=224, in_channels=3, bin_range=(2, 20),
                          bin_layers=BIREAL18_BINARY, label="Bi-Real Net-18",
                          input_sizes=_global_pool_sizes([(7, 2, 3), (3, 2, 1)]
                                                         + _stage_ops(BIREAL18_STAGES, BIREAL18_BLOCKS, 1))),
}


def sd_conv(cin, cout, stride, binary, activation="sign"):
    """SD-BNN's binary conv: [activation binarizer ->] 3x3 conv, no bias -> BN(cout)."""
    return conv_unit(cin, cout, 3, stride, 1, binary_input=binary, binary_norm="post", norm="post",
                     activation=activation, relu=False)


def _batch_norms(model):
    return (m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine)


@torch.no_grad()
def _init_cifar_resnet(model):
    """SD-BNN's ``_weights_init`` of its CIFAR ResNets: Kaiming-normal (torch's default: fan_in,
    gain sqrt(2)) on every Conv2d and Linear weight; BN weight 1, bias 0 (torch's default, which their
    code keeps). Their code never touches the Linear bias, so it keeps torch's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``reset_parameters`` draws it afresh here."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    for bn in _batch_norms(model):
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)


class ShortcutA(nn.Module):
    """ResNet's option-A shortcut (He et al., 2016): ``x[:, :, ::stride, ::stride]`` with ``pad`` zero
    channels added on each side; no parameters."""

    def __init__(self, stride, pad):
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self):
        return f"stride={self.stride}, pad={self.pad}"


class ResNet20Block(nn.Module):
    """Two binary convs with a shortcut around each: ``out = hardtanh(BN(conv1(x)) + sc(x))``, then
    ``hardtanh(BN(conv2(out)) + out)``; ``sc`` is the identity or option A."""

    def __init__(self, cin, planes, stride, binary_inputs, index):
        super().__init__()
        self.conv1 = sd_conv(cin, planes, stride, next(index) in binary_inputs)
        self.conv2 = sd_conv(planes, planes, 1, next(index) in binary_inputs)
        self.shortcut = ShortcutA(stride, planes // 4) if stride != 1 or cin != planes else nn.Identity()

    def forward(self, x):
        out = F.hardtanh(self.conv1(x) + self.shortcut(x))
        return F.hardtanh(self.conv2(out) + out)


class VGGSmall(Classifier):
    """SD-BNN's VGG-Small: six 3x3 convs (128, 128, 256, 256, 512, 512; conv 1 fp), each conv ->
    [MaxPool2d(2) after convs 2, 4, 6] -> BN -> hardtanh, then Linear(512 * 4 * 4, classes). The pool
    sits between the conv and its BN, so the BN is a layer of its own, not part of the conv_unit."""

    activation_kwargs = {"reduction": 16, "init_std": 0.01}

    def __init__(self, num_classes, in_channels, *, family, binary_inputs=()):
        super().__init__(family, binary_inputs)
        layers = OrderedDict()
        cin = in_channels
        for i, (cout, pool) in enumerate(VGG_SMALL_CONVS, start=1):
            layers[f"conv{i}"] = conv_unit(cin, cout, 3, 1, 1, binary_input=i > 1 and i in self.binary_inputs,
                                           norm="none", binary_norm="none", relu=False)
            if pool:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            layers[f"bn{i}"] = nn.BatchNorm2d(cout)
            layers[f"act{i}"] = nn.Hardtanh()
            cin = cout
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(cin * VGG_SMALL_SIDE * VGG_SMALL_SIDE, num_classes)

    @torch.no_grad()
    def init_parameters(self):
        """SD-BNN's VGG-Small init: convs N(0, sqrt(2 / (k*k*C_out))), BN 1/0, Linears N(0, 0.01) with zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for bn in _batch_norms(self):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def logits(self, x):
        return self.fc(self.features(x).flatten(1))


class ResNet18Block(nn.Module):
    """``out = hardtanh(BN(conv1(x)))``, then ``hardtanh(BN(conv2(out)) + sc(x))``; ``sc`` is the identity
    or a 1x1/stride conv -> BN (full precision by default)."""

    def __init__(self, cin, planes, stride, binary_inputs, index):
        super().__init__()
        self.conv1 = sd_conv(cin, planes, stride, next(index) in binary_inputs)
        self.conv2 = sd_conv(planes, planes, 1, next(index) in binary_inputs)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != planes:
            self.shortcut = conv_unit(cin, planes, 1, stride, 0, binary_input=next(index) in binary_inputs,
                                      binary_norm="post", relu=False)

    def forward(self, x):
        out = F.hardtanh(self.conv1(x))
        return F.hardtanh(self.conv2(out) + self.shortcut(x))


class BiRealBlock(nn.Module):
    """One binary conv with its own shortcut: ``PReLU(BN(conv(x)) + sc(x))``, ``sc`` the identity or
    AvgPool2d(stride, ceil_mode) -> 1x1 conv -> BN (full precision by default); PReLU per channel."""

    def __init__(self, cin, planes, stride, binary_inputs, index):
        super().__init__()
        self.conv = sd_conv(cin, planes, stride, next(index) in binary_inputs, activation="approxsign")
        self.shortcut = nn.Identity()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(OrderedDict(
                pool=nn.AvgPool2d(stride, ceil_mode=True),
                proj=conv_unit(cin, planes, 1, 1, 0, binary_input=next(index) in binary_inputs, binary_norm="post",
                               activation="approxsign", relu=False)))
        self.prelu = nn.PReLU(planes)

    def forward(self, x):
        return self.prelu(self.conv(x) + self.shortcut(x))


@torch.no_grad()
def _init_bireal(model):
    """Our choice (SD-BNN's file keeps torch's defaults, its binary latent weights U(0, 0.001)):
    Kaiming-normal convs (fan_out, ReLU gain), as torchvision's ResNets; BN 1/0; the Linear and the
    PReLUs (0.25) at torch's defaults, drawn afresh."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.Linear, nn.PReLU)):
            m.reset_parameters()
    for bn in _batch_norms(model):
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)


class ResidualNet(Classifier):
    """The three residual families, one definition: an fp stem conv -> BN (-> hardtanh on CIFAR, -> max-pool
    on ImageNet), stages of ``block``s (their first block strided), then the head: average pool (global,
    or ``pool`` x ``pool``) -> [BatchNorm1d] -> Linear. The layouts are in ``RESIDUAL``:

    - resnet20: stem 3x3/1 + hardtanh; 3 stages (16/32/64) of 3 ResNet20Blocks; global pool, BatchNorm1d;
    - resnet18_cifar: stem 3x3/1 + hardtanh; 4 stages (64..512) of 2 ResNet18Blocks; avg_pool2d(4), BatchNorm1d;
    - birealnet18: stem 7x7/2 + max-pool(3, 2, 1); 4 stages of 4 BiRealBlocks; global pool, no BatchNorm1d.
    """

    def __init__(self, num_classes, in_channels, *, family, binary_inputs=(), stem, stages, blocks, block,
                 stem_pool=False, pool=None, head_bn=True, reduction=16, init=_init_cifar_resnet):
        super().__init__(family, binary_inputs)
        self.activation_kwargs = {"reduction": reduction}
        self._init, self._pool, self._stem_pool = init, pool, stem_pool
        index = itertools.count(2)
        self.conv1 = conv_unit(in_channels, stages[0][0], *stem, relu=False)
        if stem_pool:
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = add_stages(self, stages, blocks, block, stages[0][0], index)
        self.num_stages = len(stages)
        if head_bn:
            self.bn = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def init_parameters(self):
        """SD-BNN's init for the CIFAR ResNets (``_init_cifar_resnet``), ours for Bi-Real (``_init_bireal``)."""
        self._init(self)

    def logits(self, x):
        x = self.maxpool(self.conv1(x)) if self._stem_pool else F.hardtanh(self.conv1(x))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        x = F.adaptive_avg_pool2d(x, 1) if self._pool is None else F.avg_pool2d(x, self._pool)
        x = x.flatten(1)
        return self.fc(self.bn(x) if hasattr(self, "bn") else x)


RESIDUAL = {  # family -> ResidualNet's layout: stem (kernel, stride, padding), stages, blocks, ...
    "resnet20": dict(stem=(3, 1, 1), stages=RESNET20_STAGES, blocks=RESNET20_BLOCKS, block=ResNet20Block),
    "resnet18_cifar": dict(stem=(3, 1, 1), stages=RESNET18_STAGES, blocks=RESNET18_BLOCKS, block=ResNet18Block,
                           pool=RESNET18_POOL),
    "birealnet18": dict(stem=(7, 2, 3), stem_pool=True, stages=BIREAL18_STAGES, blocks=BIREAL18_BLOCKS, block=BiRealBlock,
                        head_bn=False, reduction=8, init=_init_bireal),
}
ARCHITECTURES = {"vgg_small": VGGSmall, **{name: partial(ResidualNet, **layout) for name, layout in RESIDUAL.items()}}

for name, (family_name, binarized) in VARIANTS.items():
    family = FAMILIES[family_name]
    register(name, partial(ARCHITECTURES[family_name], family=family,
                           binary_inputs=family.bin_layers if binarized else ()), family, binarized=binarized,
             variant="1w1a" if binarized else "fp")


# A recipe that trains SD-BNN's models on the embedded digits (bench/bench_digits.py --suite sdbnn measures
# it on ResNet-20: 91-96% val top-1 in 10 epochs). SD-BNN's own recipes (runx.sh) train 400-600 epochs on
# CIFAR-10 or 256 per stage on ImageNet; main.py's defaults (2 epochs of Adam at 1e-3) leave its binary
# models near chance on the digits.
DIGITS_RECIPE = ("--inpsize", "32", "--epochs", "10", "--optimType", "adam", "--maxlr", "5e-3",
                 "--learningratescheduler", "cosine", "--batch-size", "32")


def digits_recipe(name):
    """The main.py flags of a digits run that trains SD-BNN model ``name`` (a list; its binary models with
    SD-BNN's conv, ``--binarizer sdbnn``), or None for a model that is not SD-BNN's."""
    if name not in VARIANTS:
        return None
    binary = VARIANTS[name][1]
    return ["--model_def", name, *DIGITS_RECIPE] + (["--binarizer", "sdbnn"] if binary else [])
