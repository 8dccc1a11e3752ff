"""Tests for models/: every original CLI name builds, trains, and means the same layers for
--binStart/--binEnd.

The expected conv tables, bias placement, binarized-input indices, parameter counts and input ranges
below are literals transcribed from spec/original-models.md (sections 1.1-1.10), not generated from
the code under test. Tests that run real forwards share one model per name (a module-scoped fixture,
so pytest groups the tests by name); shape-only tests run on the "meta" device, which costs nothing.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import models
from binarize import binarize_weights
from models.__main__ import main as cli_main

C = 5  # classes used by the tests that run real forwards

ORIGINAL_NAMES = [
    "alexnet", "alexnetfbin", "alexnethybrid", "alexnethybridv2", "alexnetwbin",
    "googlenet", "googlenetfbin", "googlenetwbin", "mobilenet", "nin",
    "resnet18", "resnetfbin18", "resnethybrid18", "resnethybridv218", "resnethybridv318", "resnetwbin18",
    "sketchanet", "sketchanetfbin", "sketchanethybrid", "sketchanethybridv2", "sketchanetwbin",
    "squeezenet", "squeezenetfbin", "squeezenethybrid", "squeezenethybridv2", "squeezenethybridv3",
    "squeezenetwbin", "vgg16_bncifar", "densenet", "bincifar", "bincifarfbin",
]

# Conv tables at the default input size and channels: (in, out, kernel, stride, padding, groups, out side).
SKETCHANET = [
    (1, 64, 15, 3, 0, 1, 71), (64, 128, 5, 1, 0, 1, 31), (128, 256, 3, 1, 1, 1, 15), (256, 256, 3, 1, 1, 1, 15),
    (256, 256, 3, 1, 1, 1, 15), (256, 512, 7, 1, 0, 1, 1), (512, 512, 1, 1, 0, 1, 1), (512, C, 1, 1, 0, 1, 1),
]
ALEXNET = [
    (3, 96, 11, 4, 2, 1, 55), (96, 256, 5, 1, 2, 1, 27), (256, 384, 3, 1, 1, 1, 13), (384, 384, 3, 1, 1, 1, 13),
    (384, 256, 3, 1, 1, 1, 13), (256, 4096, 6, 1, 0, 1, 1), (4096, 4096, 1, 1, 0, 1, 1), (4096, C, 1, 1, 0, 1, 1),
]
RESNET = [
    (1, 64, 7, 2, 3, 1, 112),
    (64, 64, 3, 1, 1, 1, 56), (64, 64, 3, 1, 1, 1, 56), (64, 64, 3, 1, 1, 1, 56), (64, 64, 3, 1, 1, 1, 56),
    (64, 128, 3, 2, 1, 1, 28), (128, 128, 3, 1, 1, 1, 28), (64, 128, 1, 2, 0, 1, 28),
    (128, 128, 3, 1, 1, 1, 28), (128, 128, 3, 1, 1, 1, 28),
    (128, 256, 3, 2, 1, 1, 14), (256, 256, 3, 1, 1, 1, 14), (128, 256, 1, 2, 0, 1, 14),
    (256, 256, 3, 1, 1, 1, 14), (256, 256, 3, 1, 1, 1, 14),
    (256, 512, 3, 2, 1, 1, 7), (512, 512, 3, 1, 1, 1, 7), (256, 512, 1, 2, 0, 1, 7),
    (512, 512, 3, 1, 1, 1, 7), (512, 512, 3, 1, 1, 1, 7),
    (512, C, 1, 1, 0, 1, 1),
]
# GoogLeNet: the spec's Inception table (in, n1x1, n3x3 reduce, n3x3, n5x5 reduce, n5x5, pool proj, side),
# each row giving six convs: b1 1x1, b2 1x1 and 3x3, b3 1x1 and 5x5, b4 1x1.
INCEPTIONS = [
    (192, 64, 96, 128, 16, 32, 32, 28), (256, 128, 128, 192, 32, 96, 64, 28),  # a3, b3
    (480, 192, 96, 204, 16, 48, 64, 13), (508, 160, 112, 224, 24, 64, 64, 13),  # a4, b4
    (512, 128, 128, 256, 24, 64, 64, 13), (512, 112, 144, 288, 32, 64, 64, 13),  # c4, d4
    (528, 256, 160, 320, 32, 128, 128, 13),  # e4
    (832, 256, 160, 320, 48, 128, 128, 7), (832, 384, 192, 384, 48, 128, 128, 7),  # a5, b5
]
GOOGLENET = [(1, 64, 7, 2, 3, 1, 112), (64, 64, 1, 1, 0, 1, 56), (64, 192, 3, 1, 1, 1, 56)] + [
    row for cin, n1, n3r, n3, n5r, n5, pool, hw in INCEPTIONS
    for row in [(cin, n1, 1, 1, 0, 1, hw), (cin, n3r, 1, 1, 0, 1, hw), (n3r, n3, 3, 1, 1, 1, hw),
                (cin, n5r, 1, 1, 0, 1, hw), (n5r, n5, 5, 1, 2, 1, hw), (cin, pool, 1, 1, 0, 1, hw)]
]
SQUEEZENET = [
    (1, 96, 7, 2, 0, 1, 109),
    (96, 16, 1, 1, 0, 1, 54), (16, 64, 1, 1, 0, 1, 54), (16, 64, 3, 1, 1, 1, 54),  # fire2
    (128, 16, 1, 1, 0, 1, 54), (16, 64, 1, 1, 0, 1, 54), (16, 64, 3, 1, 1, 1, 54),  # fire3
    (128, 32, 1, 1, 0, 1, 54), (32, 128, 1, 1, 0, 1, 54), (32, 128, 3, 1, 1, 1, 54),  # fire4
    (256, 32, 1, 1, 0, 1, 27), (32, 128, 1, 1, 0, 1, 27), (32, 128, 3, 1, 1, 1, 27),  # fire5
    (256, 48, 1, 1, 0, 1, 27), (48, 192, 1, 1, 0, 1, 27), (48, 192, 3, 1, 1, 1, 27),  # fire6
    (384, 48, 1, 1, 0, 1, 27), (48, 192, 1, 1, 0, 1, 27), (48, 192, 3, 1, 1, 1, 27),  # fire7
    (384, 64, 1, 1, 0, 1, 27), (64, 256, 1, 1, 0, 1, 27), (64, 256, 3, 1, 1, 1, 27),  # fire8
    (512, 64, 1, 1, 0, 1, 13), (64, 256, 1, 1, 0, 1, 13), (64, 256, 3, 1, 1, 1, 13),  # fire9
    (512, C, 1, 1, 0, 1, 13),
]
# MobileNet: the spec's block list (in, out, depthwise stride, side), each giving a depthwise 3x3 and a 1x1.
MOBILENET_BLOCKS = [(32, 64, 1, 112), (64, 128, 2, 56), (128, 128, 1, 56), (128, 256, 2, 28), (256, 256, 1, 28),
                    (256, 512, 2, 14)] + [(512, 512, 1, 14)] * 5 + [(512, 1024, 2, 7), (1024, 1024, 1, 7)]
MOBILENET = [(1, 32, 3, 2, 1, 1, 112)] + [
    row for cin, cout, stride, hw in MOBILENET_BLOCKS
    for row in [(cin, cin, 3, stride, 1, cin, hw), (cin, cout, 1, 1, 0, 1, hw)]
]
NIN = [
    (3, 192, 5, 1, 2, 1, 32), (192, 160, 1, 1, 0, 1, 32), (160, 96, 1, 1, 0, 1, 32),
    (96, 192, 5, 1, 2, 1, 16), (192, 192, 1, 1, 0, 1, 16), (192, 192, 1, 1, 0, 1, 16),
    (192, 192, 3, 1, 1, 1, 8), (192, 192, 1, 1, 0, 1, 8), (192, C, 1, 1, 0, 1, 8),
]
VGG = [
    (3, 64, 3, 1, 1, 1, 32), (64, 64, 3, 1, 1, 1, 32), (64, 128, 3, 1, 1, 1, 16), (128, 128, 3, 1, 1, 1, 16),
    (128, 256, 3, 1, 1, 1, 8), (256, 256, 3, 1, 1, 1, 8), (256, 256, 3, 1, 1, 1, 8),
    (256, 512, 3, 1, 1, 1, 4), (512, 512, 3, 1, 1, 1, 4), (512, 512, 3, 1, 1, 1, 4),
    (512, 512, 3, 1, 1, 1, 2), (512, 512, 3, 1, 1, 1, 2), (512, 512, 3, 1, 1, 1, 2),
]
DENSENET = [
    (3, 24, 3, 1, 1, 1, 32),
    (24, 48, 1, 1, 0, 1, 32), (48, 12, 3, 1, 1, 1, 32), (36, 48, 1, 1, 0, 1, 32), (48, 12, 3, 1, 1, 1, 32),
    (48, 48, 1, 1, 0, 1, 32), (48, 12, 3, 1, 1, 1, 32), (60, 48, 1, 1, 0, 1, 32), (48, 12, 3, 1, 1, 1, 32),
    (72, 36, 1, 1, 0, 1, 32),  # transition 1 (its pool halves the map afterwards)
    (36, 48, 1, 1, 0, 1, 16), (48, 12, 3, 1, 1, 1, 16), (48, 48, 1, 1, 0, 1, 16), (48, 12, 3, 1, 1, 1, 16),
    (60, 48, 1, 1, 0, 1, 16), (48, 12, 3, 1, 1, 1, 16), (72, 48, 1, 1, 0, 1, 16), (48, 12, 3, 1, 1, 1, 16),
    (84, 42, 1, 1, 0, 1, 16),  # transition 2
    (42, 48, 1, 1, 0, 1, 8), (48, 12, 3, 1, 1, 1, 8), (54, 48, 1, 1, 0, 1, 8), (48, 12, 3, 1, 1, 1, 8),
    (66, 48, 1, 1, 0, 1, 8), (48, 12, 3, 1, 1, 1, 8), (78, 48, 1, 1, 0, 1, 8), (48, 12, 3, 1, 1, 1, 8),
]
BINCIFAR = [
    (3, 128, 3, 1, 1, 1, 32), (128, 128, 3, 1, 1, 1, 32), (128, 256, 3, 1, 1, 1, 16), (256, 256, 3, 1, 1, 1, 16),
    (256, 512, 3, 1, 1, 1, 8), (512, 512, 3, 1, 1, 1, 8), (512, 1024, 4, 1, 0, 1, 1), (1024, C, 1, 1, 0, 1, 1),
]


def _span(a, b):
    return tuple(range(a, b + 1))


# name -> (conv table, convs with a bias, convs with sign-binarized input, params at the spec's class count)
EXPECTED = {
    "sketchanet": (SKETCHANET, _span(1, 8), (), 8_512_634),
    "sketchanetwbin": (SKETCHANET, (1, 8), (), 8_510_714),
    "sketchanetfbin": (SKETCHANET, (1, 8), _span(2, 7), 8_509_818),
    "sketchanethybrid": (SKETCHANET, (1, 8), _span(2, 5), 8_510_330),
    "sketchanethybridv2": (SKETCHANET, (1, 8), _span(2, 6), 8_509_818),
    "alexnet": (ALEXNET, _span(1, 8), (), 59_324_730),
    "alexnetwbin": (ALEXNET, (1, 8), (), 59_315_258),
    "alexnetfbin": (ALEXNET, (1, 8), _span(2, 7), 59_307_258),
    "alexnethybrid": (ALEXNET, (1, 8), _span(2, 5), 59_314_938),
    "alexnethybridv2": (ALEXNET, (1, 8), _span(2, 6), 59_307_258),
    # resnet18 is new (the original's crashed): resnetwbin18 plus a classifier bias of 250.
    "resnet18": (RESNET, (21,), (), 11_298_240 + 250),
    "resnetwbin18": (RESNET, (), (), 11_298_240),
    "resnetfbin18": (RESNET, (), _span(2, 20), 11_296_448),
    "resnethybrid18": (RESNET, (), _span(2, 18), 11_296_448),
    "resnethybridv218": (RESNET, (), _span(2, 13), 11_297_472),
    "resnethybridv318": (RESNET, (), (2, 4, 5, 6, 7, 8, 11, 12, 13), 11_297_472),
    "googlenet": (GOOGLENET, _span(1, 57), (), 6_297_230),
    "googlenetwbin": (GOOGLENET, (1,), (), 6_290_002),
    "googlenetfbin": (GOOGLENET, (1,), _span(2, 57), 6_316_506),
    "squeezenet": (SQUEEZENET, _span(1, 26), (), 860_218),
    "squeezenetwbin": (SQUEEZENET, (1, 26), (), 857_338),
    "squeezenetfbin": (SQUEEZENET, (1, 26), _span(2, 25), 857_146),
    "squeezenethybrid": (SQUEEZENET, (1, 2, 3, 4, 26), _span(5, 25), 857_322),
    "squeezenethybridv2": (SQUEEZENET, (1, 2, 3, 4, 26), _span(5, 22), 857_194),
    "squeezenethybridv3": (SQUEEZENET, (1, 2, 3, 4, 26), (6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22), 854_602),
    "mobilenet": (MOBILENET, (), (), 3_462_650),
    "nin": (NIN, _span(1, 9), _span(2, 8), 969_418),
    "vgg16_bncifar": (VGG, _span(1, 13), (), 14_728_266),
    "densenet": (DENSENET, (), (), 102_730),
    "bincifar": (BINCIFAR, _span(1, 8), (), 12_982_154),
    "bincifarfbin": (BINCIFAR, _span(1, 8), _span(2, 7), 12_980_106),
}

# family -> (default size, accepted min..max, default channels, recommended bin range)
FAMILIES = {
    "sketchanet": (225, (225, 248), 1, (2, 7)),  # spec: 225-248 valid, 224 crashes
    "alexnet": (224, (223, 254), 3, (2, 8)),  # spec: 223-254 give 1x1 logits
    "resnet": (224, (193, 416), 1, (2, 100)),
    "googlenet": (224, (209, 240), 1, (2, 100)),  # spec: valid about 209-240
    "squeezenet": (224, (213, 420), 1, (2, 100)),
    "mobilenet": (224, (193, 416), 1, (2, 27)),
    "nin": (32, (29, 32), 3, (2, 8)),
    "vgg": (32, (32, 63), 3, (2, 13)),
    "densenet": (32, (32, 63), 3, (2, 7)),
    "bincifar": (32, (32, 39), 3, (2, 7)),
}


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _meta_model(name, num_classes=C, in_channels=None):
    with torch.device("meta"):
        return models.build_model(name, num_classes, in_channels=in_channels, init=False)


def _batch(name, size=None, channels=None, batch=2):
    info = models.model_info(name)
    size = size or info.default_inpsize
    return torch.randn(batch, channels or info.default_in_channels, size, size)


@pytest.fixture(scope="module", params=ORIGINAL_NAMES)
def name(request):
    """The original's names: their layer tables come from the spec (other families test their own)."""
    return request.param


@pytest.fixture(scope="module")
def model(name):
    """One initialised model per name, shared by the tests that do real forwards (grouped by name)."""
    torch.manual_seed(0)
    return models.build_model(name, C)


# ---------------------------------------------------------------- registry and static facts

def test_every_original_name_is_registered():
    assert set(ORIGINAL_NAMES) <= set(models.list_models())
    assert set(EXPECTED) == set(ORIGINAL_NAMES)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*sketchanetfbin"):
        models.build_model("resnet50", 10)
    with pytest.raises(ValueError, match="unknown model"):
        models.model_info("resnet50")


def test_model_info_matches_family_facts(name):
    info = models.model_info(name)
    default, (lo, hi), channels, bin_range = FAMILIES[info.family]
    table, _, binary, _ = EXPECTED[name]
    assert dataclasses.is_dataclass(info) and info.name == name
    assert (info.default_inpsize, info.min_inpsize, info.max_inpsize) == (default, lo, hi)
    assert info.default_in_channels == channels and info.bin_range == bin_range
    assert info.num_convs == len(table)
    assert info.binary_inputs == binary
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_convs = 0


def test_conv_table_matches_spec(name):
    table, biased, binary, _ = EXPECTED[name]
    info = models.model_info(name)
    model = _meta_model(name)
    rows = models.conv_table(model, info.default_inpsize, info.default_in_channels)
    got = [(r["in_channels"], r["out_channels"], r["kernel"][0], r["stride"][0], r["padding"][0], r["groups"],
            r["out_hw"][0]) for r in rows]
    assert got == table
    assert [r["index"] for r in rows] == list(range(1, len(table) + 1))
    assert all(r["out_hw"][0] == r["out_hw"][1] for r in rows)
    assert tuple(r["index"] for r in rows if r["bias"]) == biased
    assert tuple(r["index"] for r in rows if r["binary_input"]) == binary
    assert rows[0]["input_hw"] == (info.default_inpsize, info.default_inpsize)


def test_parameter_count_matches_spec(name):
    """The spec's counts check the BN sizes (BN(in) before a binarized-input conv, BN(out) after a
    full-precision one), the biases and the dropped/kept modules of every variant."""
    *_, params = EXPECTED[name]
    num_classes = 10 if models.model_info(name).default_inpsize == 32 else 250
    assert sum(p.numel() for p in _meta_model(name, num_classes).parameters()) == params


def test_resnet18_is_the_fp_member_of_the_family():
    fp, wbin = _meta_model("resnet18"), _meta_model("resnetwbin18")
    assert fp.binary_inputs == () and len(_convs(fp)) == 21
    assert [c.weight.shape for c in _convs(fp)] == [c.weight.shape for c in _convs(wbin)]
    assert not any(m.__class__.__name__ == "BinActive" for m in fp.modules())


# ---------------------------------------------------------------- input sizes and channels

@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_input_size_range_is_what_the_layers_accept(family_name):
    """On the meta device: the range ends work, and just outside them the bare layers fail or give no 1x1 head."""
    name = next(n for n in models.list_models() if models.model_info(n).family == family_name)
    _, (lo, hi), channels, _ = FAMILIES[family_name]
    model = _meta_model(name)
    for size in (lo, hi):
        assert model(torch.empty(2, channels, size, size, device="meta")).shape == (2, C)
    model.family = dataclasses.replace(model.family, input_sizes=(1, 10**4))  # lift the check
    for size in (lo - 1, hi + 1):
        try:
            shape = model(torch.empty(2, channels, size, size, device="meta")).shape
        except RuntimeError:
            continue
        assert shape != (2, C), f"{name} works at {size}, outside {lo}..{hi}"


def test_bad_input_size_raises_value_error(name):
    _, (lo, hi), channels, _ = FAMILIES[models.model_info(name).family]
    for size in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match=rf"^{name} accepts input sizes {lo}\.\.{hi}, got {size}$"):
            models.check_input_size(name, size)
        with pytest.raises(ValueError, match=rf"accepts input sizes {lo}\.\.{hi}, got {size}x{size}"):
            _meta_model(name)(torch.empty(1, channels, size, size, device="meta"))
    models.check_input_size(name, lo)
    models.check_input_size(name, hi)


def test_sketchanet_size_message():
    with pytest.raises(ValueError, match=r"^sketchanet accepts input sizes 225\.\.248, got 224$"):
        models.check_input_size("sketchanet", 224)


@pytest.mark.parametrize("any_name", models.list_models())
def test_one_and_three_input_channels(any_name):
    """Shapes on the meta device for every registered name: conv 1 adapts, the head still gives [B, C]."""
    name = any_name
    info = models.model_info(name)
    for channels in (1, 3):
        net = _meta_model(name, in_channels=channels)
        assert _convs(net)[0].in_channels == channels
        x = torch.empty(2, channels, info.min_inpsize, info.min_inpsize, device="meta")
        assert net(x).shape == (2, C)
    with pytest.raises(RuntimeError):  # a model built for one count rejects the other
        _meta_model(name, in_channels=1)(torch.empty(1, 3, info.min_inpsize, info.min_inpsize, device="meta"))


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_non_default_channel_count_runs(family_name):
    """A real forward with the other channel count, one variant per family (conv 1 is built alike in all)."""
    name = next(n for n in models.list_models() if models.model_info(n).family == family_name)
    info = models.model_info(name)
    other = 3 if info.default_in_channels == 1 else 1
    net = models.build_model(name, C, in_channels=other).eval()
    with torch.no_grad():
        out = net(_batch(name, info.min_inpsize, other))
    assert out.shape == (2, C) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name_", ["densenet", "nin", "vgg16_bncifar"])
@pytest.mark.parametrize("num_classes", [7, 100])
def test_num_classes_honoured_by_cifar_models(name_, num_classes):
    """The original hard-coded 10 classes for these three."""
    net = models.build_model(name_, num_classes).eval()
    with torch.no_grad():
        out = net(_batch(name_))
    assert out.shape == (2, num_classes)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------- one real training step per name

@pytest.fixture(scope="module")
def trace(name, model):
    """One SGD step as main.py runs it: weight binarization (DAB) on the first three convs of the
    recommended range, training mode, batch 2 at the default input size. Records the output, every
    parameter's gradient, per conv whether its input held only {-1, 0, 1}, and the binarized latent
    weights before and after the step. Dropout is switched off so it cannot rescale a sign output.
    (Three convs, not the whole range: DAB on AlexNet's 55M-weight convs 6-7 alone costs seconds.)"""
    start = models.model_info(name).bin_range[0]
    binarized = binarize_weights(model, start, start + 2)
    convs = _convs(model)
    sign_input = {}
    hooks = [conv.register_forward_pre_hook(
        lambda m, args, i=i: sign_input.__setitem__(i, bool(((args[0] == 0) | (args[0].abs() == 1)).all())))
        for i, conv in enumerate(convs, start=1)]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        out = model(_batch(name))
        F.nll_loss(out, torch.tensor([0, 1])).backward()
    finally:
        for h in hooks:
            h.remove()
    latents = {i: convs[i - 1].parametrizations.weight.original for i in binarized}
    before = {i: w.detach().clone() for i, w in latents.items()}
    grads = {pname: p.grad for pname, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad(set_to_none=True)
    return dict(out=out.detach(), grads=grads, sign_input=sign_input, binarized=binarized,
                latent_before=before, latent_after={i: w.detach().clone() for i, w in latents.items()})


def test_forward_gives_log_probabilities(trace):
    out = trace["out"]
    assert out.shape == (2, C)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_backward_reaches_every_parameter(trace):
    for pname, grad in trace["grads"].items():
        assert grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(grad.sum()) and grad.any(), pname


def test_binary_inputs_only_at_declared_convs(name, model, trace):
    """Behavioural: a conv's input holds only {-1, 0, 1} exactly when its index is declared binarized."""
    seen = trace["sign_input"]
    assert sorted(seen) == list(range(1, models.model_info(name).num_convs + 1))
    assert tuple(sorted(i for i, is_sign in seen.items() if is_sign)) == EXPECTED[name][2] == model.binary_inputs


def test_weight_binarization_attaches_and_trains(name, trace):
    """The whole recommended range attaches (checked on a meta copy); the real step moved the latent weights."""
    info = models.model_info(name)
    start, end = info.bin_range
    expected = list(range(start, min(end, info.num_convs) + 1))
    meta = _meta_model(name)
    assert binarize_weights(meta, start, end) == expected
    assert [i for i, c in enumerate(_convs(meta), 1) if parametrize.is_parametrized(c, "weight")] == expected
    assert trace["binarized"] == expected[:3]
    for i in trace["binarized"]:
        assert trace["grads"][_param_name(name, i)].abs().sum() > 0
        assert not torch.equal(trace["latent_before"][i], trace["latent_after"][i]), f"conv {i} latent unchanged"


def _param_name(name, index):
    """State name of the latent weight of conv ``index`` once binarized."""
    conv_names = [n for n, m in _meta_model(name).named_modules() if isinstance(m, nn.Conv2d)]
    return f"{conv_names[index - 1]}.parametrizations.weight.original"


def test_resnet_hybrid_blocks_feed_from_their_predecessor():
    """Fix: the original's resnethybrid* fed layer1's second block the stem output."""
    net = models.build_model("resnethybrid18", C).eval()
    captured = {}
    net.layer1[0].register_forward_hook(lambda m, a, out: captured.__setitem__("block1_out", out))
    net.layer1[1].register_forward_pre_hook(lambda m, a: captured.__setitem__("block2_in", a[0]))
    with torch.no_grad():
        net(_batch("resnethybrid18", 193))
    assert captured["block2_in"] is captured["block1_out"]


def test_init_is_the_originals():
    net = models.build_model("googlenet", C)
    conv = _convs(net)[5]  # a3 b2 3x3: 96 -> 128
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert all(c.bias is None or not c.bias.any() for c in _convs(net))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.weight.eq(1).all() and not bn.bias.any() for bn in bns)
    assert not net.linear.bias.any()


# ---------------------------------------------------------------- CLI

def test_cli_prints_the_conv_table(capsys):
    assert cli_main(["sketchanethybrid", "--nClasses", "250"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "accepts 225..248" in lines[0] and "binarized by default: convs 2-7 (*)" in lines[0]
    rows = lines[2:]
    assert len(rows) == 8
    assert rows[1].split()[:2] == ["2*", "features.conv2.conv"] and " yes " in rows[1]
    assert rows[7].split()[2] == "512->250" and rows[7].split()[-1] == "1x1"


def test_cli_other_size_and_channels(capsys):
    assert cli_main(["resnet18", "--inpsize", "256", "--channels", "3", "--nClasses", "10"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 21 and "3->64" in rows[0] and rows[0].split()[-2:] == ["256x256", "128x128"]


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown model 'nope'"),
    (["sketchanet", "--inpsize", "224"], "sketchanet accepts input sizes 225..248, got 224"),
    (["nin", "--channels", "0"], "must be >= 1"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


def test_cli_exit_status_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "models", "sketchanet", "--inpsize", "300"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip() == "python -m models: error: sketchanet accepts input sizes 225..248, got 300"
