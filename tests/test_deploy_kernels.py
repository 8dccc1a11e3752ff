"""Tests of deploy.kernels: the compiled kernel set is built once, is refused in one line without numba, and
its input packer turns signs into bits as documented (bit j of word w of a pixel set when channel 64 w + j
is >= 0, so sign(0) = +1 and a NaN reads as -1; a zero border of the padding; every sy-th row and sx-th
column for channels-last inputs). The binary conv kernels are tested through deploy.packed's PackedConv2d."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deploy.kernels import WORD, PackedUnavailable, require_kernels
from conftest import PYTHON_START, subprocess_timeout

pytest.importorskip("numba")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, float("nan"), -float("inf"), float("inf")])


def test_kernel_set_is_built_once():
    kernels = require_kernels()
    assert require_kernels() is kernels
    assert kernels.conv(1) is kernels.conv(1) and kernels.conv(2) is not kernels.conv(1)


def expected_bits(x, steps, padding):
    """The packer's output by numpy: [B, Hs + 2 ph, Ws + 2 pw, words] uint64 of the rows and columns taken."""
    (sy, sx), (ph, pw) = steps, padding
    taken = x[:, :, ::sy, ::sx].permute(0, 2, 3, 1).numpy()  # [B, Hs, Ws, C]
    words = -(-x.shape[1] // WORD)
    bits = np.zeros(taken.shape[:3] + (words * WORD,), bool)
    with np.errstate(invalid="ignore"):
        bits[..., :x.shape[1]] = taken >= 0  # a NaN compares False
    packed = np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)
    return np.pad(packed, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


@pytest.mark.slow
@pytest.mark.parametrize("channels, height, width, nhwc, steps, padding", [
    (70, 6, 7, False, (1, 1), (1, 2)),   # 16-pixel groups over a plane, two words with a short last one
    (16, 3, 3, False, (1, 1), (0, 0)),   # a plane under 16 pixels
    (5, 9, 9, True, (1, 1), (2, 0)),     # channels-last, under 16 channels
    (130, 5, 4, True, (1, 1), (1, 1)),   # channels-last, three words
    (33, 9, 8, True, (2, 3), (0, 0)),    # channels-last, every 2nd row and 3rd column
])
def test_pack_sets_a_bit_for_every_value_at_or_above_zero(channels, height, width, nhwc, steps, padding):
    g = torch.Generator().manual_seed(channels)
    x = SPECIAL[torch.randint(len(SPECIAL), (2, channels, height, width), generator=g)]
    x[0, 0, 0, 0], x[1, -1, -1, -1] = 0.0, -0.0  # exact zeros, whatever the draw
    want = expected_bits(x, steps, padding)
    got = np.full_like(want, 0)
    array = x.permute(0, 2, 3, 1).contiguous().numpy() if nhwc else x.contiguous().numpy()
    require_kernels().pack(array, nhwc, *steps, *padding, got)
    assert np.array_equal(got, want)
    first = int(got[0, padding[0], padding[1], 0])
    assert first & 1  # channel 0 of pixel (0, 0) of sample 0 is an exact 0: its bit is set


WITHOUT_NUMBA = """
import sys
sys.modules["numba"] = None  # import numba now raises ImportError
from deploy.kernels import PackedUnavailable, require_kernels
try:
    require_kernels()
except PackedUnavailable as exc:
    print(isinstance(exc, ImportError), exc)
"""


@pytest.mark.slow
def test_without_numba_the_kernels_are_refused_in_one_line():
    done = subprocess.run([sys.executable, "-c", WITHOUT_NUMBA], cwd=ROOT, capture_output=True, text=True,
                          timeout=subprocess_timeout(PYTHON_START))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["True packed inference needs numba: pip install numba, or pass --packed "
                                        "auto to run the model dense"]
    assert issubclass(PackedUnavailable, ImportError)
