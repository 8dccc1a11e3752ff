"""Pieces every model family shares.

- ``conv_unit``: one conv with its BN and ReLU, in the full-precision order (conv -> BN(out)) or a
  binarized-input order: the paper's and XNOR-Net's BN(in) -> sign -> conv, or SD-BNN's and Bi-Real's
  sign -> conv -> BN(out);
- ``Classifier``: the base class of every model (input-size check, log-probabilities, declared
  ``binary_inputs``);
- ``ConvStack``: the plain chain of convs ending in a 1x1 conv classifier that Sketch-A-Net, AlexNet
  (with its fully connected layers written as convs) and BinCifar share;
- ``Family`` and ``size_range``: per-family facts, with the accepted input sizes computed from the
  spatial arithmetic of the layers;
- ``init_weights`` (the original's ``utils.weights_init``), ``dummy_forward`` and ``conv_table``.

The layer facts come from the original DAB code's model files (its models/*.py), each family file naming
the ones it follows.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from binarize import make_activation


@dataclass(frozen=True)
class Family:
    """What a family knows about itself, shared by all its variants.

    ``name`` is the family's key (what ``ModelInfo.family`` holds), ``label`` its display name as papers
    write it ("Sketch-A-Net", "ResNet-20"; the name where none is given).
    """

    name: str
    default_inpsize: int
    input_sizes: tuple  # (min, max) side length, inclusive
    in_channels: int  # default number of input channels
    bin_range: tuple  # recommended (binStart, binEnd), as in the original run scripts
    bin_layers: tuple = None  # the convs binarized by default, where they are not one range (SD-BNN models)
    label: str = None  # display name

    def __post_init__(self):
        if self.label is None:
            object.__setattr__(self, "label", self.name)


def conv_unit(cin, cout, kernel, stride=1, padding=0, *, groups=1, bias=False, binary_input=False,
              norm="post", binary_norm="pre", activation="sign", relu=True, dropout=0.0, bn_kwargs=None):
    """Conv with its BN and ReLU as an ``nn.Sequential`` whose conv is named ``conv``.

    ``norm`` places the BN of a full-precision-input conv: "post" (conv -> BN(cout)), "pre"
    (BN(cin) -> conv) or "none". A binarized input puts the activation binarizer ``activation`` (a name
    of ``binarize.ACTIVATIONS``, "sign" by default) in front of the conv, and ``binary_norm`` places its
    BN: "pre" (BN(cin) -> sign -> [Dropout] -> conv, the paper's and XNOR-Net's order), "post"
    (sign -> conv -> BN(cout), SD-BNN's and Bi-Real's) or "none".
    """
    for value in (norm, binary_norm):
        if value not in ("post", "pre", "none"):
            raise ValueError(f"norm must be 'post', 'pre' or 'none', got {value!r}")
    bn_kwargs = bn_kwargs or {}
    place = binary_norm if binary_input else norm
    layers = []
    if place == "pre":
        layers.append(("bn", nn.BatchNorm2d(cin, **bn_kwargs)))
    if binary_input:
        layers.append(("sign", make_activation(activation, cin)))
    if dropout:
        layers.append(("drop", nn.Dropout(dropout)))
    layers.append(("conv", nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias)))
    if place == "post":
        layers.append(("bn", nn.BatchNorm2d(cout, **bn_kwargs)))
    if relu:
        layers.append(("relu", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def spatial_out(size, ops):
    """Side length after ``ops`` = [(kernel, stride, padding[, ceil_mode])], None once a layer is empty."""
    for kernel, stride, padding, *ceil in ops:
        span = size + 2 * padding - kernel
        if span < 0:
            return None
        if ceil and ceil[0]:
            out = -(-span // stride) + 1
            if (out - 1) * stride >= size + padding:  # PyTorch drops a window starting in the right padding
                out -= 1
        else:
            out = span // stride + 1
        size = out
    return size


def size_range(ops, final=1, limit=4096):
    """(min, max) input side for which ``ops`` end in a ``final`` x ``final`` map (what the head needs)."""
    valid = [n for n in range(1, limit) if spatial_out(n, ops) == final]
    if not valid or valid[-1] - valid[0] + 1 != len(valid):
        raise ValueError(f"input sizes valid for {ops} are not one interval: {valid}")
    return valid[0], valid[-1]


def add_stages(net, stages, blocks, block, cin, index):
    """``net.layer1..layerN``: per stage ``(planes, stride)``, ``blocks`` blocks, the first one with the
    stride; ``block(cin, planes, stride, binary_inputs, index)``. Returns the last stage's width."""
    for s, (planes, stride) in enumerate(stages, start=1):
        layer = []
        for b in range(blocks):
            layer.append(block(cin, planes, stride if b == 0 else 1, net.binary_inputs, index))
            cin = planes
        setattr(net, f"layer{s}", nn.Sequential(*layer))
    return cin


class Classifier(nn.Module):
    """Base of every model: checks the input size and returns log-probabilities of ``self.logits(x)``.

    ``binary_inputs`` holds the 1-based indices (``model.modules()`` order, as --binStart/--binEnd
    count) of the convs whose input is binarized. ``activation_kwargs`` are the settings an activation
    binarizer swapped in later takes from the model (e.g. ASD's reduction).
    """

    activation_kwargs = {}

    def __init__(self, family, binary_inputs=()):
        super().__init__()
        self.family = family
        self.binary_inputs = tuple(sorted(binary_inputs))

    def logits(self, x):
        raise NotImplementedError

    def forward(self, x):
        lo, hi = self.family.input_sizes
        height, width = x.shape[-2:]
        if not (lo <= height <= hi and lo <= width <= hi):
            raise ValueError(f"{self.family.name} accepts input sizes {lo}..{hi}, got {height}x{width}")
        return F.log_softmax(self.logits(x), dim=1)


def stack_ops(convs, pool, pool_after):
    """Spatial ops of a ConvStack (its 1x1 classifier keeps the size)."""
    ops = []
    for i, (_, kernel, stride, padding) in enumerate(convs, start=1):
        ops.append((kernel, stride, padding))
        if i in pool_after:
            ops.append((*pool, 0))
    return ops


class ConvStack(Classifier):
    """Convs from a table, max-pools and Dropout2d after given convs, then a 1x1 conv classifier.

    convs: [(out_channels, kernel, stride, padding)] for convs 1..N; the classifier is conv N+1.
    pool: (kernel, stride) of every max-pool, placed after the convs in ``pool_after``.
    dropout_after: convs followed (after their pool, if any) by Dropout2d(``dropout``); p = 0 means none.
    conv_bias: bias on convs 2..N (conv 1 and the classifier always have one).
    pre_norm: full-precision convs 2..N+1 take BN(in) -> conv -> ReLU instead of conv -> BN -> ReLU,
        the classifier included (BinCifar's weight-only model).
    """

    def __init__(self, num_classes, in_channels, *, family, convs, pool, pool_after, dropout_after,
                 dropout, binary_inputs=(), conv_bias=True, pre_norm=False):
        super().__init__(family, binary_inputs)
        layers = []
        cin = in_channels
        for i, (cout, kernel, stride, padding) in enumerate(convs, start=1):
            norm = "pre" if pre_norm and i > 1 else "post"
            layers.append((f"conv{i}", conv_unit(cin, cout, kernel, stride, padding, norm=norm,
                                                  bias=conv_bias or i == 1,
                                                  binary_input=i in self.binary_inputs)))
            if i in pool_after:
                layers.append((f"pool{i}", nn.MaxPool2d(*pool)))
            if i in dropout_after and dropout:
                layers.append((f"drop{i}", nn.Dropout2d(dropout)))
            cin = cout
        # BinCifar's classifier is BN -> conv -> ReLU: the ReLU on the logits is the original's, kept.
        layers.append((f"conv{len(convs) + 1}", conv_unit(cin, num_classes, 1, bias=True, relu=pre_norm,
                                                          norm="pre" if pre_norm else "none")))
        self.features = nn.Sequential(OrderedDict(layers))

    def logits(self, x):
        return self.features(x).flatten(1)


@torch.no_grad()
def init_weights(model):
    """The original's init: Kaiming-normal (fan_out) convs with zero bias, BN 1/0, zero Linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def dummy_forward(model, inpsize, in_channels, hooks):
    """Run one zero sample of ``in_channels`` x ``inpsize`` x ``inpsize`` through ``model`` with the forward
    ``hooks`` ({module: hook(module, args, output)}) attached: eval mode, no gradients, on the model's
    device and dtype (a model built on the "meta" device costs nothing). Hooks and mode are restored."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, inpsize, inpsize, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def conv_table(model, inpsize, in_channels):
    """One row per nn.Conv2d in ``model.modules()`` order (index 1.. as --binStart/--binEnd count), with the
    input and output spatial sizes recorded by forward hooks during ``dummy_forward``.

    Row keys: index, name, in_channels, out_channels, kernel, stride, padding, groups, bias, binary_input
    (index in ``model.binary_inputs``), input_hw, out_hw. Raises ValueError for a size the model rejects.
    On a model with binarized weights the forward also runs the binarizers once.
    """
    binary = set(getattr(model, "binary_inputs", ()))
    rows, hooks = [], {}
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for index, (name, conv) in enumerate(convs, start=1):
        row = dict(index=index, name=name, in_channels=conv.in_channels, out_channels=conv.out_channels,
                   kernel=conv.kernel_size, stride=conv.stride, padding=conv.padding, groups=conv.groups,
                   bias=conv.bias is not None, binary_input=index in binary, input_hw=None, out_hw=None)
        rows.append(row)

        def record(module, args, output, row=row):
            row["input_hw"] = tuple(args[0].shape[-2:])
            row["out_hw"] = tuple(output.shape[-2:])

        hooks[conv] = record
    dummy_forward(model, inpsize, in_channels, hooks)
    return rows
