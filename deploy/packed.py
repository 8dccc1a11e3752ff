"""Packed inference of exported binarized models: convs on sign-binarized inputs computed with AND +
popcount over 64-bit words of input bits instead of float multiply-adds.

    model, config, report = load_packed("sketchanet.safetensors")            # PackedError if a layer can't pack
    model, config, report = load_packed("resnet.safetensors", fallback=True)  # such layers stay dense
    packed = PackedConv2d.from_conv(conv, mask, alpha, beta)                  # one conv

:class:`PackedConv2d` stands for a conv whose weight is two-valued per filter and whose input is the
output of a sign; it packs the input along channels into machine words (one bit per value) and runs
numba kernels whose inner loop is an 8-lane AND + popcount (vpopcntq where the CPU has AVX-512
VPOPCNTDQ) over register tiles of pixels x output channels. :func:`pack_model` swaps it in for every
eligible conv of a dense model rebuilt from an export (``deploy.export.load_export``) and reports the
binarized layers it cannot cover; :func:`load_packed` does both from a file. BN, pooling and every
layer that is not packed stay in torch; the sign in front of a packed conv is folded into its packing
(:class:`PreSign`). As binarize's sign, the packing takes sign(0) = +1, so a packed model computes what
the dense one does even where an activation is exactly 0. numba is imported on first use, so this module
imports without it and raises :class:`PackedUnavailable` only when a packed conv is built.
"""

import numpy as np
import torch
from torch import nn

import binarize
import models
from deploy import export, fold
from deploy.kernels import LANES, SERIAL_WORK, WORD, PackedUnavailable, require_kernels

__all__ = ["PackedBits", "PackedError", "PackedUnavailable", "PackedConv2d", "PreSign", "SignPack", "BitMaxPool", "pack_model", "fold_model", "load_packed",
           "load_export_packed", "report_line"]

class PackedBits:
    """The signs of a [B, C, H, W] activation as bits, 64 channels a word: ``words`` is uint64 [B, H, W,
    ceil(C / 64)], bit j of word w of a pixel set when channel 64 w + j is +1 (unused bits zero). A packed
    conv that feeds another one through BN, ReLU, pooling and a sign hands it this instead of floats."""

    __slots__ = ("words", "channels")

    def __init__(self, words, channels):
        if words.dtype != np.uint64 or words.ndim != 4 or words.shape[3] != -(-channels // WORD):
            raise ValueError(f"expected uint64 words [B, H, W, {-(-channels // WORD)}], got {words.dtype} "
                             f"{words.shape}")
        self.words, self.channels = words, channels

    @property
    def shape(self):
        """The shape of the activation the bits stand for: (B, C, H, W)."""
        batch, height, width, _ = self.words.shape
        return torch.Size((batch, self.channels, height, width))

    def to_tensor(self, dtype=torch.float32):
        """The activation as a ±1 tensor [B, C, H, W]."""
        bits = np.unpackbits(self.words.view(np.uint8), axis=-1, bitorder="little")[..., :self.channels]
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1).permute(0, 3, 1, 2).to(dtype)

    def __repr__(self):
        return f"PackedBits(shape={tuple(self.shape)})"


class PackedError(ValueError):
    """A model (or export) with binarized layers that the packed path cannot run."""


def _pair(value, what):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value}")
    return value


def _bit_words(flags):
    """uint64 words of a bool per channel, 64 channels a word (bit j of word w: channel 64 w + j)."""
    flags = np.asarray(flags, bool)
    bits = np.zeros(-(-len(flags) // WORD) * WORD, bool)
    bits[:len(flags)] = flags
    return np.packbits(bits, bitorder="little").view(np.uint64)


def _window_classes(size, kernel, stride, pad):
    """Per output position along one axis, the index of its class of valid taps [lo, hi), and the classes.

    A window that lies wholly in the padding (padding wider than the kernel) has no valid tap: its class
    is an empty range, so the output there is the bias alone, as F.conv2d gives.
    """
    start = np.arange((size + 2 * pad - kernel) // stride + 1) * stride
    lo = np.clip(pad - start, 0, kernel)
    hi = np.clip(size + pad - start, lo, kernel)
    bounds = np.stack([lo, hi], axis=1)
    classes, index = np.unique(bounds, axis=0, return_inverse=True)
    return classes, index.reshape(-1).astype(np.int64)


class PackedConv2d(nn.Module):
    """A conv with a two-value weight per filter on a sign-binarized input, computed on packed bits.

    The weight is ``W[c] = beta[c] + (alpha[c] - beta[c]) * e[c]`` with ``e`` a bool mask of shape
    [C_out, C_in, kh, kw]; the input stands for values in {-1, +1} (a sign's output, or what the sign
    would be applied to): a value >= 0 counts as +1 and a negative one as -1, so an exact 0 counts as +1,
    as binarize's sign maps it; a NaN counts as -1. With the input bits b (x = 2b - 1), per output
    position and filter, summing over the taps of the window that fall inside the input (zero padding
    contributes nothing; a window wholly in the padding gives the bias):

        conv(x, W) = beta * boxsum(x) + (alpha - beta) * conv(x, e)
        conv(x, e) = 2 * popcount(b & e) - popcount(e over the valid taps)
        boxsum(x)  = 2 * popcount(b over the valid taps) - (valid taps) * C_in

    The kernel counts A = popcount(b & e) per filter and S = popcount(b) per position over the whole
    window: padded positions are zero words, so neither needs a border test. The border enters through
    E (set mask bits on the valid taps, per filter) and n (valid taps times C_in), tabulated per class of
    border position once per input size (2-D prefix sums of the per-tap mask counts), so that

        out = (alpha - beta) * (2 A - E) + beta * (2 S - n) + bias

    with both brackets exact integers: the output equals ``F.conv2d(x, W, bias, stride, padding)`` up to
    the float rounding of this last step, in float32.

    The input is packed along channels into uint64 words ([B, H + 2 padding, W + 2 padding, words],
    C_in rounded up to 64, unused bits zero), and so is the mask (``weight_bits``: [C_out, kh, kw,
    words]). The output is float32 in channels-last memory (the next BN and sign keep that layout, and
    the next packed conv reads it without a transpose); other input dtypes are compared with 0 in their
    own precision. Zero padding only; groups and dilation other than 1 raise ValueError. CPU only,
    inference only (no autograd).
    """

    def __init__(self, mask, alpha, beta, bias=None, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        require_kernels()
        if groups != 1:
            raise ValueError(f"PackedConv2d supports groups=1 only, got groups={groups}")
        if _pair(dilation, "dilation") != (1, 1):
            raise ValueError(f"PackedConv2d supports dilation=1 only, got dilation={dilation}")
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.dim() != 4:
            raise ValueError(f"the mask must be [C_out, C_in, kh, kw], got shape {tuple(mask.shape)}")
        c_out, c_in, kh, kw = mask.shape
        for name, t in (("alpha", alpha), ("beta", beta), ("bias", bias)):
            if t is not None and tuple(t.shape) != (c_out,):
                raise ValueError(f"{name} must hold one value per filter ({c_out},), got {tuple(t.shape)}")
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, (kh, kw)
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"invalid stride {self.stride} or padding {self.padding}")
        self.dilation, self.groups = (1, 1), 1
        words = -(-c_in // WORD)
        bits = np.zeros((c_out, kh, kw, words * WORD), dtype=bool)
        bits[..., :c_in] = mask.bool().permute(0, 2, 3, 1).numpy()
        # little-endian: channel 64w + j is bit j of word w
        self.register_buffer("weight_bits", torch.from_numpy(
            np.packbits(bits, axis=-1, bitorder="little").view(np.uint64).view(np.int64).copy()))
        self.register_buffer("alpha", alpha.detach().cpu().clone())
        self.register_buffer("beta", beta.detach().cpu().to(alpha.dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().cpu().clone())
        self._prepare()

    @classmethod
    def from_conv(cls, conv, mask, alpha, beta):
        """The packed form of ``conv`` (its geometry and bias) with the code (mask, alpha, beta)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"PackedConv2d supports zero padding only, not {conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "same" and any((k - 1) % 2 for k in conv.kernel_size):
                raise ValueError(f"padding='same' with the even kernel {conv.kernel_size} pads unevenly")
            padding = (0, 0) if padding == "valid" else tuple((k - 1) // 2 for k in conv.kernel_size)
        return cls(mask, alpha, beta, conv.bias, conv.stride, padding, conv.dilation, conv.groups)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._prepare()  # the kernel's copies follow the loaded buffers

    def _prepare(self):
        """The kernel's forms of the buffers: blocked weight words, per-filter scales and tap counts."""
        c_out, c_in, (kh, kw) = self.out_channels, self.in_channels, self.kernel_size
        words = self.weight_bits.shape[-1]
        self._vectors = 1 if c_out <= LANES else 2 if c_out <= 2 * LANES else 4
        block = self._vectors * LANES
        padded = -(-c_out // block) * block
        # a conv of fewer than 64 channels (a divisor of 64) reads the words of kw neighbouring pixels side
        # by side: one row of a 3x3 window of 16 channels is one word instead of three
        self._taps = kw if kw > 1 and WORD % c_in == 0 and -(-kw * c_in // WORD) < kw else 1
        if self._taps > 1:
            rows = self.mask().permute(0, 2, 3, 1).reshape(c_out, kh, kw * c_in).numpy()
            self._row_words = -(-kw * c_in // WORD)
            bits = np.zeros((c_out, kh, 1, self._row_words * WORD), dtype=bool)
            bits[..., 0, :kw * c_in] = rows
            kernel_words = np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)
        else:
            self._row_words = words
            kernel_words = self.weight_bits.numpy().view(np.uint64)
        kw_kernel = 1 if self._taps > 1 else kw
        w = np.zeros((padded, kh, kw_kernel, self._row_words), np.uint64)
        w[:c_out] = kernel_words
        # [blocks, kh, kw, words, block]: one tap-word of a block is one contiguous run of lanes
        self._wt = np.ascontiguousarray(w.reshape(padded // block, block, kh, kw_kernel, self._row_words)
                                        .transpose(0, 2, 3, 4, 1)).reshape(-1)
        taps = np.zeros((padded, kh, kw), np.int64)
        taps[:c_out] = np.bitwise_count(self.weight_bits.numpy().view(np.uint64)).sum(axis=-1)
        self._tapsum = np.zeros((padded, kh + 1, kw + 1), np.int64)  # 2-D prefix sums over the taps
        self._tapsum[:, 1:, 1:] = taps.cumsum(1).cumsum(2)

        def padded64(t):
            out = np.zeros(padded, np.float64)
            if t is not None:
                out[:c_out] = t.detach().double().numpy()
            return out

        self._diff, self._beta32, self._bias32 = (padded64(t).astype(np.float32)
                                                  for t in (self.alpha - self.beta, self.beta, self.bias))
        self._words = words
        if not hasattr(self, "_in_predicate"):
            self._in_predicate = None
        self._set_tables()

    def _set_tables(self):
        """The input thresholds and the output thresholds of the kernels, from the folded predicates."""
        c_in, c_out = self.in_channels, self.out_channels
        padded = self._diff.shape[0]
        self._in_thr, self._in_inv = np.zeros(c_in, np.float32), np.zeros(self._words, np.uint64)
        if self._in_predicate is not None:
            self._in_thr[:], self._in_inv[:] = self._in_predicate[0], _bit_words(self._in_predicate[1])
        if self.emits_bits:
            self._out_thr = np.full(padded, np.inf, np.float32)  # padded channels: bit clear
            self._out_thr[:c_out] = self._out_predicate[0]
            self._out_inv = np.packbits(np.pad(self._out_predicate[1], (0, padded - c_out)), bitorder="little")
        else:  # scale and shift of a folded BN, interleaved by 8 lanes
            scale, shift = getattr(self, "_affine", None) or (np.ones(c_out), np.zeros(c_out))
            pair = np.zeros((padded // LANES, 2, LANES), np.float32)
            pair[:, 0] = np.pad(scale, (0, padded - c_out), constant_values=1).reshape(-1, LANES)
            pair[:, 1] = np.pad(shift, (0, padded - c_out)).reshape(-1, LANES)
            self._out_thr, self._out_inv = pair.reshape(-1), np.zeros(padded // 8, np.uint8)
        self._plans = {}

    @property
    def emits_bits(self):
        """Whether the output is the sign bits of the next packed conv's input (:class:`PackedBits`)."""
        return getattr(self, "_out_predicate", None) is not None

    def fold_input(self, threshold, invert):
        """Read a float input as bit c = (x >= threshold[c]) xor invert[c] instead of x >= 0: the BN (and
        ReLU) between the input and its sign, folded (see deploy.fold)."""
        self._in_predicate = (np.asarray(threshold, np.float32), np.asarray(invert, bool))
        self._set_tables()

    def fold_output(self, threshold, invert):
        """Write bits instead of floats: bit c of an output pixel = (v >= threshold[c]) xor invert[c], v the
        conv's output (the next BN, ReLU and sign, folded; see deploy.fold)."""
        self._out_predicate = (np.asarray(threshold, np.float32), np.asarray(invert, bool))
        self._set_tables()

    def fold_affine(self, scale, shift):
        """Output ``scale * conv(x) + shift`` per channel: a BN after the conv, folded into its scales."""
        self._affine = (np.asarray(scale, np.float64), np.asarray(shift, np.float64))
        self._set_tables()

    def _plan(self, shape, bits_in):
        """For an input shape: the output shape and the kernel's other arguments (per-layer tables, input steps,
        geometry)."""
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"expected an input [B, {self.in_channels}, H, W], got {tuple(shape)}")
        batch, _, height, width = shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if height + 2 * ph < kh or width + 2 * pw < kw:
            raise ValueError(f"input {height}x{width} with padding {self.padding} is smaller than the kernel "
                             f"{self.kernel_size}")
        steps = (1, 1)
        if (kh, kw) == (1, 1) and (ph, pw) == (0, 0) and not bits_in:
            # a strided 1x1 conv reads every sh-th row and sw-th column only: pack just those, then stride 1
            steps, (sh, sw) = (sh, sw), (1, 1)
            height, width = -(-height // steps[0]), -(-width // steps[1])
        rows, rowcls = _window_classes(height, kh, sh, ph)
        cols, colcls = _window_classes(width, kw, sw, pw)
        t = self._tapsum
        etab = np.empty((len(rows), len(cols), t.shape[0]), np.int64)
        nvtab = np.empty((len(rows), len(cols)), np.int64)
        for r, (y0, y1) in enumerate(rows):
            for c, (x0, x1) in enumerate(cols):
                etab[r, c] = t[:, y1, x1] - t[:, y0, x1] - t[:, y1, x0] + t[:, y0, x0]
                nvtab[r, c] = (y1 - y0) * (x1 - x0) * self.in_channels
        out_words = -(-self.out_channels // WORD)
        out_shape = ((batch, len(rowcls), len(colcls), out_words * 8) if self.emits_bits
                     else (batch, len(rowcls), len(colcls), self.out_channels))
        wide = width + 2 * pw
        window = (height + 2 * ph, wide - self._taps + 1 if self._taps > 1 else wide, self._row_words)
        tables = (self._wt, self._diff, self._beta32, self._bias32, self._out_thr, self._out_inv, etab, nvtab,
                  rowcls, colcls)
        geometry = (sh, sw, kh, 1 if self._taps > 1 else kw, self._row_words)
        work = batch * len(rowcls) * len(colcls) * self._diff.shape[0] * (kh * geometry[3] * self._row_words + 4)
        plan = (out_shape, window, tables, steps, geometry, work)
        self._plans[(tuple(shape), bits_in)] = plan
        return plan

    def _input_words(self, x, window, steps, serial):
        """The kernel's input words [B, Hp, Wr, words] (zero border; taps side by side) from ``x``: floats
        (packed here: bit c is x >= threshold[c], 0 unless folded) or :class:`PackedBits`."""
        kernels = require_kernels()
        pack, spread = (kernels.pack_serial, kernels.window_serial) if serial else (kernels.pack, kernels.window)
        (ph, pw), batch = self.padding, x.shape[0]
        xr = np.zeros((batch,) + window, np.uint64)
        if type(x) is PackedBits:
            spread(x.words, ph, pw, self._taps, self.in_channels, xr)
            return xr
        if not x.is_cpu:
            raise ValueError(f"PackedConv2d runs on the CPU; got an input on {x.device}")
        if x.dtype != torch.float32:
            x = (x >= 0).to(torch.float32) * 2 - 1 if self._in_predicate is None else x.float()
        elif x.requires_grad:
            x = x.detach()
        nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if nhwc:
            array = x.numpy().transpose(0, 2, 3, 1)  # numpy views cost less than torch's
        else:
            if steps != (1, 1):  # the channel-major packer reads whole planes: take the rows and columns first
                x = x[:, :, ::steps[0], ::steps[1]]
                steps = (1, 1)
            array = (x if x.is_contiguous() else x.contiguous()).numpy()
        if self._taps == 1:
            pack(array, nhwc, self._in_thr, self._in_inv, *steps, ph, pw, xr)
            return xr
        if nhwc:
            (kernels.pack_taps_serial if serial else kernels.pack_taps)(array, self._in_thr, self._in_inv, ph, pw,
                                                                        self._taps, self.in_channels, xr)
            return xr
        words = np.zeros((batch, xr.shape[1] - 2 * ph, array.shape[2 if nhwc else 3], self._words), np.uint64)
        pack(array, nhwc, self._in_thr, self._in_inv, *steps, 0, 0, words)
        spread(words, ph, pw, self._taps, self.in_channels, xr)
        return xr

    def forward(self, x):
        bits_in = type(x) is PackedBits
        plan = self._plans.get((x.shape, bits_in))
        out_shape, window, tables, steps, geometry, work = plan if plan is not None else self._plan(x.shape, bits_in)
        serial = work < SERIAL_WORK  # waking threads costs more than they save
        dtype = torch.float32 if bits_in else x.dtype
        xr = self._input_words(x, window, steps, serial)
        conv = require_kernels().conv(self._vectors, self.emits_bits, serial)
        if self.emits_bits:
            # zeroed: the kernel writes the bytes of its channel blocks only, and the bits past C_out must be clear
            words = np.zeros(out_shape[:3] + (out_shape[3] // 8,), dtype=np.uint64)
            conv(xr, words.view(np.uint8), self.out_channels, *tables, *geometry)
            return PackedBits(words, self.out_channels)
        # numpy's allocator hands back recently freed memory; torch.empty of a large tensor often maps fresh
        # pages, and faulting them in costs as much as a small conv
        out = np.empty(out_shape, dtype=np.float32)
        conv(xr, out, self.out_channels, *tables, *geometry)
        out = torch.from_numpy(out.transpose(0, 3, 1, 2))
        return out if dtype == torch.float32 or not dtype.is_floating_point else out.to(dtype)

    def mask(self):
        """The bool mask e [C_out, C_in, kh, kw] unpacked from ``weight_bits``."""
        bits = np.unpackbits(self.weight_bits.numpy().view(np.uint8), axis=-1, bitorder="little")
        return torch.from_numpy(bits[..., :self.in_channels].astype(bool)).permute(0, 3, 1, 2).contiguous()

    def dense_weight(self):
        """The weight ``beta + (alpha - beta) * e`` this module stands for."""
        shape = (-1, 1, 1, 1)
        return self.beta.view(shape) + (self.alpha - self.beta).view(shape) * self.mask().to(self.alpha.dtype)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, words={self.weight_bits.shape[-1]}")


class PreSign(nn.Module):
    """An activation binarizer in front of a :class:`PackedConv2d`, minus its sign: ``pre_sign(x)``.

    The packed conv reads only whether each input value is >= 0, and the sign is +1 exactly when its
    input is >= 0 (sign(0) = +1), so the sign (a pass over the activation, ~5% of a packed ResNet-18's
    forward) is folded into the packing.
    """

    def __init__(self, binarizer):
        super().__init__()
        self.binarizer = binarizer

    def forward(self, x):
        return self.binarizer.pre_sign(x)


class SignPack(nn.Module):
    """Float input to sign bits: bit c of a pixel is (x >= threshold[c]) xor invert[c], then, with ``pool``
    (kernel, stride, padding), OR-pooled and flipped where ``post_invert`` is set. Stands for the BN, ReLU,
    max-pool and sign between a float tensor and a packed conv (see deploy.fold)."""

    def __init__(self, threshold, invert, pool=None, post_invert=None):
        super().__init__()
        self.channels = len(threshold)
        self._thr = np.ascontiguousarray(threshold, np.float32)
        self._inv = _bit_words(invert)
        self.pool = None if pool is None else BitMaxPool(*pool, post_invert)

    def forward(self, x):
        if not x.is_cpu:
            raise ValueError(f"SignPack runs on the CPU; got an input on {x.device}")
        x = x.detach().float()
        nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        array = x.numpy().transpose(0, 2, 3, 1) if nhwc else x.contiguous().numpy()
        batch, _, height, width = x.shape
        words = np.zeros((batch, height, width, len(self._inv)), np.uint64)
        require_kernels().pack(array, nhwc, self._thr, self._inv, 1, 1, 0, 0, words)
        bits = PackedBits(words, self.channels)
        return bits if self.pool is None else self.pool(bits)

    def extra_repr(self):
        return f"{self.channels}"


class BitMaxPool(nn.Module):
    """Max-pooling of signs on :class:`PackedBits`: an OR over each window's valid pixels, then the words
    flipped where ``post_invert`` is set (a pool in front of a BN with a negative scale)."""

    def __init__(self, kernel_size, stride, padding, post_invert):
        super().__init__()
        self.kernel_size, self.stride = _pair(kernel_size, "kernel_size"), _pair(stride or kernel_size, "stride")
        self.padding = _pair(padding, "padding")
        self.channels = len(post_invert)
        self._post = _bit_words(post_invert)

    @classmethod
    def from_pool(cls, pool, post_invert):
        return cls(pool.kernel_size, pool.stride, pool.padding, post_invert)

    def forward(self, bits):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        batch, height, width, nw = bits.words.shape
        out = np.empty((batch, (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1, nw), np.uint64)
        require_kernels().bitpool(bits.words, kh, kw, sh, sw, ph, pw, self._post, out)
        return PackedBits(out, bits.channels)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _reason(module, slot):
    """Why the binarized layer ``module`` cannot run packed (None if it can); ``slot`` is its
    ``binarize.input_binarizers`` row or None."""
    if isinstance(module, nn.Linear):
        return "a Linear layer (only convs are packed)"
    if not isinstance(module, nn.Conv2d):
        return f"a {type(module).__name__}, not a conv"
    if slot is None:
        return "its input is real-valued (no activation binarizer in front of it)"
    _, parent, _, binarizer = slot
    if not getattr(binarizer, "packable", False):
        return f"its activation binarizer {binarizer.name!r} is not a sign (packable = False)"
    if not isinstance(parent, nn.Sequential):
        return f"its activation binarizer and conv sit in a {type(parent).__name__}, not an nn.Sequential"
    if module.groups != 1:
        return f"a grouped conv (groups={module.groups})"
    if tuple(module.dilation) != (1, 1):
        return f"a dilated conv (dilation={tuple(module.dilation)})"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (zero padding only)"
    if module.padding == "same" and any((k - 1) % 2 for k in module.kernel_size):
        return "padding='same' with an even kernel"
    return None


def _code(module, name, layer, tensors):
    """(mask, alpha, beta) of a binarized layer: stored in the export, or re-encoded from its weight."""
    if tensors is not None:
        return export.layer_code(tensors, name, layer)
    method = binarize.WEIGHT_BINARIZERS[layer["method"]]
    mask, stored = method.encode(module.weight.detach().cpu())
    alpha, beta = method.decode_values(stored, module.weight.shape[0], module.weight.dtype)
    return mask, alpha, beta


def _label(row):
    return f"conv {row['index']} {row['name']!r}" if row["index"] is not None else repr(row["name"])


def report_line(report):
    """One line for a log: how many binarized layers run packed, and the others with their reasons."""
    dense = [row for row in report if not row["packed"]]
    line = f"packed {len(report) - len(dense)} of {len(report)} binarized layers"
    if dense:
        line += "; dense: " + "; ".join(f"{_label(row)} ({row['reason']})" for row in dense)
    return line


@torch.no_grad()
def pack_model(model, layers, *, tensors=None, fallback=False, source="model"):
    """Replace every binarized conv of ``model`` that can run packed by a :class:`PackedConv2d`, in place.

    ``model`` is a dense model with plain convs (``deploy.export.load_export``), ``layers`` the export's
    binarized layers (``read_export``: name -> index, method, shape, dtype). A layer runs packed when it
    is a conv (groups 1, dilation 1, zero padding) fed by an activation binarizer with ``packable`` True
    in the same nn.Sequential (BN -> sign -> conv, or sign -> conv -> BN). Its code comes from
    ``tensors`` (the export's stored bits and scales) when given, else from its weight through its
    binarizer's ``encode``. The activation binarizer in front of a packed conv becomes a :class:`PreSign`
    (the packing takes the sign). Returns the report: one dict {name, index, packed, reason} per binarized
    layer in module order (reason None when packed). A layer that cannot run packed raises
    :class:`PackedError` (one line naming each such layer and why) unless ``fallback``, which keeps it
    dense; without numba :class:`PackedUnavailable` is raised, or with ``fallback`` every layer stays dense.
    """
    modules = dict(model.named_modules())
    slots = {row[1]: (row[0], row[2], row[3], row[4]) for row in binarize.input_binarizers(model)}
    report = []
    for name in (n for n in modules if n in layers):
        reason = _reason(modules[name], slots.get(name))
        report.append(dict(name=name, index=layers[name].get("index"), packed=reason is None, reason=reason))
    missing = sorted(set(layers) - set(modules))
    if missing:
        raise PackedError(f"{source}: binarized layers {missing} are not in the model")
    if any(row["packed"] for row in report):
        try:
            require_kernels()
        except PackedUnavailable as exc:
            if not fallback:
                raise
            for row in report:
                row.update(packed=False, reason=row["reason"] or str(exc).split(":")[0])
    blocked = [row for row in report if not row["packed"]]
    if blocked and not fallback:
        detail = "; ".join(f"{_label(row)}: {row['reason']}" for row in blocked)
        raise PackedError(f"{source}: {len(blocked)} binarized layer(s) cannot run packed ({detail}); pass "
                          f"--packed auto to run them dense")
    for row in report:
        if row["packed"]:
            name = row["name"]
            conv = modules[name]
            packed = PackedConv2d.from_conv(conv, *_code(conv, name, layers[name], tensors))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, packed)
            _, sequential, sign_name, binarizer = slots[name]
            setattr(sequential, sign_name, PreSign(binarizer))
    return report


def _is_sign(module):
    """A PreSign whose binarizer adds nothing before its sign: its input's sign is the conv's input."""
    return (isinstance(module, PreSign)
            and type(module.binarizer).pre_sign is binarize.activations.ActivationBinarizer.pre_sign)


def _replace(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_model(model, example):
    """Fold the float layers between the packed convs of ``model`` (after :func:`pack_model`) into bit
    operations, in place (see deploy.fold): packed convs feeding packed convs through BN, ReLU, max-pool
    and sign write bits, max-pools of signs become :class:`BitMaxPool`, the BN in front of a sign becomes
    the packing's thresholds and a BN read only by a packed conv's output its scales. The other float convs
    switch to channels-last memory, which torch's CPU pooling and BN run faster. ``example`` is an input
    (or its shape) for the one traced forward. Returns the plan (deploy.fold's Chain and AffineFold list).
    """
    example = example if isinstance(example, torch.Tensor) else torch.zeros(tuple(example))
    model.eval()
    plan = fold.find_folds(model, example, is_packed=lambda m: isinstance(m, PackedConv2d), is_sign=_is_sign)
    modules = dict(model.named_modules())
    for step in plan:
        if isinstance(step, fold.AffineFold):
            modules[step.conv].fold_affine(step.scale, step.shift)
            _replace(model, step.bn, nn.Identity())
            continue
        pool = modules[step.pool] if step.pool else None
        replacement = {name: nn.Identity() for name in step.modules}
        if step.source == "bits":
            modules[step.producer].fold_output(step.threshold, step.invert)
            if pool is not None:
                replacement[step.pool] = BitMaxPool.from_pool(pool, step.post_invert)
        elif pool is not None:  # the chain's first layer packs (and pools) the float tensor
            geometry = (pool.kernel_size, pool.stride, pool.padding)
            replacement[step.modules[0]] = SignPack(step.threshold, step.invert, geometry, step.post_invert)
        else:
            modules[step.consumer].fold_input(step.threshold, step.invert)
        for name, module in replacement.items():
            _replace(model, name, module)
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.to(memory_format=torch.channels_last)
    return plan


def load_packed(path, device="cpu", *, fallback=False):
    """``(model, config, report)``: the export at ``path`` rebuilt with packed convs, in eval mode.

    Reads and verifies the file (``deploy.export.read_export``: ExportError for a missing, truncated or
    tampered file), rebuilds the dense model (``load_export``) and swaps in :class:`PackedConv2d` for
    every binarized conv that can run packed (:func:`pack_model`, whose report is returned). Layers
    that cannot raise :class:`PackedError` unless ``fallback``, which runs them dense. Packed convs run on
    the CPU: another ``device`` raises PackedError, or with ``fallback`` gives the dense model there.
    """
    tensors, config, layers = contents = export.read_export(path)
    model, _ = export.load_export(path, contents=contents)
    device = torch.device(device)
    if device.type != "cpu":
        if not fallback:
            raise PackedError(f"{path}: packed inference runs on the CPU, not {device}; use the CPU, or pass "
                              f"--packed auto to run the model dense")
        report = [dict(name=name, index=layers[name].get("index"), packed=False,
                       reason=f"packed convs run on the CPU, not {device}")
                  for name, _ in model.named_modules() if name in layers]
        return model.to(device).eval(), config, report
    report = pack_model(model, layers, tensors=tensors, fallback=fallback, source=path)
    if any(row["packed"] for row in report):
        size = config.get("inpsize") or models.model_info(config["model_def"]).default_inpsize
        fold_model(model, (1, config.get("in_channels") or 1, size, size))
    return model.eval(), config, report


# The name this function had when it lived in the export module (the README still uses it).
load_export_packed = load_packed
