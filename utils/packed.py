"""Bit-packed inference of exported binarized models: convs on sign-binarized inputs computed with AND +
popcount over 64-bit words instead of float multiply-adds.

    model, config, report = load_packed("sketchanet.safetensors")            # PackedError if a layer can't pack
    model, config, report = load_packed("resnet.safetensors", fallback=True)  # such layers stay dense
    packed = PackedConv2d.from_conv(conv, mask, alpha, beta)                  # one conv

:class:`PackedConv2d` stands for a conv whose weight is two-valued per filter and whose input is the
output of a sign; it packs the input along channels into machine words (one bit per value) and runs
numba kernels whose inner loop is an 8-lane AND + popcount (vpopcntq where the CPU has AVX-512
VPOPCNTDQ) over register tiles of pixels x output channels. :func:`packed_model` swaps it in for every
eligible conv of a dense model rebuilt from an export (``utils.export.load_export``) and reports the
binarized layers it cannot cover; :func:`load_packed` does both from a file. BN, pooling and every
layer that is not packed stay in torch; the sign in front of a packed conv is folded into its packing
(:class:`PreSign`). numba is imported on first use, so this module imports without it and raises
:class:`PackedUnavailable` only when a packed conv is built.
"""

import sys

import numpy as np
import torch
from torch import nn

import binarize
from utils import export

__all__ = ["PackedError", "PackedUnavailable", "PackedConv2d", "PreSign", "packed_model", "load_packed",
           "report_line"]

WORD = 64    # input channels per machine word
LANES = 8    # uint64 lanes of one vector register (512 bits)
TILE = 4     # output pixels per register tile
TASK_PIXELS = 64  # output pixels per parallel task, at most
MIN_TASK_PIXELS = 16  # ... and at least (then the channels are split for small outputs)
TASKS_PER_THREAD = 8
SERIAL_WORK = 120_000  # a conv with less work (outputs x (taps x words + 4)) runs on one thread

_kernels = None


class PackedUnavailable(ImportError):
    """Packed inference needs numba, which is not installed."""


class PackedError(ValueError):
    """A model (or export) with binarized layers that the packed path cannot run."""


def _require_kernels():
    """The compiled kernel set, built on first use; PackedUnavailable without numba."""
    global _kernels
    if _kernels is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            raise PackedUnavailable("packed inference needs numba: pip install numba, or pass --packed auto to "
                                    "run the model dense") from None
        if sys.byteorder != "little":
            raise PackedUnavailable("packed inference assumes a little-endian CPU; pass --packed auto to run the "
                                    "model dense")
        _kernels = _Kernels()
    return _kernels


class _Kernels:
    """The numba kernels: one input packer, and one conv per register-tile width (compiled when first used).

    The hot loops are written as LLVM IR through numba intrinsics, so that the vector width, the register
    tile and the popcount are what we ask for and not what the auto-vectoriser guesses (it vectorises the
    tap loop instead of the channel lanes and spills the tile).
    """

    def __init__(self):
        import numba
        from llvmlite import ir
        from numba import njit, prange, types
        from numba.core import cgutils
        from numba.extending import intrinsic

        self.numba = numba
        self._ir, self._types, self._cgutils, self._intrinsic = ir, types, cgutils, intrinsic
        self._njit, self._prange = njit, prange
        self._convs = {}
        self.pack = self._build_pack()

    # -- LLVM IR helpers ------------------------------------------------------------------------------------
    def _data(self, context, builder, sig, args, i):
        return context.make_array(sig.args[i])(context, builder, args[i]).data

    def _splat(self, builder, value, count):
        ir = self._ir
        vtype = ir.VectorType(value.type, count)
        undef = ir.Constant(vtype, ir.Undefined)
        first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count))

    # -- input packing ---------------------------------------------------------------------------------------
    def _build_pack(self):
        ir, types, cgutils, intrinsic = self._ir, self._types, self._cgutils, self._intrinsic
        i64 = ir.IntType(64)
        data, splat = self._data, self._splat

        @intrinsic
        def bits16(typingctx, x, off):
            """uint64 whose bit j says x[off + j] > 0, j < 16 (one compare into a mask register)."""
            def codegen(context, builder, sig, args):
                vtype = ir.VectorType(ir.FloatType(), 16)
                ptr = builder.bitcast(builder.gep(data(context, builder, sig, args, 0), [args[1]]), vtype.as_pointer())
                positive = builder.fcmp_ordered(">", builder.load(ptr, align=4), ir.Constant(vtype, [0.0] * 16))
                return builder.zext(builder.bitcast(positive, ir.IntType(16)), i64)
            return types.uint64(x, types.intp), codegen

        @intrinsic
        def words16(typingctx, x, off, cstride, nbits, out):
            """Words of 16 consecutive pixels of a channel-major input, into out[0:16]: bit c of word p says
            x[off + c * cstride + p] > 0 (c < nbits; one compare per channel, 16 pixels into a mask)."""
            def codegen(context, builder, sig, args):
                xptr, optr = data(context, builder, sig, args, 0), data(context, builder, sig, args, 4)
                _, off, cstride, nbits, _ = args
                ftype, wtype = ir.VectorType(ir.FloatType(), 16), ir.VectorType(i64, 16)
                acc = cgutils.alloca_once_value(builder, ir.Constant(wtype, [0] * 16))
                with cgutils.for_range(builder, nbits) as loop:
                    c = loop.index
                    src = builder.gep(xptr, [builder.add(off, builder.mul(c, cstride))])
                    values = builder.load(builder.bitcast(src, ftype.as_pointer()), align=4)
                    positive = builder.fcmp_ordered(">", values, ir.Constant(ftype, [0.0] * 16))
                    bit = splat(builder, builder.shl(ir.Constant(i64, 1), c), 16)
                    chosen = builder.select(positive, bit, ir.Constant(wtype, [0] * 16))
                    builder.store(builder.or_(builder.load(acc), chosen), acc)
                builder.store(builder.load(acc), builder.bitcast(optr, wtype.as_pointer()), align=8)
                return context.get_dummy_value()
            return types.void(x, types.intp, types.intp, types.intp, out), codegen

        U = np.uint64
        prange = self._prange
        chunk = 256  # pixels of one channel-major task

        @self._njit(parallel=True, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def pack(x, nhwc, sy, sx, ph, pw, xp):
            # x: float32 [B, C, H, W] (nhwc False) or [B, H, W, C]; xp: uint64 [B, Hs + 2ph, Ws + 2pw, words],
            # zeroed by the caller (the border stays zero), of every sy-th row and sx-th column of x (Hs, Ws
            # of them; steps above 1 for channels-last inputs only)
            B, Hp, Wp, NW = xp.shape
            of = xp.reshape(xp.size)
            xf = x.reshape(x.size)
            if nhwc:
                H, W, C = x.shape[1], x.shape[2], x.shape[3]
                Hs, Ws = Hp - 2 * ph, Wp - 2 * pw
                for t in prange(B * Hs):
                    b = t // Hs
                    y = t - b * Hs
                    for px in range(Ws):
                        src = ((b * H + y * sy) * W + px * sx) * C
                        dst = ((b * Hp + y + ph) * Wp + px + pw) * NW
                        for w in range(NW):
                            c0 = w * WORD
                            n = min(WORD, C - c0)
                            word = U(0)
                            j = 0
                            while j + 16 <= n:
                                word |= bits16(xf, src + c0 + j) << U(j)
                                j += 16
                            while j < n:
                                if xf[src + c0 + j] > 0:
                                    word |= U(1) << U(j)
                                j += 1
                            of[dst + w] = word
            else:
                # each channel plane is contiguous over its H * W pixels: 16 of them per compare, across rows
                C, H, W = x.shape[1], x.shape[2], x.shape[3]
                HW = H * W
                chunks = (HW + chunk - 1) // chunk
                for t in prange(B * NW * chunks):
                    b = t // (NW * chunks)
                    w = (t // chunks) % NW
                    q = (t % chunks) * chunk
                    end = min(HW, q + chunk)
                    c0 = w * WORD
                    n = min(WORD, C - c0)
                    base = (b * C + c0) * HW
                    scratch = np.empty(16, np.uint64)
                    while q < end:
                        if HW >= 16:
                            q0 = min(q, HW - 16)  # the last group of a plane overlaps the one before
                            words16(xf, base + q0, HW, n, scratch)
                        else:
                            q0 = q
                            for p in range(end - q):
                                word = U(0)
                                for j in range(n):
                                    if xf[base + j * HW + q + p] > 0:
                                        word |= U(1) << U(j)
                                scratch[p] = word
                        y = q // W
                        px = q - y * W
                        for p in range(q - q0, min(16, end - q0)):
                            of[((b * Hp + y + ph) * Wp + px + pw) * NW + w] = scratch[p]
                            px += 1
                            if px == W:
                                px = 0
                                y += 1
                        q = q0 + 16
        return pack

    # -- the conv ------------------------------------------------------------------------------------------
    def _build_tile(self, pixels, vectors):
        """The register tile: ``pixels`` output pixels x ``vectors`` * 8 output channels, every tap and word.

        tile(xf, i0, offs, wt, woff, nrow, rowlen, rowstride, out, ooffs, diff, beta, bias, etab, eoffs, nvs, c0,
        cn): pixel p is entry i0 + p of offs, ooffs, eoffs and nvs. It reads its window at xf[offs + ky *
        rowstride + j] (j < rowlen = kw * words, ky < nrow), the block's weights at wt[woff + (ky * rowlen +
        j) * CB + lane]; it accumulates A = popcount(x & e) per pixel and lane and S = popcount(x) per pixel,
        and writes channels c = c0 .. c0 + cn - 1 of pixel p:
        out[ooffs + c] = diff[c] * (2 A - etab[eoffs + c]) + (beta[c] * (2 S - nvs) + bias[c]).
        """
        ir, types, cgutils, intrinsic = self._ir, self._types, self._cgutils, self._intrinsic
        data, splat = self._data, self._splat
        i64, f32 = ir.IntType(64), ir.FloatType()
        block = vectors * LANES

        @intrinsic
        def tile(typingctx, xf, i0, offs, wt, woff, nrow, rowlen, rowstride, out, ooffs, diff, beta, bias, etab,
                 eoffs, nvs, c0, cn):
            def codegen(context, builder, sig, args):
                xptr, optr, wptr, outptr, ooptr, dptr, bptr, biasptr, eptr, eoptr, nvptr = (
                    data(context, builder, sig, args, i) for i in (0, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15))
                i0, woff, nrow, rowlen, rowstride, c0, cn = (args[i] for i in (1, 4, 5, 6, 7, 16, 17))
                const = lambda v: ir.Constant(i64, v)  # noqa: E731

                def lanes(ptr, off, vtype, align):
                    return builder.load(builder.bitcast(builder.gep(ptr, [off]), vtype.as_pointer()), align=align)

                wtype, ftype = ir.VectorType(i64, LANES), ir.VectorType(f32, LANES)
                ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(wtype, [wtype]),
                                                       f"llvm.ctpop.v{LANES}i64")
                fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ftype, [ftype] * 3),
                                                     f"llvm.fma.v{LANES}f32")
                # allocas in the entry block: mem2reg turns them into registers across the loops
                acc = [[cgutils.alloca_once_value(builder, ir.Constant(wtype, [0] * LANES)) for _ in range(vectors)]
                       for _ in range(pixels)]
                sums = [cgutils.alloca_once_value(builder, const(0)) for _ in range(pixels)]
                entry = [builder.add(i0, const(p)) for p in range(pixels)]
                offs = [builder.load(builder.gep(optr, [entry[p]])) for p in range(pixels)]
                with cgutils.for_range(builder, nrow) as rows:
                    rowbase = builder.mul(rows.index, rowstride)
                    kbase = builder.mul(rows.index, rowlen)
                    with cgutils.for_range(builder, rowlen) as taps:
                        wbase = builder.add(woff, builder.mul(builder.add(kbase, taps.index), const(block)))
                        weights = [lanes(wptr, builder.add(wbase, const(v * LANES)), wtype, 8) for v in range(vectors)]
                        xo = builder.add(rowbase, taps.index)
                        for p in range(pixels):
                            word = builder.load(builder.gep(xptr, [builder.add(offs[p], xo)]))
                            builder.store(builder.add(builder.load(sums[p]), builder.ctpop(word)), sums[p])
                            broadcast = splat(builder, word, LANES)
                            for v in range(vectors):
                                count = builder.call(ctpop, [builder.and_(broadcast, weights[v])])
                                builder.store(builder.add(builder.load(acc[p][v]), count), acc[p][v])

                at = [builder.add(c0, const(v * LANES)) for v in range(vectors)]
                diffv = [lanes(dptr, at[v], ftype, 4) for v in range(vectors)]
                betav = [lanes(bptr, at[v], ftype, 4) for v in range(vectors)]
                biasv = [lanes(biasptr, at[v], ftype, 4) for v in range(vectors)]
                results = []
                for p in range(pixels):
                    # boxsum and conv(x, e) are exact integers; only the scaling below rounds
                    nv = builder.load(builder.gep(nvptr, [entry[p]]))
                    box = builder.sitofp(builder.sub(builder.shl(builder.load(sums[p]), const(1)), nv), f32)
                    box = splat(builder, box, LANES)
                    eo = builder.add(builder.load(builder.gep(eoptr, [entry[p]])), c0)
                    row = []
                    for v in range(vectors):
                        e = lanes(eptr, builder.add(eo, const(v * LANES)), wtype, 8)
                        doubled = builder.shl(builder.load(acc[p][v]), ir.Constant(wtype, [1] * LANES))
                        selected = builder.sitofp(builder.sub(doubled, e), ftype)
                        boxed = builder.call(fma, [betav[v], box, biasv[v]])
                        row.append(builder.call(fma, [diffv[v], selected, boxed]))
                    results.append(row)
                dsts = [builder.gep(outptr, [builder.add(builder.load(builder.gep(ooptr, [entry[p]])), c0)])
                        for p in range(pixels)]
                with builder.if_else(builder.icmp_signed("==", cn, const(block))) as (full, partial):
                    with full:
                        for p in range(pixels):
                            for v in range(vectors):
                                dst = builder.bitcast(builder.gep(dsts[p], [const(v * LANES)]), ftype.as_pointer())
                                builder.store(results[p][v], dst, align=4)
                    with partial:  # the last block of a layer whose C_out is not a multiple of the block
                        staging = cgutils.alloca_once(builder, ir.ArrayType(f32, block))
                        first = builder.gep(staging, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 0)])
                        for p in range(pixels):
                            for v in range(vectors):
                                dst = builder.bitcast(builder.gep(first, [const(v * LANES)]), ftype.as_pointer())
                                builder.store(results[p][v], dst, align=4)
                            cgutils.raw_memcpy(builder, dsts[p], first, cn, 4)
                return context.get_dummy_value()
            ints = (types.intp,) * 4
            return types.void(xf, types.intp, offs, wt, *ints, out, ooffs, diff, beta, bias, etab, eoffs, nvs,
                              types.intp, types.intp), codegen
        return tile

    def conv(self, vectors):
        """The conv kernel with blocks of ``vectors`` * 8 output channels (compiled on first request)."""
        if vectors not in self._convs:
            self._convs[vectors] = self._build_conv(vectors)
        return self._convs[vectors]

    def _build_conv(self, vectors):
        block = vectors * LANES
        wide, narrow = self._build_tile(TILE, vectors), self._build_tile(1, vectors)
        prange, pack = self._prange, self.pack
        threads, set_threads = self.numba.get_num_threads, self.numba.set_num_threads

        @self._njit(parallel=True, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def conv(x, nhwc, out, wt, diff, beta, bias, etab, nvtab, rowcls, colcls, sy, sx, sh, sw, ph, pw, KH, KW, NW):
            # x: the float input (see pack); out: float32 [B, Ho, Wo, C_out]; etab: int64 [row classes,
            # column classes, C_out padded to the block], the set mask bits on the valid taps; nvtab: int64
            # [row classes, column classes], valid taps times C_in; rowcls, colcls: the class of each output
            # row and column; sy, sx: input steps (see pack). Tasks: a run of consecutive output pixels x a
            # group of channel blocks.
            B, Ho, Wo, cout = out.shape
            H, W = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
            H, W = (H + sy - 1) // sy, (W + sx - 1) // sx
            workers = threads()
            if B * Ho * Wo * diff.shape[0] * (KH * KW * NW + 4) < SERIAL_WORK:
                set_threads(1)  # waking the other threads costs more than they save
            xp = np.zeros((B, H + 2 * ph, W + 2 * pw, NW), np.uint64)
            pack(x, nhwc, sy, sx, ph, pw, xp)
            Hp, Wp = xp.shape[1], xp.shape[2]
            padded = diff.shape[0]
            nblocks = padded // block
            ncols = nvtab.shape[1]
            K = KH * KW * NW
            xf = xp.reshape(xp.size)
            of = out.reshape(out.size)
            ef = etab.reshape(etab.size)
            npix = B * Ho * Wo
            # enough tasks for an even share per thread: shorter runs of pixels down to MIN_TASK_PIXELS,
            # then the channel blocks split into groups
            want = TASKS_PER_THREAD * threads()
            size = min(TASK_PIXELS, max(MIN_TASK_PIXELS, (npix + want - 1) // want))
            chunks = (npix + size - 1) // size
            groups = max(1, min(nblocks, (want + chunks - 1) // chunks))
            per = (nblocks + groups - 1) // groups
            for t in prange(chunks * groups):
                g = t // chunks
                q0 = (t % chunks) * size
                n = min(npix, q0 + size) - q0
                entries = np.empty((4, n), np.int64)
                offs, ooffs, eoffs, nvs = entries[0], entries[1], entries[2], entries[3]
                b = q0 // (Ho * Wo)
                oy = (q0 - b * Ho * Wo) // Wo
                ox = q0 - (b * Ho + oy) * Wo
                for i in range(n):
                    rc, cc = rowcls[oy], colcls[ox]
                    offs[i] = ((b * Hp + oy * sh) * Wp + ox * sw) * NW
                    ooffs[i] = (q0 + i) * cout
                    eoffs[i] = (rc * ncols + cc) * padded
                    nvs[i] = nvtab[rc, cc]
                    ox += 1
                    if ox == Wo:
                        ox = 0
                        oy += 1
                        if oy == Ho:
                            oy = 0
                            b += 1
                for blk in range(g * per, min(nblocks, (g + 1) * per)):
                    c0 = blk * block
                    cn = min(block, cout - c0)
                    woff = blk * K * block
                    if n >= TILE:
                        for i in range(0, n, TILE):
                            # the last tile overlaps the one before instead of running short
                            wide(xf, min(i, n - TILE), offs, wt, woff, KH, KW * NW, Wp * NW, of, ooffs, diff, beta,
                                 bias, ef, eoffs, nvs, c0, cn)
                    else:
                        for i in range(n):
                            narrow(xf, i, offs, wt, woff, KH, KW * NW, Wp * NW, of, ooffs, diff, beta, bias, ef,
                                   eoffs, nvs, c0, cn)
            set_threads(workers)
        return conv


def _pair(value, what):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value}")
    return value


def _window_classes(size, kernel, stride, pad):
    """Per output position along one axis, the index of its class of valid taps [lo, hi), and the classes."""
    start = np.arange((size + 2 * pad - kernel) // stride + 1) * stride
    bounds = np.stack([np.maximum(0, pad - start), np.minimum(kernel, size + pad - start)], axis=1)
    classes, index = np.unique(bounds, axis=0, return_inverse=True)
    return classes, index.reshape(-1).astype(np.int64)


class PackedConv2d(nn.Module):
    """A conv with a two-value weight per filter on a sign-binarized input, computed on packed bits.

    The weight is ``W[c] = beta[c] + (alpha[c] - beta[c]) * e[c]`` with ``e`` a bool mask of shape
    [C_out, C_in, kh, kw]; the input stands for values in {-1, +1} (a sign's output, or what the sign
    would be applied to): a value > 0 counts as +1 and anything else as -1, so an exact 0
    (``torch.sign(0)``) or a NaN counts as -1, where a dense conv on the sign's output adds nothing (or
    NaN). With the input bits b (x = 2b - 1), per output position and filter, summing over the taps of
    the window that fall inside the input (zero padding contributes nothing):

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
        _require_kernels()
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
        c_out, (kh, kw) = self.out_channels, self.kernel_size
        words = self.weight_bits.shape[-1]
        self._vectors = 1 if c_out <= LANES else 2 if c_out <= 2 * LANES else 4
        block = self._vectors * LANES
        padded = -(-c_out // block) * block
        w = np.zeros((padded, kh, kw, words), np.uint64)
        w[:c_out] = self.weight_bits.numpy().view(np.uint64)
        # [blocks, kh, kw, words, block]: one tap-word of a block is one contiguous run of lanes
        self._wt = np.ascontiguousarray(w.reshape(padded // block, block, kh, kw, words).transpose(0, 2, 3, 4, 1))
        self._wt = self._wt.reshape(-1)
        taps = np.zeros((padded, kh, kw), np.int64)
        taps[:c_out] = np.bitwise_count(self.weight_bits.numpy().view(np.uint64)).sum(axis=-1)
        self._taps = np.zeros((padded, kh + 1, kw + 1), np.int64)  # 2-D prefix sums over the taps
        self._taps[:, 1:, 1:] = taps.cumsum(1).cumsum(2)

        def padded32(t):
            out = np.zeros(padded, np.float32)
            if t is not None:
                out[:c_out] = t.detach().float().numpy()
            return out

        self._diff = padded32(self.alpha - self.beta)
        self._beta32, self._bias32 = padded32(self.beta), padded32(self.bias)
        self._words = words
        self._plans = {}

    def _plan(self, shape):
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
        if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
            # a strided 1x1 conv reads every sh-th row and sw-th column only: pack just those, then stride 1
            steps, (sh, sw) = (sh, sw), (1, 1)
            height, width = -(-height // steps[0]), -(-width // steps[1])
        rows, rowcls = _window_classes(height, kh, sh, ph)
        cols, colcls = _window_classes(width, kw, sw, pw)
        t = self._taps
        etab = np.empty((len(rows), len(cols), t.shape[0]), np.int64)
        nvtab = np.empty((len(rows), len(cols)), np.int64)
        for r, (y0, y1) in enumerate(rows):
            for c, (x0, x1) in enumerate(cols):
                etab[r, c] = t[:, y1, x1] - t[:, y0, x1] - t[:, y1, x0] + t[:, y0, x0]
                nvtab[r, c] = (y1 - y0) * (x1 - x0) * self.in_channels
        tables = (self._wt, self._diff, self._beta32, self._bias32, etab, nvtab, rowcls, colcls)
        geometry = (sh, sw, ph, pw, kh, kw, self._words)
        plan = ((batch, len(rowcls), len(colcls), self.out_channels), tables, steps, geometry)
        self._plans[tuple(shape)] = plan
        return plan

    def forward(self, x):
        plan = self._plans.get(x.shape)
        out_shape, tables, steps, geometry = plan if plan is not None else self._plan(x.shape)
        if not x.is_cpu:
            raise ValueError(f"PackedConv2d runs on the CPU; got an input on {x.device}")
        dtype = x.dtype
        if dtype != torch.float32:
            x = (x > 0).to(torch.float32)  # only the sign is read
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
        # numpy's allocator hands back recently freed memory; torch.empty of a large tensor often maps fresh
        # pages, and faulting them in costs as much as a small conv
        out = np.empty(out_shape, dtype=np.float32)
        (_kernels or _require_kernels()).conv(self._vectors)(array, nhwc, out, *tables, *steps, *geometry)
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

    The packed conv reads only whether each input value is > 0, and ``sign(v) > 0`` exactly when
    ``v > 0``, so the sign (a pass over the activation, ~5% of a packed ResNet-18's forward) is folded
    into the packing; an input of exactly 0 counts as -1 either way.
    """

    def __init__(self, binarizer):
        super().__init__()
        self.binarizer = binarizer

    def forward(self, x):
        return self.binarizer.pre_sign(x)


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
        alpha, beta = export._scales(tensors, name, layer)
        return export._mask(tensors, name, layer), alpha, beta
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
def packed_model(model, layers, *, tensors=None, fallback=False, source="model"):
    """Replace every binarized conv of ``model`` that can run packed by a :class:`PackedConv2d`, in place.

    ``model`` is a dense model with plain convs (``utils.export.load_export``), ``layers`` the export's
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
            _require_kernels()
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


def load_packed(path, device="cpu", *, fallback=False):
    """``(model, config, report)``: the export at ``path`` rebuilt with packed convs, in eval mode.

    Reads and verifies the file (``utils.export.read_export``: ExportError for a missing, truncated or
    tampered file), rebuilds the dense model (``load_export``) and swaps in :class:`PackedConv2d` for
    every binarized conv that can run packed (:func:`packed_model`, whose report is returned). Layers
    that cannot raise :class:`PackedError` unless ``fallback``, which runs them dense. Packed convs run on
    the CPU: another ``device`` raises PackedError, or with ``fallback`` gives the dense model there.
    """
    tensors, config, layers = export.read_export(path)
    model, _ = export.load_export(path)
    device = torch.device(device)
    if device.type != "cpu":
        if not fallback:
            raise PackedError(f"{path}: packed inference runs on the CPU, not {device}; use the CPU, or pass "
                              f"--packed auto to run the model dense")
        report = [dict(name=name, index=layers[name].get("index"), packed=False,
                       reason=f"packed convs run on the CPU, not {device}")
                  for name, _ in model.named_modules() if name in layers]
        return model.to(device).eval(), config, report
    report = packed_model(model, layers, tensors=tensors, fallback=fallback, source=path)
    return model.eval(), config, report
