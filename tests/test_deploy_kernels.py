"""Tests of deploy.kernels: the compiled kernel set is built once, is refused in one line without numba, and
each kernel does what its docstring says, checked against numpy or against the plain reference conv:

* ``pack``: bit c of a pixel is (x >= thr[c]) xor the flip of channel c (a NaN compares False before the
  flip; ties and -0.0 are >=), 64 channels a word, both memory layouts, a zero border, row and column steps;
* ``window``: a zero-padded copy of the words, or (taps > 1) the bits of neighbouring pixels side by side;
* ``bitpool``: an OR over each pooling window's valid pixels, then the words flipped;
* the tuned conv (through deploy.packed's PackedConv2d, on PackedBits and on folded float inputs) against
  ``reference``, the conv by its definition: float output, float output with a folded affine map, and bit
  output (a threshold test and a flip per channel).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deploy.kernels import WORD, PackedUnavailable, require_kernels
from conftest import PYTHON_START, subprocess_timeout

pytest.importorskip("numba")
from deploy.packed import PackedBits, PackedConv2d  # noqa: E402  (needs numba to build a conv)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, float("nan"), -float("inf"), float("inf")])


def test_kernel_set_is_built_once():
    kernels = require_kernels()
    assert require_kernels() is kernels
    assert kernels.conv(1) is kernels.conv(1) and kernels.conv(2) is not kernels.conv(1)


def to_words(bits):
    """bool [..., C] -> uint64 [..., ceil(C / 64)]: bit j of word w is channel 64 w + j, unused bits zero."""
    words = -(-bits.shape[-1] // WORD)
    padded = np.zeros(bits.shape[:-1] + (words * WORD,), bool)
    padded[..., :bits.shape[-1]] = bits
    return np.packbits(padded, axis=-1, bitorder="little").view(np.uint64)


def from_words(words, channels):
    """uint64 [..., words] -> bool [..., channels] (the inverse of :func:`to_words`)."""
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :channels].astype(bool)


def random_words(rng, shape):
    """uint64 words with every bit drawn at random."""
    return rng.integers(0, np.iinfo(np.uint64).max, size=shape, dtype=np.uint64, endpoint=True)


# -- pack ---------------------------------------------------------------------------------------------------
def expected_pack(x, thr, invert, steps, padding):
    """The packer's output by numpy: [B, Hs + 2 ph, Ws + 2 pw, words] uint64 of the rows and columns taken,
    bit c = (x >= thr[c]) xor invert[c]."""
    (sy, sx), (ph, pw) = steps, padding
    taken = np.asarray(x)[:, :, ::sy, ::sx].transpose(0, 2, 3, 1)  # [B, Hs, Ws, C]
    with np.errstate(invalid="ignore"):
        bits = (taken >= thr) ^ invert  # a NaN compares False, then flips
    return np.pad(to_words(bits), ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def run_pack(name, x, nhwc, thr, invert, steps, padding):
    """The packer ``name`` (pack or pack_serial) on x [B, C, H, W], given as channels-last memory if nhwc."""
    (sy, sx), (ph, pw) = steps, padding
    batch, channels, height, width = x.shape
    got = np.zeros((batch, -(-height // sy) + 2 * ph, -(-width // sx) + 2 * pw, -(-channels // WORD)), np.uint64)
    array = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else np.ascontiguousarray(x)
    getattr(require_kernels(), name)(array, nhwc, thr, to_words(invert), sy, sx, ph, pw, got)
    return got


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
    x = x.numpy()
    thr, invert = np.zeros(channels, np.float32), np.zeros(channels, bool)  # a plain sign
    want = expected_pack(x, thr, invert, steps, padding)
    got = run_pack("pack", x, nhwc, thr, invert, steps, padding)
    assert np.array_equal(got, want)
    first = int(got[0, padding[0], padding[1], 0])
    assert first & 1  # channel 0 of pixel (0, 0) of sample 0 is an exact 0: its bit is set


def thresholded_input(rng, thr, shape):
    """float32 [B, C, H, W] around the per-channel thresholds: random values, the thresholds themselves and
    their float32 neighbours, signed zeros, NaN and infinities."""
    batch, channels, height, width = shape
    level = np.broadcast_to(thr[None, :, None, None], shape)
    finite = np.isfinite(level)
    with np.errstate(invalid="ignore"):
        choices = [rng.normal(size=shape).astype(np.float32) * 3, level, np.nextafter(level, np.float32(-np.inf)),
                   np.nextafter(level, np.float32(np.inf)), np.zeros(shape, np.float32),
                   np.full(shape, -0.0, np.float32), np.full(shape, np.nan, np.float32),
                   np.full(shape, np.inf, np.float32), np.full(shape, -np.inf, np.float32)]
    pick = rng.choice(len(choices), size=shape, p=[0.3, 0.2, 0.1, 0.1, 0.06, 0.06, 0.06, 0.06, 0.06])
    x = np.choose(pick, choices).astype(np.float32)
    return np.where(finite | (pick == 0), x, choices[0])  # infinite thresholds: no ties to place


def thresholds(rng, channels):
    """Per-channel float32 thresholds (random, with 0.0, -0.0 and infinities among them) and random flips."""
    thr = (rng.normal(size=channels) * 2).astype(np.float32)
    thr[::7], thr[3::11], thr[5::13], thr[6::17] = 0.0, -0.0, np.inf, -np.inf
    return thr, rng.random(channels) < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pack", "pack_serial"])
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("channels, height, width, padding", [
    (5, 5, 7, (0, 0)),      # one short word; 35 pixels a plane: 16-pixel groups, the last overlapping
    (16, 3, 4, (1, 2)),     # a plane under 16 pixels
    (70, 4, 5, (2, 1)),     # two words, a short last one
    (130, 6, 6, (0, 1)),    # three words
])
def test_pack_compares_with_per_channel_thresholds_then_flips(name, nhwc, channels, height, width, padding):
    rng = np.random.default_rng(channels * 10 + nhwc)
    thr, invert = thresholds(rng, channels)
    x = thresholded_input(rng, thr, (2, channels, height, width))
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.0, np.nan
    want = expected_pack(x, thr, invert, (1, 1), padding)
    got = run_pack(name, x, nhwc, thr, invert, (1, 1), padding)
    assert np.array_equal(got, want)
    nan_bit = bool(got[1, padding[0], padding[1], 0] & np.uint64(1))
    assert nan_bit == bool(invert[0])  # a NaN compares False, then the flip applies


@pytest.mark.slow
def test_pack_steps_with_thresholds():
    """Every sy-th row and sx-th column of a channels-last input, compared with per-channel thresholds."""
    rng = np.random.default_rng(3)
    thr, invert = thresholds(rng, 33)
    x = thresholded_input(rng, thr, (2, 33, 9, 8))
    want = expected_pack(x, thr, invert, (2, 3), (1, 0))
    assert np.array_equal(run_pack("pack", x, True, thr, invert, (2, 3), (1, 0)), want)


# -- window -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["window", "window_serial"])
@pytest.mark.parametrize("words, ph, pw", [(1, 1, 1), (3, 0, 2), (2, 2, 0)])
def test_window_of_one_tap_is_a_zero_padded_copy(name, words, ph, pw):
    rng = np.random.default_rng(words + 10 * ph + 100 * pw)
    src = random_words(rng, (2, 5, 6, words))
    xr = np.zeros((2, 5 + 2 * ph, 6 + 2 * pw, words), np.uint64)
    getattr(require_kernels(), name)(src, ph, pw, 1, 64, xr)
    assert np.array_equal(xr, np.pad(src, ((0, 0), (ph, ph), (pw, pw), (0, 0))))


def expected_window(src, ph, pw, taps, cbits):
    """By numpy: bit j * cbits + c of xr[b, y + ph, xo] is channel c of source pixel xo + j - pw (0 outside)."""
    bits = from_words(src, cbits)  # [B, H, W, cbits]
    padded = np.pad(bits, ((0, 0), (0, 0), (pw, pw), (0, 0)))
    span = padded.shape[2] - taps + 1
    side_by_side = np.concatenate([padded[:, :, j:j + span] for j in range(taps)], axis=-1)
    return np.pad(to_words(side_by_side), ((0, 0), (ph, ph), (0, 0), (0, 0)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["window", "window_serial"])
@pytest.mark.parametrize("cbits, taps, ph, pw", [
    (8, 3, 1, 1), (8, 5, 2, 2), (16, 3, 0, 1), (16, 5, 1, 0), (32, 3, 1, 1), (32, 5, 0, 2), (32, 2, 1, 0),
])
def test_window_puts_neighbouring_taps_side_by_side(name, cbits, taps, ph, pw):
    rng = np.random.default_rng(cbits * taps + ph + pw)
    height, width = 4, 6
    src = random_words(rng, (3, height, width, 1)) & np.uint64((1 << cbits) - 1)  # channels above cbits clear
    want = expected_window(src, ph, pw, taps, cbits)
    xr = np.zeros((3, height + 2 * ph, width + 2 * pw - taps + 1, -(-taps * cbits // WORD)), np.uint64)
    getattr(require_kernels(), name)(src, ph, pw, taps, cbits, xr)
    assert want.shape == xr.shape and np.array_equal(xr, want)


# -- bitpool ------------------------------------------------------------------------------------------------
def expected_bitpool(src, kh, kw, sh, sw, ph, pw, postinv):
    """By numpy: an OR over the window's valid pixels (a zero border adds nothing), then xor postinv."""
    padded = np.pad(src, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
    out = np.zeros((src.shape[0], ho, wo, src.shape[3]), np.uint64)
    for oy in range(ho):
        for ox in range(wo):
            window = padded[:, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw]
            out[:, oy, ox] = np.bitwise_or.reduce(window.reshape(src.shape[0], -1, src.shape[3]), axis=1)
    return out ^ postinv


@pytest.mark.slow
@pytest.mark.parametrize("kh, kw, sh, sw, ph, pw", [
    (2, 2, 2, 2, 0, 0), (3, 3, 2, 2, 1, 1), (3, 3, 1, 1, 1, 1), (3, 2, 2, 1, 1, 0), (2, 3, 1, 2, 0, 1),
])
def test_bitpool_ors_the_valid_pixels_then_flips(kh, kw, sh, sw, ph, pw):
    rng = np.random.default_rng(kh * 100 + kw * 10 + ph)
    # sparse bits, so that an OR over a window is not all ones
    src = random_words(rng, (2, 7, 6, 2)) & random_words(rng, (2, 7, 6, 2)) & random_words(rng, (2, 7, 6, 2))
    postinv = random_words(rng, 2)
    want = expected_bitpool(src, kh, kw, sh, sw, ph, pw, postinv)
    got = np.zeros_like(want)
    require_kernels().bitpool(src, kh, kw, sh, sw, ph, pw, postinv, got)
    assert np.array_equal(got, want)
    zero = np.zeros_like(want)
    require_kernels().bitpool(src, kh, kw, sh, sw, ph, pw, np.zeros(2, np.uint64), zero)
    assert np.array_equal(zero ^ postinv, want)


# -- the tuned conv against the reference -------------------------------------------------------------------
CONV_CASES = [  # (c_in, c_out, kernel, stride, padding, batch, side); small ones run serial, large parallel
    (8, 5, 3, 1, 1, 1, 7),      # taps side by side: 3 x 8 channels in one word
    (16, 8, 3, 2, 1, 3, 9),     # 3 x 16 channels in one word, stride 2, a batch
    (32, 16, 5, 1, 2, 1, 8),    # 5 x 32 channels in three words
    (32, 8, 3, 1, 2, 1, 5),     # padding 2 around a 3x3 kernel
    (8, 40, 5, 2, 0, 3, 9),     # 5 x 8 channels in one word; 40 filters: a short last block of 32
    (16, 5, 1, 1, 0, 1, 5),     # a 1x1 conv of 16 channels (one tap)
    (64, 40, 3, 1, 1, 3, 10),   # one word a tap (parallel)
    (65, 16, 1, 2, 0, 3, 7),    # two words, the second holding one channel; a strided 1x1 conv
    (130, 40, 5, 2, 2, 1, 9),   # three words, stride 2, padding 2 (parallel)
    (130, 16, 3, 1, 1, 3, 12),  # (parallel)
    (8, 5, 3, 1, 1, 3, 30),     # (parallel)
]


def conv_case(c_in, c_out, k, stride, padding, batch, side):
    """A PackedConv2d of random code and bias, random input bits uint8 [B, H, W, C_in], and the reference
    conv's float64 output [B, Ho, Wo, C_out] on them."""
    g = torch.Generator().manual_seed(c_in * 1000 + c_out * 10 + k)
    mask = torch.rand(c_out, c_in, k, k, generator=g) > 0.5
    alpha, beta, bias = (torch.randn(c_out, generator=g) for _ in range(3))
    conv = PackedConv2d(mask, alpha, beta, bias, stride, padding)
    bits = (torch.rand(batch, side, side, c_in, generator=g) > 0.5).numpy().astype(np.uint8)
    return conv, bits, reference_conv(conv, bits)


def reference_conv(conv, bits):
    """``reference`` on ``bits`` with the code, bias and geometry of ``conv``."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    batch, height, width, _ = bits.shape
    out = np.zeros((batch, (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1, conv.out_channels))
    diff = (conv.alpha - conv.beta).double().numpy()  # the float32 difference, as the kernel scales by it
    require_kernels().reference(bits, conv.mask().numpy().astype(np.uint8), diff, conv.beta.double().numpy(),
                                conv.bias.double().numpy(), sh, sw, ph, pw, out)
    return out


def bits_input(bits):
    """PackedBits of uint8 bits [B, H, W, C]."""
    return PackedBits(to_words(bits.astype(bool)), bits.shape[-1])


def nhwc(tensor):
    """A [B, C, H, W] tensor as a float64 array [B, H, W, C], the reference's layout."""
    return tensor.permute(0, 2, 3, 1).double().numpy()


def assert_close(got, want, scale):
    """Equal within float32 rounding: 1e-5 of ``scale`` (the largest magnitude involved)."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * scale + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_on_bits_matches_the_reference(case):
    conv, bits, ref = conv_case(*case)
    out = conv(bits_input(bits))
    assert out.dtype == torch.float32 and out.shape == (ref.shape[0], ref.shape[3]) + ref.shape[1:3]
    assert_close(nhwc(out), ref, np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES[::2])
def test_conv_with_a_folded_affine_map_matches_the_reference(case):
    conv, bits, ref = conv_case(*case)
    rng = np.random.default_rng(case[1])
    scale = rng.normal(size=conv.out_channels).astype(np.float32)
    scale[::3], scale[1::4] = 0.0, -np.abs(scale[1::4])
    shift = rng.normal(size=conv.out_channels).astype(np.float32)
    conv.fold_affine(scale, shift)
    want = scale.astype(np.float64) * ref + shift.astype(np.float64)
    assert_close(nhwc(conv(bits_input(bits))), want, np.abs(scale).max() * np.abs(ref).max() + np.abs(shift).max())


def separating_thresholds(ref, rng):
    """Per output channel, a threshold that no value of ``ref`` [..., C] lies within rounding of: a midpoint
    between two values of the channel far enough apart, or below or above them all; channel 0 gets -inf."""
    tol = 1e-4 * np.abs(ref).max() + 1e-5
    flat = ref.reshape(-1, ref.shape[-1])
    thr = np.empty(ref.shape[-1], np.float32)
    for c in range(ref.shape[-1]):
        values = np.unique(flat[:, c])
        gaps = np.diff(values) > 2 * tol
        candidates = np.concatenate([((values[:-1] + values[1:]) / 2)[gaps], [values[0] - 1, values[-1] + 1]])
        thr[c] = rng.choice(candidates)
    thr[0] = -np.inf
    return thr


@pytest.mark.slow
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_writing_bits_matches_the_reference(case):
    conv, bits, ref = conv_case(*case)
    rng = np.random.default_rng(case[0] + case[1])
    thr, invert = separating_thresholds(ref, rng), rng.random(conv.out_channels) < 0.5
    conv.fold_output(thr, invert)
    out = conv(bits_input(bits))
    assert isinstance(out, PackedBits) and out.channels == conv.out_channels
    assert out.words.shape == ref.shape[:3] + (-(-conv.out_channels // WORD),)
    want = (ref >= thr) ^ invert
    assert 0 < want.mean() < 1
    assert np.array_equal(nhwc(out.to_tensor()) > 0, want)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[1] % WORD])
def test_conv_writing_bits_leaves_the_unused_bits_clear(case):
    """PackedBits promise zero bits above the last channel: the next conv's window sum counts every bit of
    a word. The output is written over memory just freed full of ones, as a long forward would leave it."""
    conv, bits, ref = conv_case(*case)
    conv.fold_output(np.zeros(conv.out_channels), np.zeros(conv.out_channels, bool))
    x = bits_input(bits)
    for _ in range(3):
        junk = [np.full(ref.shape[:3] + (-(-conv.out_channels // WORD),), np.uint64(2 ** 64 - 1)) for _ in range(8)]
        del junk
        words = conv(x).words
        assert not (words[..., -1] >> np.uint64(conv.out_channels % WORD)).any()


@pytest.mark.slow
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[6], CONV_CASES[7]])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_with_folded_input_thresholds_matches_the_reference(case, channels_last):
    """A float input read as bit c = (x >= threshold[c]) xor invert[c]: the reference on those bits."""
    conv, bits, _ = conv_case(*case)
    rng = np.random.default_rng(case[0])
    thr, invert = thresholds(rng, conv.in_channels)
    x = thresholded_input(rng, thr, (bits.shape[0], bits.shape[3]) + bits.shape[1:3])
    conv.fold_input(thr, invert)
    with np.errstate(invalid="ignore"):
        read = ((x.transpose(0, 2, 3, 1) >= thr) ^ invert).astype(np.uint8)
    ref = reference_conv(conv, read)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = conv(torch.from_numpy(x).contiguous(memory_format=layout))
    assert_close(nhwc(out), ref, np.abs(ref).max())


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
