"""Tests for models/: every registered name builds, trains, and means the same layers for
--binStart/--binEnd; the registry's facts (family, variant, label, binarization) are right for each.

The expected conv tables, bias placement, binarized-input indices, parameter counts and input ranges
below are literals written out from the original DAB code's model files and from the SD-BNN repository
(pingxue-hfut/SD-BNN), not generated from the code under test; the names tested come from the registry,
and a test checks that every registered name has its literals here. Tests that run real forwards share
one model per name (a module-scoped fixture, so pytest groups the tests by name); shape-only tests run
on the "meta" device, which costs nothing. Real forwards of the largest models are marked slow.
"""

import contextlib
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import types
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import binarize
import models
from models.__main__ import main as cli_main
from models.sdbnn import ShortcutA
from conftest import PYTHON_START, subprocess_timeout

ROOT = Path(__file__).resolve().parents[1]
C = 5  # classes used by the tests that build models
NAMES = models.list_models()

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
# GoogLeNet: the original's Inception table (in, n1x1, n3x3 reduce, n3x3, n5x5 reduce, n5x5, pool proj, side),
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
# MobileNet: the original's block list (in, out, depthwise stride, side), each giving a depthwise 3x3 and a 1x1.
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


# original name -> (conv table, convs with a bias, convs with sign-binarized input, params at the original's
# class count: 10 for the 32-px models, 250 for the others)
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

# family -> (default size, accepted min..max, default channels, recommended bin range). The globally
# pooled SD-BNN heads accept any side up to 4095, the largest the registry considers.
FAMILIES = {
    "sketchanet": (225, (225, 248), 1, (2, 7)),  # 225-248 valid, 224 crashed the original
    "alexnet": (224, (223, 254), 3, (2, 8)),  # 223-254 give 1x1 logits
    "resnet": (224, (193, 416), 1, (2, 100)),
    "googlenet": (224, (209, 240), 1, (2, 100)),  # valid about 209-240
    "squeezenet": (224, (213, 420), 1, (2, 100)),
    "mobilenet": (224, (193, 416), 1, (2, 27)),
    "nin": (32, (29, 32), 3, (2, 8)),
    "vgg": (32, (32, 63), 3, (2, 13)),
    "densenet": (32, (32, 63), 3, (2, 7)),
    "bincifar": (32, (32, 39), 3, (2, 7)),
    "resnet20": (32, (1, 4095), 3, (2, 19)),
    "vgg_small": (32, (32, 39), 3, (2, 6)),
    "resnet18_cifar": (32, (25, 56), 3, (2, 20)),
    "birealnet18": (224, (1, 4095), 3, (2, 20)),
}
LARGEST_SIDE = 4095



# SD-BNN: binary name -> (fp twin, number of convs, binary convs, 1x1 downsample convs)
SDBNN = {
    "resnet20_1w1a": ("resnet20_fp", 19, set(_span(2, 19)), set()),
    "vgg_small_1w1a": ("vgg_small_fp", 6, set(_span(2, 6)), set()),
    "resnet18_1w1a": ("resnet18_cifar_fp", 20, set(_span(2, 20)) - {8, 13, 18}, {8, 13, 18}),
    "birealnet18": ("birealnet18_fp", 20, set(_span(2, 20)) - {7, 12, 17}, {7, 12, 17}),
}
SDBNN_TWINS = {fp: binary for binary, (fp, *_) in SDBNN.items()}


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


def expected_convs(name):
    """The number of convs the literals above give ``name``."""
    if name in EXPECTED:
        return len(EXPECTED[name][0])
    return SDBNN[SDBNN_TWINS.get(name, name)][1]


def expected_binary_inputs(name):
    """The convs with a binarized input by default, from the literals above."""
    if name in EXPECTED:
        return EXPECTED[name][2]
    return () if name in SDBNN_TWINS else tuple(sorted(SDBNN[name][2]))


# ---------------------------------------------------------------- helpers

def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _meta_model(name, num_classes=C, in_channels=None, **kwargs):
    with torch.device("meta"):
        return models.build_model(name, num_classes, in_channels=in_channels, init=False, **kwargs)


def _batch(name, size=None, channels=None, batch=2):
    info = models.model_info(name)
    size = size or info.default_inpsize
    return torch.randn(batch, channels or info.default_in_channels, size, size)


def _binarized_input_convs(model):
    return {index for index, *_ in binarize.input_binarizers(model)}


@lru_cache(maxsize=None)
def _is_large(name):
    """Over 20M parameters or 1 G multiply-adds in its convs at the default input: a real forward costs seconds."""
    info = models.model_info(name)
    model = _meta_model(name)
    rows = models.conv_table(model, info.default_inpsize, info.default_in_channels)
    macs = sum(r["out_hw"][0] * r["out_hw"][1] * r["out_channels"] * r["in_channels"] // r["groups"]
               * r["kernel"][0] * r["kernel"][1] for r in rows)
    return sum(p.numel() for p in model.parameters()) > 20e6 or macs > 1e9


def _by_cost(names):
    """pytest params for ``names``, the large models marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if _is_large(n) else n for n in names]


def _family_of(family_name):
    """The first registered name of a family."""
    return next(n for n in NAMES if models.model_info(n).family == family_name)


FAMILY_NAMES = sorted({models.model_info(n).family for n in NAMES})
ORIGINAL_NAMES = [n for n in NAMES if n in EXPECTED]
BINARY_SDBNN = [n for n in NAMES if n in SDBNN]
SDBNN_NAMES = [n for n in NAMES if n in SDBNN or n in SDBNN_TWINS]


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    """Every registered name, for the tests that only build on the meta device."""
    return request.param


# ---------------------------------------------------------------- registry and static facts

def test_the_original_and_sdbnn_names_are_all_registered():
    """The registry holds the original's 31 names and SD-BNN's 8 with the layer tables above; a name added
    later is covered by the tests that enumerate the registry, without a literal here."""
    assert set(EXPECTED) | set(SDBNN) | set(SDBNN_TWINS) <= set(NAMES)
    assert (len(EXPECTED), len(SDBNN) + len(SDBNN_TWINS)) == (31, 8)
    assert set(FAMILIES) <= set(FAMILY_NAMES)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*sketchanetfbin"):
        models.build_model("resnet50", 10)
    with pytest.raises(ValueError, match="unknown model"):
        models.model_info("resnet50")


def test_model_info_matches_family_facts(name):
    info = models.model_info(name)
    default, (lo, hi), channels, bin_range = FAMILIES[info.family]
    assert dataclasses.is_dataclass(info) and info.name == name
    assert (info.default_inpsize, info.min_inpsize, info.max_inpsize) == (default, lo, hi)
    assert info.default_in_channels == channels and info.bin_range == bin_range
    assert info.num_convs == expected_convs(name)
    assert info.binary_inputs == expected_binary_inputs(name)
    assert info.inputs_binarized == bool(expected_binary_inputs(name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_convs = 0


def test_variant_agrees_with_the_binarization_facts(name):
    """fp: nothing binarized; wbin: binary weights, real inputs; fbin and 1w1a: binary weights and inputs;
    a hybrid: binary weights, and binarized inputs at a strict subset of its family's fbin convs."""
    info = models.model_info(name)
    assert info.label == f"{info.family_label} {info.variant}"
    assert (info.variant == "fp") == (not info.binarized and not info.inputs_binarized)
    assert (info.variant == "wbin") == (info.binarized and not info.inputs_binarized)
    if info.variant in ("fbin", "1w1a") or info.variant.startswith("hybrid"):
        assert info.binarized and info.inputs_binarized
    if info.variant.startswith("hybrid"):
        siblings = [models.model_info(n) for n in NAMES if models.model_info(n).family == info.family]
        fbin = [sibling for sibling in siblings if sibling.variant == "fbin"]
        assert len(fbin) == 1
        assert set(info.binary_inputs) < set(fbin[0].binary_inputs)
    assert info.activation == ("approxsign" if name == "birealnet18" else "sign")


def test_labels_read_as_users_know_them():
    expected = {"sketchanetfbin": "Sketch-A-Net fbin", "sketchanet": "Sketch-A-Net fp",
                "resnetwbin18": "ResNet-18 wbin", "resnet18": "ResNet-18 fp", "resnethybridv318": "ResNet-18 hybridv3",
                "resnet20_1w1a": "ResNet-20 1w1a", "resnet18_1w1a": "CIFAR ResNet-18 1w1a",
                "birealnet18": "Bi-Real Net-18 1w1a", "birealnet18_fp": "Bi-Real Net-18 fp",
                "vgg16_bncifar": "VGG-16-BN fp", "vgg_small_1w1a": "VGG-Small 1w1a", "nin": "NIN abin",
                "bincifar": "BinCifar wbin", "bincifarfbin": "BinCifar fbin",
                "squeezenethybridv2": "SqueezeNet hybridv2",
                "alexnet": "AlexNet fp", "googlenetwbin": "GoogLeNet wbin", "mobilenet": "MobileNet fp",
                "densenet": "DenseNet-BC-32 fp"}
    assert {n: models.model_info(n).label for n in expected} == expected
    labels = [models.model_info(n).label for n in NAMES]
    assert len(set(labels)) == len(NAMES), "two models share a label"
    for family in FAMILY_NAMES:  # one display name per family, one variant per name
        infos = [models.model_info(n) for n in NAMES if models.model_info(n).family == family]
        assert len({i.family_label for i in infos}) == 1
        assert len({i.variant for i in infos}) == len(infos)


def test_nin_is_xnor_nets_binary_network():
    """XNOR-Net's NIN binarizes the inputs of convs 2-8 (its first and last convs stay real); its weights
    are binarized on request (--binaryWeight, as the original's flags), over the same convs."""
    info = models.model_info("nin")
    assert info.variant == "abin" and not info.binarized
    assert info.binary_inputs == info.bin_layers == _span(2, 8)


# ---------------------------------------------------------------- adding a family

TOY_FAMILY = '''
"""A toy family for the registry's tests: conv 1 -> conv 2 -> global pool -> 1x1 conv classifier."""
from functools import partial

from torch import nn

from models import Family, register
from models.blocks import Classifier, conv_unit

FAMILY = Family("toynet", default_inpsize=8, input_sizes=(4, 16), in_channels=1, bin_range=(2, 3), label="Toy-Net")


class ToyNet(Classifier):
    def __init__(self, num_classes, in_channels, *, family, binary_inputs=()):
        super().__init__(family, binary_inputs)
        self.features = nn.Sequential(conv_unit(in_channels, 4, 3, 1, 1),
                                      conv_unit(4, 6, 3, 1, 1, binary_input=2 in self.binary_inputs),
                                      nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, num_classes, 1))

    def logits(self, x):
        return self.features(x).flatten(1)


register("toynet", partial(ToyNet, family=FAMILY), FAMILY)
register("toynetfbin", partial(ToyNet, family=FAMILY, binary_inputs=(2,)), FAMILY, variant="fbin")
'''
TOY_NAMES = ("toynet", "toynetfbin")


@contextlib.contextmanager
def toy_family():
    """The toy family registered for the duration of the block, then removed again."""
    module = types.ModuleType("toy_family")
    try:
        exec(compile(TOY_FAMILY, "toy_family.py", "exec"), module.__dict__)
        yield module
    finally:
        for toy in TOY_NAMES:
            if toy in models.list_models():
                models.unregister(toy)


def test_a_new_family_registers_builds_and_is_removed_again(capsys):
    before = models.list_models()
    with toy_family():
        assert models.list_models() == sorted(before + list(TOY_NAMES))
        info = models.model_info("toynetfbin")
        assert (info.family, info.family_label, info.variant) == ("toynet", "Toy-Net", "fbin")
        assert info.label == "Toy-Net fbin"
        assert info.binarized and info.binary_inputs == (2,) and info.activation == "sign"
        assert (info.num_convs, info.bin_range, info.bin_layers) == (3, (2, 3), (2, 3))
        assert (info.default_inpsize, info.min_inpsize, info.max_inpsize, info.default_in_channels) == (8, 4, 16, 1)
        plain = models.model_info("toynet")  # variant and binarization from the name: no suffix, no tag
        assert (plain.variant, plain.binarized, plain.binary_inputs) == ("fp", False, ())
        torch.manual_seed(0)
        net = models.build_model("toynetfbin", 3).eval()
        out = net(torch.randn(2, 1, 8, 8))
        assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)
        assert _binarized_input_convs(net) == {2}
        with pytest.raises(ValueError, match="toynet accepts input sizes 4..16, got 17"):
            models.check_input_size("toynet", 17)
        assert cli_main(["toynetfbin"]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("toynetfbin: Toy-Net fbin (family toynet")
    assert models.list_models() == before
    with pytest.raises(ValueError, match="unknown model 'toynet'"):
        models.model_info("toynet")
    with pytest.raises(ValueError, match="unknown model 'toynetfbin'"):
        models.build_model("toynetfbin", 3)


def test_register_refuses_a_taken_name_and_a_bad_variant():
    not_a_family = models.model_info("nin")
    with toy_family() as toy:
        with pytest.raises(ValueError, match="'toynet' registered twice"):
            models.register("toynet", toy.ToyNet, toy.FAMILY)
        for bad in ("", "two words", " fbin"):
            with pytest.raises(ValueError, match="must be one word"):
                models.register("toynetbad", toy.ToyNet, toy.FAMILY, variant=bad)
        with pytest.raises(TypeError, match="models.Family"):
            models.register("toynetbad", toy.ToyNet, not_a_family)
        assert "toynetbad" not in models.list_models()


@pytest.mark.slow
def test_a_family_file_is_picked_up_without_editing_the_package(tmp_path):
    """A new module in models/ registers its names on ``import models``: a copy of the package with the toy
    family's file added, imported in a fresh interpreter."""
    shutil.copytree(ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "toynet.py").write_text(TOY_FAMILY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    code = ("import models; print(models.__file__); "
            "print(models.model_info('toynetfbin').label, len(models.list_models()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=subprocess_timeout(PYTHON_START))
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, facts = proc.stdout.splitlines()
    assert Path(where).parent == tmp_path / "models"
    assert facts == f"Toy-Net fbin {len(NAMES) + 2}"
    proc = subprocess.run([sys.executable, "-m", "models"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=subprocess_timeout(PYTHON_START))
    assert proc.returncode == 0 and re.search(r"^toynetfbin +Toy-Net fbin ", proc.stdout, re.M)


# ---------------------------------------------------------------- the original's layer tables

@pytest.mark.parametrize("original", ORIGINAL_NAMES)
def test_conv_table_matches_the_original(original):
    table, biased, binary, _ = EXPECTED[original]
    info = models.model_info(original)
    model = _meta_model(original)
    rows = models.conv_table(model, info.default_inpsize, info.default_in_channels)
    got = [(r["in_channels"], r["out_channels"], r["kernel"][0], r["stride"][0], r["padding"][0], r["groups"],
            r["out_hw"][0]) for r in rows]
    assert got == table
    assert [r["index"] for r in rows] == list(range(1, len(table) + 1))
    assert all(r["out_hw"][0] == r["out_hw"][1] for r in rows)
    assert tuple(r["index"] for r in rows if r["bias"]) == biased
    assert tuple(r["index"] for r in rows if r["binary_input"]) == binary
    assert rows[0]["input_hw"] == (info.default_inpsize, info.default_inpsize)


@pytest.mark.parametrize("original", ORIGINAL_NAMES)
def test_parameter_count_matches_the_original(original):
    """The counts check the BN sizes (BN(in) before a binarized-input conv, BN(out) after a full-precision
    one), the biases and the dropped/kept modules of every variant."""
    *_, params = EXPECTED[original]
    num_classes = 10 if models.model_info(original).default_inpsize == 32 else 250
    assert sum(p.numel() for p in _meta_model(original, num_classes).parameters()) == params


def test_resnet18_is_the_fp_member_of_the_family():
    fp, wbin = _meta_model("resnet18"), _meta_model("resnetwbin18")
    assert fp.binary_inputs == () and len(_convs(fp)) == 21
    assert [c.weight.shape for c in _convs(fp)] == [c.weight.shape for c in _convs(wbin)]
    assert not _binarized_input_convs(fp)


# ---------------------------------------------------------------- SD-BNN's numbering and parameters

@pytest.mark.parametrize("binary_name", BINARY_SDBNN)
def test_bin_layers_are_exactly_sdbnns_binary_convs(binary_name):
    fp_name, num_convs, binary, downsample = SDBNN[binary_name]
    info = models.model_info(binary_name)
    assert info.num_convs == num_convs
    assert info.bin_range == (2, num_convs)
    assert set(info.bin_layers) == binary and len(info.bin_layers) == len(binary)
    assert len(info.bin_layers) == {"resnet20_1w1a": 18, "vgg_small_1w1a": 5, "resnet18_1w1a": 16,
                                    "birealnet18": 16}[binary_name]
    assert info.binary_inputs == tuple(sorted(binary))
    model = _meta_model(binary_name)
    assert _binarized_input_convs(model) == set(info.bin_layers) == set(model.binary_inputs)
    convs = _convs(model)
    assert 1 not in info.bin_layers and convs[0].kernel_size[0] in (3, 7)  # the fp stem
    assert {i for i, c in enumerate(convs, 1) if c.kernel_size == (1, 1)} == downsample
    assert not downsample & set(info.bin_layers)
    assert all(convs[i - 1].kernel_size == (3, 3) for i in info.bin_layers)
    assert isinstance(model.fc, nn.Linear)  # the classifier is not a conv, so never numbered
    assert models.model_info(fp_name).bin_layers == info.bin_layers


@pytest.mark.parametrize("binary_name", BINARY_SDBNN)
def test_fp_twin_has_no_sign_and_the_same_parameters(binary_name):
    fp_name = SDBNN[binary_name][0]
    binary, fp = _meta_model(binary_name), _meta_model(fp_name)
    assert binarize.input_binarizers(fp) == [] and models.model_info(fp_name).binary_inputs == ()
    assert not any(isinstance(m, binarize.ActivationBinarizer) for m in fp.modules())
    assert [(n, p.shape) for n, p in binary.named_parameters()] == [(n, p.shape) for n, p in fp.named_parameters()]
    assert [(n, b.shape) for n, b in binary.named_buffers()] == [(n, b.shape) for n, b in fp.named_buffers()]


def test_activation_binarizers_are_sdbnns():
    for binary_name in BINARY_SDBNN:
        kinds = {type(row[-1]) for row in binarize.input_binarizers(_meta_model(binary_name))}
        assert kinds == {binarize.ApproxSign if binary_name == "birealnet18" else binarize.BinActive}, binary_name


@pytest.mark.parametrize("sd_name", SDBNN_NAMES)
def test_parameter_count_matches_sdbnns_formula(sd_name):
    formula = PARAMS[models.model_info(sd_name).family]
    for channels in (3, 1):
        assert sum(p.numel() for p in _meta_model(sd_name, C, channels).parameters()) == formula(channels, C)


def test_parameter_count_literals():
    """The formulas worked out at 10 classes and 3 channels; ResNet-18's is kuangliu's CIFAR ResNet-18
    (11,173,962) plus SD-BNN's BatchNorm1d(512)."""
    expected = {"resnet20": 269_850, "vgg_small": 4_660_106, "resnet18_cifar": 11_174_986, "birealnet18": 11_185_482}
    assert {family: PARAMS[family](3, 10) for family in expected} == expected
    for sd_name in SDBNN_NAMES:
        assert sum(p.numel() for p in _meta_model(sd_name, 10, 3).parameters()) == \
            expected[models.model_info(sd_name).family]


def test_bin_inputs_override():
    assert _binarized_input_convs(_meta_model("resnet20_fp", bin_inputs=[2, 5])) == {2, 5}
    assert _binarized_input_convs(_meta_model("resnet20_1w1a", bin_inputs=[])) == set()
    assert _binarized_input_convs(_meta_model("resnet18_cifar_fp", bin_inputs=[8])) == {8}  # a downsample may take one
    rows = binarize.input_binarizers(_meta_model("birealnet18_fp", bin_inputs=[2, 7]))
    assert [(i, type(b)) for i, *_, b in rows] == [(2, binarize.ApproxSign), (7, binarize.ApproxSign)]


@pytest.mark.parametrize("sd_name", SDBNN_NAMES)
def test_sdbnn_stems_refuse_a_binarized_input(sd_name):
    with pytest.raises(ValueError, match=r"cannot binarize the input of convs \[1\]"):
        _meta_model(sd_name, bin_inputs=[1])
    with pytest.raises(ValueError, match=r"cannot binarize the input of convs \[1\]"):
        models.check_bin_inputs(sd_name, [1])


def test_option_a_shortcut_subsamples_and_pads_zero_channels():
    x = torch.arange(2 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 4, 5, 5)
    out = ShortcutA(2, 2)(x)
    assert out.shape == (2, 8, 3, 3)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()
    assert torch.equal(out[0, 2, 0], torch.tensor([0.0, 2.0, 4.0]))  # rows and columns 0, 2, 4 of channel 0
    assert torch.equal(out[1, 5, 2], x[1, 3, 4, [0, 2, 4]])
    assert torch.equal(out[:, 2:6], x[:, :, [0, 2, 4]][:, :, :, [0, 2, 4]])
    model = _meta_model("resnet20_1w1a")
    assert [(s.stride, s.pad) for s in model.modules() if isinstance(s, ShortcutA)] == [(2, 8), (2, 16)]
    assert sum(p.numel() for s in model.modules() if isinstance(s, ShortcutA) for p in s.parameters()) == 0


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
def test_blocks_follow_sdbnns_formulas():
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


# ---------------------------------------------------------------- input sizes and channels

@pytest.mark.parametrize("family_name", FAMILY_NAMES)
@pytest.mark.slow
def test_input_size_range_is_what_the_layers_accept(family_name):
    """On the meta device: the range ends work, and just outside them the bare layers fail or give no
    [B, C] head (a globally pooled head has no upper end but the largest side the registry considers)."""
    name = _family_of(family_name)
    _, (lo, hi), channels, _ = FAMILIES[family_name]
    model = _meta_model(name)
    for size in (lo, hi):
        assert model(torch.empty(2, channels, size, size, device="meta")).shape == (2, C)
    with pytest.raises(ValueError, match=f"accepts input sizes {lo}..{hi}"):
        model(torch.empty(2, channels, hi + 1, hi + 1, device="meta"))
    model.family = dataclasses.replace(model.family, input_sizes=(1, 10**4))  # lift the check
    for size in [s for s in (lo - 1, hi + 1) if 1 <= s and hi < LARGEST_SIDE]:
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
        if size >= 1:
            with pytest.raises(ValueError, match=rf"accepts input sizes {lo}\.\.{hi}, got {size}x{size}"):
                _meta_model(name)(torch.empty(1, channels, size, size, device="meta"))
    models.check_input_size(name, lo)
    models.check_input_size(name, hi)


def test_sketchanet_size_message():
    with pytest.raises(ValueError, match=r"^sketchanet accepts input sizes 225\.\.248, got 224$"):
        models.check_input_size("sketchanet", 224)


@pytest.mark.slow
def test_one_and_three_input_channels(name):
    """Shapes on the meta device for every registered name: conv 1 adapts, the head still gives [B, C]."""
    info = models.model_info(name)
    for channels in (1, 3):
        net = _meta_model(name, in_channels=channels)
        assert _convs(net)[0].in_channels == channels
        x = torch.empty(2, channels, info.min_inpsize, info.min_inpsize, device="meta")
        assert net(x).shape == (2, C)
    with pytest.raises(RuntimeError):  # a model built for one count rejects the other
        _meta_model(name, in_channels=1)(torch.empty(1, 3, info.min_inpsize, info.min_inpsize, device="meta"))


@pytest.mark.parametrize("first", _by_cost([_family_of(f) for f in FAMILY_NAMES]))
def test_non_default_channel_count_runs(first):
    """A real forward with the other channel count, one variant per family (conv 1 is built alike in all)."""
    info = models.model_info(first)
    other = 3 if info.default_in_channels == 1 else 1
    net = models.build_model(first, C, in_channels=other).eval()
    with torch.no_grad():
        out = net(_batch(first, max(info.min_inpsize, 32), other))
    assert out.shape == (2, C) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("cifar_name", ["densenet", "nin", "vgg16_bncifar"])
@pytest.mark.parametrize("num_classes", [7, 100])
def test_num_classes_honoured_by_cifar_models(cifar_name, num_classes):
    """The original hard-coded 10 classes for these three."""
    net = models.build_model(cifar_name, num_classes).eval()
    with torch.no_grad():
        out = net(_batch(cifar_name))
    assert out.shape == (2, num_classes)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


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


# ---------------------------------------------------------------- one real training step per name

@pytest.fixture(scope="module", params=_by_cost(NAMES))
def built(request):
    """(name, model): one initialised model per name, shared by the tests that run real forwards."""
    torch.manual_seed(0)
    return request.param, models.build_model(request.param, C)


@pytest.fixture(scope="module")
def trace(built):
    """One SGD step as main.py runs it: DAB weight binarization on the first three convs binarized by
    default, training mode, batch 2 at the default input size. Records the output, every parameter's
    gradient, per conv whether its input held only {-1, 0, 1}, and the binarized latent weights before and
    after the step. Dropout is switched off so it cannot rescale a sign output. (Three convs, not the whole
    range: DAB on AlexNet's 55M-weight convs 6-7 alone costs seconds.)"""
    name, model = built
    binarized = binarize.binarize_weights(model, layers=models.model_info(name).bin_layers[:3])
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
    return dict(name=name, out=out.detach(), grads=grads, sign_input=sign_input, binarized=binarized,
                latent_before=before, latent_after={i: w.detach().clone() for i, w in latents.items()})


@pytest.mark.slow
def test_forward_gives_log_probabilities(trace):
    out = trace["out"]
    assert out.shape == (2, C) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_backward_reaches_every_parameter(trace):
    for pname, grad in trace["grads"].items():
        assert grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(grad).all() and grad.any(), pname


def test_binary_inputs_only_at_declared_convs(built, trace):
    """Behavioural: a conv's input holds only {-1, 0, 1} exactly when its index is declared binarized."""
    name, model = built
    seen = trace["sign_input"]
    assert sorted(seen) == list(range(1, models.model_info(name).num_convs + 1))
    declared = tuple(sorted(i for i, is_sign in seen.items() if is_sign))
    assert declared == expected_binary_inputs(name) == model.binary_inputs


def test_weight_binarization_attaches_and_trains(trace):
    """The whole recommended range attaches (checked on a meta copy); the real step moved the latent weights."""
    name = trace["name"]
    info = models.model_info(name)
    start, end = info.bin_range
    expected = list(range(start, min(end, info.num_convs) + 1))
    meta = _meta_model(name)
    assert binarize.binarize_weights(meta, start, end) == expected
    assert [i for i, c in enumerate(_convs(meta), 1) if parametrize.is_parametrized(c, "weight")] == expected
    assert trace["binarized"] == list(info.bin_layers[:3])
    for i in trace["binarized"]:
        assert trace["grads"][_latent_name(name, i)].abs().sum() > 0
        assert not torch.equal(trace["latent_before"][i], trace["latent_after"][i]), f"conv {i} latent unchanged"


def _latent_name(name, index):
    """State name of the latent weight of conv ``index`` once binarized."""
    conv_names = [n for n, m in _meta_model(name).named_modules() if isinstance(m, nn.Conv2d)]
    return f"{conv_names[index - 1]}.parametrizations.weight.original"


@pytest.mark.parametrize("binary_name", _by_cost(BINARY_SDBNN))
def test_dab_on_all_sdbnn_binary_convs_and_one_sgd_step(binary_name):
    torch.manual_seed(0)
    model = models.build_model(binary_name, C).train()
    layers = models.model_info(binary_name).bin_layers
    assert binarize.binarize_weights(model, layers=layers, method="dab") == list(layers)
    convs = _convs(model)
    assert [i for i, c in enumerate(convs, 1) if parametrize.is_parametrized(c, "weight")] == list(layers)
    latents = {i: convs[i - 1].parametrizations.weight.original for i in layers}
    before = {i: w.detach().clone() for i, w in latents.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = F.nll_loss(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[i], latents[i].detach()) for i in layers)


@pytest.mark.slow
def test_resnet_hybrid_blocks_feed_from_their_predecessor():
    """Fix: the original's resnethybrid* fed layer1's second block the stem output."""
    net = models.build_model("resnethybrid18", C).eval()
    captured = {}
    net.layer1[0].register_forward_hook(lambda m, a, out: captured.__setitem__("block1_out", out))
    net.layer1[1].register_forward_pre_hook(lambda m, a: captured.__setitem__("block2_in", a[0]))
    with torch.no_grad():
        net(_batch("resnethybrid18", 193))
    assert captured["block2_in"] is captured["block1_out"]


# ---------------------------------------------------------------- init

def _std(t):
    return t.detach().float().std().item()


def test_init_is_the_originals():
    net = models.build_model("googlenet", C)
    conv = _convs(net)[5]  # a3 b2 3x3: 96 -> 128
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert all(c.bias is None or not c.bias.any() for c in _convs(net))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.weight.eq(1).all() and not bn.bias.any() for bn in bns)
    assert not net.linear.bias.any()


def test_init_sdbnn_resnets_kaiming_fan_in():
    for res_name in ("resnet20_1w1a", "resnet18_1w1a"):
        torch.manual_seed(0)
        model = models.build_model(res_name, C)
        for c in _convs(model):
            fan_in = c.in_channels * c.kernel_size[0] * c.kernel_size[1]
            if c.weight.numel() >= 2000:
                assert _std(c.weight) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), res_name
        assert _std(model.fc.weight) == pytest.approx(math.sqrt(2 / model.fc.in_features), rel=0.4)
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
    for binary_name, reduction, std in [("resnet20_1w1a", 16, None), ("vgg_small_1w1a", 16, 0.01),
                                        ("resnet18_1w1a", 16, None), ("birealnet18", 8, None)]:
        torch.manual_seed(0)
        model = models.build_model(binary_name, C)
        assert binarize.binarize_inputs(model, "asd") == sorted(SDBNN[binary_name][2])
        asds = [row[-1] for row in binarize.input_binarizers(model)]
        assert all(isinstance(a, binarize.ASD) and a.reduction == reduction for a in asds)
        if std is not None:
            assert _std(asds[-1].fc1.weight) == pytest.approx(std, rel=0.1)


# ---------------------------------------------------------------- python -m models

def _table_rows(out):
    return [(int(m.group(1)), m.group(2) == "*", m.group(3))
            for m in re.finditer(r"^\s*(\d+)([* ]) (\S+)", out, flags=re.M)]


def test_cli_prints_the_facts_and_the_conv_table(capsys):
    assert cli_main(["sketchanethybrid", "--nClasses", "250"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sketchanethybrid: Sketch-A-Net hybrid (family sketchanet, variant hybrid): by default "
                               "binary weights and sign-binarized inputs at convs 2-5; 8 convs")
    assert "accepts 225..248" in lines[0] and "binarized by default: convs 2-7 (*)" in lines[0]
    rows = lines[2:]
    assert len(rows) == 8
    assert rows[1].split()[:2] == ["2*", "features.conv2.conv"] and " yes " in rows[1]
    assert rows[7].split()[2] == "512->250" and rows[7].split()[-1] == "1x1"


def test_cli_facts_of_fp_and_1w1a_models(capsys):
    assert cli_main(["resnet18"]) == 0
    assert "ResNet-18 fp (family resnet, variant fp): by default real weights and real inputs;" in \
        capsys.readouterr().out.splitlines()[0]
    assert cli_main(["birealnet18"]) == 0
    assert "Bi-Real Net-18 1w1a (family birealnet18, variant 1w1a): by default binary weights and " \
        "approxsign-binarized inputs at convs 2-6,8-11,13-16,18-20;" in capsys.readouterr().out.splitlines()[0]


def test_cli_without_a_name_lists_every_model_with_its_facts(capsys):
    assert cli_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for line, listed in zip(lines, NAMES):
        info = models.model_info(listed)
        assert f" {info.label} (family {info.family}, variant {info.variant}): by default " in line
        assert line.endswith(f"input {info.default_in_channels}x{info.default_inpsize}x{info.default_inpsize}, "
                             f"{info.num_convs} convs")
        assert ("binary weights" in line) == info.binarized
        assert ("real inputs" in line) == (not info.inputs_binarized)


def test_cli_other_size_and_channels(capsys):
    assert cli_main(["resnet18", "--inpsize", "256", "--channels", "3", "--nClasses", "10"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 21 and "3->64" in rows[0] and rows[0].split()[-2:] == ["256x256", "128x128"]


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown model 'nope'"),
    (["sketchanet", "--inpsize", "224"], "sketchanet accepts input sizes 225..248, got 224"),
    (["nin", "--channels", "0"], "must be >= 1"),
    (["resnet20_1w1a", "--binInputs", "1"], "cannot binarize the input of convs [1]"),
    (["--inpsize", "32"], "--inpsize needs a model NAME"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


@pytest.mark.slow
def test_cli_exit_status_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "models", "sketchanet", "--inpsize", "300"],
                          capture_output=True, text=True, cwd=ROOT, timeout=subprocess_timeout(PYTHON_START))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "python -m models: error: sketchanet accepts input sizes 225..248, got 300"


@pytest.mark.parametrize("binary_name", BINARY_SDBNN)
def test_cli_table_marks_sdbnns_binary_convs(binary_name, capsys):
    assert cli_main([binary_name, "--nClasses", str(C)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    _, num_convs, binary, _ = SDBNN[binary_name]
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
