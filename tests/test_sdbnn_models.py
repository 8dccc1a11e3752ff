"""Tests for models/sdbnn.py: SD-BNN's ResNet-20, VGG-Small, CIFAR ResNet-18 and Bi-Real-18, 1w1a and fp.

The conv numbering, binary sets and parameter formulas below are written out from spec/sdbnn.md
(section 2), not read back from the code under test. Real forwards run at batch 2 and 32x32 (the
CIFAR default; Bi-Real accepts it too, and its every stage still sees a map larger than 1x1).
"""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import binarize
import models
from models.__main__ import main as cli_main
from models.sdbnn import ShortcutA

C = 10  # classes
SIZE = 32  # input side of the real forwards


def _span(a, b):
    return set(range(a, b + 1))


# name -> (fp twin, number of convs, binary convs, 1x1 downsample convs), from spec/sdbnn.md section 2
FAMILIES = {
    "resnet20_1w1a": ("resnet20_fp", 19, _span(2, 19), set()),
    "vgg_small_1w1a": ("vgg_small_fp", 6, _span(2, 6), set()),
    "resnet18_1w1a": ("resnet18_cifar_fp", 20, _span(2, 20) - {8, 13, 18}, {8, 13, 18}),
    "birealnet18": ("birealnet18_fp", 20, _span(2, 20) - {7, 12, 17}, {7, 12, 17}),
}
BINARY_NAMES = list(FAMILIES)
FP_NAMES = [fp for fp, *_ in FAMILIES.values()]
ALL_NAMES = BINARY_NAMES + FP_NAMES
# family -> (default, min, max) input side
SIZES = {"resnet20": (32, 1, 4095), "vgg_small": (32, 32, 39), "resnet18_cifar": (32, 25, 56),
         "birealnet18": (224, 1, 4095)}


def conv(cin, cout, k=3):
    return cin * cout * k * k


def bn(n):
    return 2 * n


def linear(n_in, n_out):
    return n_in * n_out + n_out


def resnet20_params(cin, k):
    stem = conv(cin, 16) + bn(16)
    stage1 = 6 * (conv(16, 16) + bn(16))
    stage2 = conv(16, 32) + bn(32) + 5 * (conv(32, 32) + bn(32))  # option A: no parameters
    stage3 = conv(32, 64) + bn(64) + 5 * (conv(64, 64) + bn(64))
    return stem + stage1 + stage2 + stage3 + bn(64) + linear(64, k)


def vgg_small_params(cin, k):
    widths = [cin, 128, 128, 256, 256, 512, 512]
    convs = sum(conv(a, b) + bn(b) for a, b in zip(widths, widths[1:]))
    return convs + linear(512 * 4 * 4, k)


def resnet18_cifar_params(cin, k):
    total = conv(cin, 64) + bn(64)
    for prev, planes in [(64, 64), (64, 128), (128, 256), (256, 512)]:
        total += conv(prev, planes) + 3 * conv(planes, planes) + 4 * bn(planes)  # two blocks, two 3x3 convs each
        if prev != planes:
            total += conv(prev, planes, 1) + bn(planes)  # 1x1 downsample + BN
    return total + bn(512) + linear(512, k)


def birealnet18_params(cin, k):
    total = conv(cin, 64, 7) + bn(64)
    for prev, planes in [(64, 64), (64, 128), (128, 256), (256, 512)]:
        prelu = planes  # one slope per channel
        total += conv(prev, planes) + 3 * conv(planes, planes) + 4 * (bn(planes) + prelu)
        if prev != planes:
            total += conv(prev, planes, 1) + bn(planes)  # AvgPool -> 1x1 conv -> BN
    return total + linear(512, k)


PARAMS = {"resnet20": resnet20_params, "vgg_small": vgg_small_params, "resnet18_cifar": resnet18_cifar_params,
          "birealnet18": birealnet18_params}


def _meta(name, num_classes=C, in_channels=None, **kwargs):
    with torch.device("meta"):
        return models.build_model(name, num_classes, in_channels=in_channels, init=False, **kwargs)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _binarized_input_convs(model):
    return {index for index, *_ in binarize.input_binarizers(model)}


# ---------------------------------------------------------------- registry and numbering

def test_names_are_registered_with_their_flags():
    assert set(ALL_NAMES) <= set(models.list_models())
    for name in ALL_NAMES:
        info = models.model_info(name)
        assert info.binarized == (name in BINARY_NAMES), name
        assert info.default_in_channels == 3


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_bin_layers_are_exactly_sdbnns_binary_convs(name):
    fp_name, num_convs, binary, downsample = FAMILIES[name]
    info = models.model_info(name)
    assert info.num_convs == num_convs
    assert info.bin_range == (2, num_convs)
    assert set(info.bin_layers) == binary and len(info.bin_layers) == len(binary)
    assert len(info.bin_layers) == {"resnet20_1w1a": 18, "vgg_small_1w1a": 5, "resnet18_1w1a": 16,
                                    "birealnet18": 16}[name]
    assert info.binary_inputs == tuple(sorted(binary))
    model = _meta(name)
    assert _binarized_input_convs(model) == set(info.bin_layers) == set(model.binary_inputs)
    convs = _convs(model)
    assert 1 not in info.bin_layers and convs[0].kernel_size[0] in (3, 7)  # the fp stem
    assert {i for i, c in enumerate(convs, 1) if c.kernel_size == (1, 1)} == downsample
    assert not downsample & set(info.bin_layers)
    assert all(convs[i - 1].kernel_size == (3, 3) for i in info.bin_layers)
    assert isinstance(model.fc, nn.Linear)  # the classifier is not a conv, so never numbered
    assert models.model_info(fp_name).bin_layers == info.bin_layers


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_fp_twin_has_no_sign_and_the_same_parameters(name):
    fp_name = FAMILIES[name][0]
    binary, fp = _meta(name), _meta(fp_name)
    assert binarize.input_binarizers(fp) == [] and models.model_info(fp_name).binary_inputs == ()
    assert not any(isinstance(m, binarize.ActivationBinarizer) for m in fp.modules())
    assert [(n, p.shape) for n, p in binary.named_parameters()] == [(n, p.shape) for n, p in fp.named_parameters()]
    assert [(n, b.shape) for n, b in binary.named_buffers()] == [(n, b.shape) for n, b in fp.named_buffers()]


def test_activation_binarizers_are_sdbnns():
    for name in ("resnet20_1w1a", "vgg_small_1w1a", "resnet18_1w1a"):
        assert {type(row[-1]) for row in binarize.input_binarizers(_meta(name))} == {binarize.BinActive}
    assert {type(row[-1]) for row in binarize.input_binarizers(_meta("birealnet18"))} == {binarize.ApproxSign}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parameter_count_matches_formula(name):
    formula = PARAMS[models.model_info(name).family]
    for channels in (3, 1):
        assert sum(p.numel() for p in _meta(name, C, channels).parameters()) == formula(channels, C)


def test_parameter_count_literals():
    """The formulas worked out at 10 classes and 3 channels; ResNet-18's is kuangliu's CIFAR ResNet-18
    (11,173,962) plus SD-BNN's BatchNorm1d(512)."""
    expected = {"resnet20": 269_850, "vgg_small": 4_660_106, "resnet18_cifar": 11_174_986, "birealnet18": 11_185_482}
    assert {family: PARAMS[family](3, 10) for family in expected} == expected
    for name in ALL_NAMES:
        assert sum(p.numel() for p in _meta(name, 10, 3).parameters()) == expected[models.model_info(name).family]


# ---------------------------------------------------------------- bin_inputs override

def test_bin_inputs_override():
    assert _binarized_input_convs(_meta("resnet20_fp", bin_inputs=[2, 5])) == {2, 5}
    assert _binarized_input_convs(_meta("resnet20_1w1a", bin_inputs=[])) == set()
    assert _binarized_input_convs(_meta("resnet18_cifar_fp", bin_inputs=[8])) == {8}  # a downsample may take one
    rows = binarize.input_binarizers(_meta("birealnet18_fp", bin_inputs=[2, 7]))
    assert [(i, type(b)) for i, *_, b in rows] == [(2, binarize.ApproxSign), (7, binarize.ApproxSign)]
    for name in ALL_NAMES:
        with pytest.raises(ValueError, match="cannot binarize the input of convs \\[1\\]"):
            _meta(name, bin_inputs=[1])


# ---------------------------------------------------------------- option-A shortcut

def test_option_a_shortcut_subsamples_and_pads_zero_channels():
    x = torch.arange(2 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 4, 5, 5)
    out = ShortcutA(2, 2)(x)
    assert out.shape == (2, 8, 3, 3)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()
    assert torch.equal(out[0, 2, 0], torch.tensor([0.0, 2.0, 4.0]))  # rows and columns 0, 2, 4 of channel 0
    assert torch.equal(out[1, 5, 2], x[1, 3, 4, [0, 2, 4]])
    assert torch.equal(out[:, 2:6], x[:, :, [0, 2, 4]][:, :, :, [0, 2, 4]])
    model = _meta("resnet20_1w1a")
    assert [(s.stride, s.pad) for s in model.modules() if isinstance(s, ShortcutA)] == [(2, 8), (2, 16)]
    assert sum(p.numel() for s in model.modules() if isinstance(s, ShortcutA) for p in s.parameters()) == 0


# ---------------------------------------------------------------- the spec's block formulas

def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def _unit(unit, x, binary, stride=1, padding=1):
    """sign (if binary) -> conv -> BN, written with functionals from the unit's parameters."""
    y = F.conv2d(torch.sign(x) if binary else x, unit.conv.weight, stride=stride, padding=padding)
    return F.batch_norm(y, unit.bn.running_mean, unit.bn.running_var, unit.bn.weight, unit.bn.bias, eps=unit.bn.eps)


@torch.no_grad()
def test_blocks_follow_the_spec_formulas():
    torch.manual_seed(0)
    block = _randomize_bn(models.build_model("resnet20_1w1a", C)).layer2[0]
    x = torch.randn(2, 16, 8, 8)
    h = F.hardtanh(_unit(block.conv1, x, True, 2) + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    torch.testing.assert_close(block(x), F.hardtanh(_unit(block.conv2, h, True) + h))

    block = _randomize_bn(models.build_model("resnet18_1w1a", C)).layer2[0]
    x = torch.randn(2, 64, 8, 8)
    h = F.hardtanh(_unit(block.conv1, x, True, 2))
    expected = F.hardtanh(_unit(block.conv2, h, True) + _unit(block.shortcut, x, False, 2, 0))
    torch.testing.assert_close(block(x), expected)

    block = _randomize_bn(models.build_model("birealnet18", C)).layer2[0]
    x = torch.randn(2, 64, 8, 8)
    shortcut = _unit(block.shortcut.proj, F.avg_pool2d(x, 2), False, 1, 0)
    torch.testing.assert_close(block(x), F.prelu(_unit(block.conv, x, True, 2) + shortcut, block.prelu.weight))

    model = _randomize_bn(models.build_model("vgg_small_1w1a", C))
    assert [n.rstrip("0123456789") for n, _ in model.features.named_children()] == \
        ["conv", "bn", "act"] + ["conv", "pool", "bn", "act", "conv", "bn", "act"] * 2 + ["conv", "pool", "bn", "act"]
    x = torch.randn(2, 128, 8, 8)
    f = model.features
    y = F.conv2d(torch.sign(x), f.conv2.conv.weight, padding=1)
    y = F.batch_norm(F.max_pool2d(y, 2), f.bn2.running_mean, f.bn2.running_var, f.bn2.weight, f.bn2.bias)
    torch.testing.assert_close(f.act2(f.bn2(f.pool2(f.conv2(x)))), F.hardtanh(y))


# ---------------------------------------------------------------- input sizes

@pytest.mark.parametrize("name", BINARY_NAMES)
def test_input_sizes(name):
    info = models.model_info(name)
    assert (info.default_inpsize, info.min_inpsize, info.max_inpsize) == SIZES[info.family]
    assert info.min_inpsize <= 32 <= info.max_inpsize  # every CIFAR model also trains on 32x32 digits
    model = _meta(name)
    for size in (info.min_inpsize, info.max_inpsize):
        assert model(torch.empty(2, 3, size, size, device="meta")).shape == (2, C)
    with pytest.raises(ValueError, match=f"accepts input sizes {info.min_inpsize}..{info.max_inpsize}"):
        model(torch.empty(2, 3, info.max_inpsize + 1, info.max_inpsize + 1, device="meta"))
    if info.family in ("vgg_small", "resnet18_cifar"):  # the bounded heads: just outside fails on the bare layers
        model.family = dataclasses.replace(model.family, input_sizes=(1, 10 ** 4))
        for size in (info.min_inpsize - 1, info.max_inpsize + 1):
            with pytest.raises(RuntimeError):
                model(torch.empty(2, 3, size, size, device="meta"))


@pytest.mark.parametrize("size", [1, 5, 33, 45])
def test_birealnet_runs_on_odd_and_tiny_maps(size):
    """The ceil-mode shortcut pool matches the strided conv on odd maps (SD-BNN's floor pool fails there)."""
    model = models.build_model("birealnet18", C).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, C) and torch.isfinite(out).all()


def test_resnet20_runs_at_its_minimum_size():
    model = models.build_model("resnet20_1w1a", C).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 1, 1)).shape == (2, C)


# ---------------------------------------------------------------- real forward / backward

@pytest.fixture(scope="module", params=ALL_NAMES)
def trace(request):
    """One training-mode forward and backward at 32x32, batch 2, recording per conv whether its input held
    only {-1, 0, 1} and every parameter's gradient."""
    name = request.param
    torch.manual_seed(0)
    model = models.build_model(name, C).train()
    sign_input = {}
    hooks = [c.register_forward_pre_hook(
        lambda m, args, i=i: sign_input.__setitem__(i, bool(((args[0] == 0) | (args[0].abs() == 1)).all())))
        for i, c in enumerate(_convs(model), start=1)]
    try:
        out = model(torch.randn(2, 3, SIZE, SIZE))
        F.nll_loss(out, torch.tensor([0, 1])).backward()
    finally:
        for h in hooks:
            h.remove()
    return dict(name=name, model=model, out=out.detach(), sign_input=sign_input,
                grads={n: p.grad for n, p in model.named_parameters()})


def test_forward_gives_log_probabilities(trace):
    out = trace["out"]
    assert out.shape == (2, C) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_backward_reaches_every_parameter(trace):
    for pname, grad in trace["grads"].items():
        assert grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(grad).all() and grad.any(), pname


def test_binarized_inputs_only_at_declared_convs(trace):
    name, seen = trace["name"], trace["sign_input"]
    assert sorted(seen) == list(range(1, models.model_info(name).num_convs + 1))
    declared = FAMILIES[name][2] if name in FAMILIES else set()
    assert {i for i, is_sign in seen.items() if is_sign} == declared == set(trace["model"].binary_inputs)


def test_forward_at_default_size_for_birealnet():
    model = models.build_model("birealnet18", C).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, C) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", BINARY_NAMES)
def test_dab_weights_and_one_sgd_step(name):
    torch.manual_seed(0)
    model = models.build_model(name, C).train()
    layers = models.model_info(name).bin_layers
    assert binarize.binarize_weights(model, layers=layers, method="dab") == list(layers)
    convs = _convs(model)
    assert [i for i, c in enumerate(convs, 1) if parametrize.is_parametrized(c, "weight")] == list(layers)
    latents = {i: convs[i - 1].parametrizations.weight.original for i in layers}
    before = {i: w.detach().clone() for i, w in latents.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = F.nll_loss(model(torch.randn(2, 3, SIZE, SIZE)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[i], latents[i].detach()) for i in layers)


# ---------------------------------------------------------------- init

def _std(t):
    return t.detach().float().std().item()


def test_init_resnets_kaiming_fan_in():
    for name in ("resnet20_1w1a", "resnet18_1w1a"):
        torch.manual_seed(0)
        model = models.build_model(name, C)
        for c in _convs(model):
            fan_in = c.in_channels * c.kernel_size[0] * c.kernel_size[1]
            if c.weight.numel() >= 2000:
                assert _std(c.weight) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), name
        assert _std(model.fc.weight) == pytest.approx(math.sqrt(2 / model.fc.in_features), rel=0.3)
        bound = 1 / math.sqrt(model.fc.in_features)  # torch's default bias, which SD-BNN keeps
        assert model.fc.bias.abs().max() <= bound and model.fc.bias.any()
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert (m.weight == 1).all() and (m.bias == 0).all()


def test_init_vgg_small():
    torch.manual_seed(0)
    model = models.build_model("vgg_small_1w1a", C)
    for c in _convs(model):
        assert _std(c.weight) == pytest.approx(math.sqrt(2 / (9 * c.out_channels)), rel=0.1)
    assert _std(model.fc.weight) == pytest.approx(0.01, rel=0.05) and (model.fc.bias == 0).all()
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_init_birealnet():
    torch.manual_seed(0)
    model = models.build_model("birealnet18", C)
    for c in _convs(model):
        fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
        assert _std(c.weight) == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 16 and all((p.weight == 0.25).all() for p in prelus)
    assert [p.num_parameters for p in prelus] == [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4  # one per channel
    assert model.fc.bias.abs().max() <= 1 / math.sqrt(512)


def test_asd_swapped_in_gets_sdbnn_settings():
    for name, reduction, std in [("resnet20_1w1a", 16, None), ("vgg_small_1w1a", 16, 0.01),
                                 ("resnet18_1w1a", 16, None), ("birealnet18", 8, None)]:
        torch.manual_seed(0)
        model = models.build_model(name, C)
        assert binarize.binarize_inputs(model, "asd") == sorted(FAMILIES[name][2])
        asds = [row[-1] for row in binarize.input_binarizers(model)]
        assert all(isinstance(a, binarize.ASD) and a.reduction == reduction for a in asds)
        if std is not None:
            assert _std(asds[-1].fc1.weight) == pytest.approx(std, rel=0.1)


# ---------------------------------------------------------------- python -m models

def _table_rows(out):
    return [(int(m.group(1)), m.group(2) == "*", m.group(3))
            for m in re.finditer(r"^\s*(\d+)([* ]) (\S+)", out, flags=re.M)]


@pytest.mark.parametrize("name", ["resnet20_1w1a", "vgg_small_1w1a", "resnet18_1w1a", "birealnet18"])
def test_cli_table_marks_the_binary_convs(name, capsys):
    assert cli_main([name, "--nClasses", str(C)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    _, num_convs, binary, _ = FAMILIES[name]
    assert [index for index, *_ in rows] == list(range(1, num_convs + 1))
    assert {index for index, starred, _ in rows if starred} == binary


def test_cli_table_resnet20(capsys):
    """ResNet-20 is 19 convs and one Linear: the table lists the 19, the stem unmarked."""
    assert cli_main(["resnet20_1w1a"]) == 0
    out = capsys.readouterr().out
    assert "19 convs" in out and "accepts 1..4095" in out
    rows = _table_rows(out)
    assert len(rows) == 19 and rows[0] == (1, False, "conv1.conv")
    assert all(starred for _, starred, _ in rows[1:])
