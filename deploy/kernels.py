"""The numba kernels of bit-packed inference: an input packer (signs to bits, 64 channels a word) and
binary convs whose inner loop is an 8-lane AND + popcount over register tiles of pixels x output
channels (vpopcntq where the CPU has AVX-512 VPOPCNTDQ, LLVM's popcount lowering elsewhere).

numba is imported on first use (:func:`require_kernels`), so this module imports without it.
"""

import sys

import numpy as np

WORD = 64    # input channels per machine word
LANES = 8    # uint64 lanes of one vector register (512 bits)
TILE = 4     # output pixels per register tile
TASK_PIXELS = 64  # output pixels per parallel task, at most
MIN_TASK_PIXELS = 16  # ... and at least (then the channels are split for small outputs)
TASKS_PER_THREAD = 8
SERIAL_WORK = 120_000  # a conv with less work (outputs x (taps x words + 4)) runs the serial kernels

_compiled = None


def kernel_path():
    """The popcount path the kernels compile to on this CPU, in words (numba compiles for the host CPU)."""
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
        name = binding.get_host_cpu_name()
    except (ImportError, RuntimeError):
        return "unknown (llvmlite is not installed)"
    if features.get("avx512vpopcntdq") and features.get("avx512f"):
        return f"AVX-512 VPOPCNTDQ (vpopcntq on 8 x 64-bit lanes; LLVM target {name})"
    if features.get("avx2"):
        return f"AVX2 (vector popcount by nibble lookup, vpshufb + vpsadbw, on 4 x 64-bit lanes; LLVM target {name})"
    return f"scalar popcnt (no AVX2; LLVM target {name})"


class PackedUnavailable(ImportError):
    """Packed inference needs numba, which is not installed."""


def require_kernels():
    """The compiled kernel set, built on first use; PackedUnavailable without numba."""
    global _compiled
    if _compiled is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            raise PackedUnavailable("packed inference needs numba: pip install numba, or pass --packed auto to "
                                    "run the model dense") from None
        if sys.byteorder != "little":
            raise PackedUnavailable("packed inference assumes a little-endian CPU; pass --packed auto to run the "
                                    "model dense")
        _compiled = _Kernels()
        _follow_torch_threads(_compiled.numba)
    return _compiled


def _follow_torch_threads(numba):
    """numba's thread count set to torch's (at most numba's pool), so that packed and dense layers use the
    same cores; torch's count is set again after, since numba's first call can reset the shared OpenMP pool."""
    import torch
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    torch.set_num_threads(threads)


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
        # each kernel twice: with parallel loops (large layers), and serial, which saves the few microseconds
        # of starting a parallel region that dominate the small layers of a CIFAR ResNet
        (self.pack, self.pack_taps), (self.pack_serial, self.pack_taps_serial) = (self._build_pack(True),
                                                                                  self._build_pack(False))
        (self.window, self.bitpool), (self.window_serial, _) = self._build_bit_ops(True), self._build_bit_ops(False)
        self.reference = self._build_reference()

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
    def _build_compares(self):
        """The packer's vector compares: ``bits16`` (16 channels of one pixel) and ``words16`` (16 pixels of up
        to 64 channels). A value sets its bit when it is >= its channel's threshold (0 for a plain sign, so
        sign(0) is +1); a NaN (unordered) leaves the bit clear."""
        ir, types, cgutils, intrinsic = self._ir, self._types, self._cgutils, self._intrinsic
        i64 = ir.IntType(64)
        data, splat = self._data, self._splat

        @intrinsic
        def bits16(typingctx, x, off, thr, toff):
            """uint64 whose bit j says x[off + j] >= thr[toff + j], j < 16 (one compare into a mask register)."""
            def codegen(context, builder, sig, args):
                vtype = ir.VectorType(ir.FloatType(), 16)
                ptr = builder.bitcast(builder.gep(data(context, builder, sig, args, 0), [args[1]]), vtype.as_pointer())
                tptr = builder.bitcast(builder.gep(data(context, builder, sig, args, 2), [args[3]]),
                                       vtype.as_pointer())
                positive = builder.fcmp_ordered(">=", builder.load(ptr, align=4), builder.load(tptr, align=4))
                return builder.zext(builder.bitcast(positive, ir.IntType(16)), i64)
            return types.uint64(x, types.intp, thr, types.intp), codegen

        @intrinsic
        def words16(typingctx, x, off, cstride, nbits, thr, c0, out):
            """Words of 16 consecutive pixels of a channel-major input, into out[0:16]: bit c of word p says
            x[off + c * cstride + p] >= thr[c0 + c] (c < nbits; one compare per channel, 16 pixels into a mask)."""
            def codegen(context, builder, sig, args):
                xptr, tptr = data(context, builder, sig, args, 0), data(context, builder, sig, args, 4)
                optr = data(context, builder, sig, args, 6)
                _, off, cstride, nbits, _, c0, _ = args
                ftype, wtype = ir.VectorType(ir.FloatType(), 16), ir.VectorType(i64, 16)
                acc = cgutils.alloca_once_value(builder, ir.Constant(wtype, [0] * 16))
                with cgutils.for_range(builder, nbits) as loop:
                    c = loop.index
                    src = builder.gep(xptr, [builder.add(off, builder.mul(c, cstride))])
                    values = builder.load(builder.bitcast(src, ftype.as_pointer()), align=4)
                    level = splat(builder, builder.load(builder.gep(tptr, [builder.add(c0, c)])), 16)
                    positive = builder.fcmp_ordered(">=", values, level)
                    bit = splat(builder, builder.shl(ir.Constant(i64, 1), c), 16)
                    chosen = builder.select(positive, bit, ir.Constant(wtype, [0] * 16))
                    builder.store(builder.or_(builder.load(acc), chosen), acc)
                builder.store(builder.load(acc), builder.bitcast(optr, wtype.as_pointer()), align=8)
                return context.get_dummy_value()
            return types.void(x, types.intp, types.intp, types.intp, thr, types.intp, out), codegen
        return bits16, words16

    def _build_pack(self, parallel):
        """The input packer: signs to bits, bit j of word w of a pixel set when channel 64 w + j is >= 0."""
        bits16, words16 = self._build_compares()
        U = np.uint64
        prange = self._prange
        chunk = 256  # pixels of one channel-major task

        @self._njit(parallel=parallel, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def pack(x, nhwc, thr, invw, sy, sx, ph, pw, xp):
            # x: float32 [B, C, H, W] (nhwc False) or [B, H, W, C]; xp: uint64 [B, Hs + 2ph, Ws + 2pw, words],
            # zeroed by the caller (the border stays zero), of every sy-th row and sx-th column of x (Hs, Ws
            # of them; steps above 1 for channels-last inputs only). Bit c is x >= thr[c], then flipped where
            # invw has a bit set (a per-channel predicate folded from the BN, ReLU and pooling before a sign).
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
                                word |= bits16(xf, src + c0 + j, thr, c0 + j) << U(j)
                                j += 16
                            while j < n:
                                if xf[src + c0 + j] >= thr[c0 + j]:
                                    word |= U(1) << U(j)
                                j += 1
                            of[dst + w] = word ^ invw[w]
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
                            words16(xf, base + q0, HW, n, thr, c0, scratch)
                        else:
                            q0 = q
                            for p in range(end - q):
                                word = U(0)
                                for j in range(n):
                                    if xf[base + j * HW + q + p] >= thr[c0 + j]:
                                        word |= U(1) << U(j)
                                scratch[p] = word
                        y = q // W
                        px = q - y * W
                        for p in range(q - q0, min(16, end - q0)):
                            of[((b * Hp + y + ph) * Wp + px + pw) * NW + w] = scratch[p] ^ invw[w]
                            px += 1
                            if px == W:
                                px = 0
                                y += 1
                        q = q0 + 16

        @self._njit(parallel=parallel, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def pack_taps(x, thr, invw, ph, pw, taps, cbits, xr):
            # a channels-last x [B, H, W, C] of C <= 32 channels (a divisor of 64) straight into the conv's
            # input words xr [B, H + 2ph, Wr, NR] (zeroed by the caller): the bits of pixel px go to the words of
            # the windows that start taps - 1 .. 0 pixels before it (see window), no second pass
            B, H, W, C = x.shape
            Wr = xr.shape[2]
            xf = x.reshape(x.size)
            for t in prange(B * H):
                b = t // H
                y = t - b * H
                for px in range(W):
                    src = ((b * H + y) * W + px) * C
                    word = U(0)
                    j = 0
                    while j + 16 <= C:
                        word |= bits16(xf, src + j, thr, j) << U(j)
                        j += 16
                    while j < C:
                        if xf[src + j] >= thr[j]:
                            word |= U(1) << U(j)
                        j += 1
                    word ^= invw[0]
                    for k in range(taps):
                        xo = px + pw - k
                        if 0 <= xo < Wr:
                            shift = k * cbits
                            xr[b, y + ph, xo, shift // 64] |= word << U(shift % 64)
        return pack, pack_taps

    # -- the reference conv --------------------------------------------------------------------------------
    def _build_reference(self):
        """``reference(bits, mask, diff, beta, bias, sh, sw, ph, pw, out)``: the binary conv by its definition,
        for tests of the tuned kernels: bits uint8 [B, H, W, C_in] (1 for +1, 0 for -1), mask uint8 [C_out,
        C_in, kh, kw], out float64 [B, Ho, Wo, C_out] = sum over the valid taps of x * (beta + diff * e), plus
        the bias, one multiply-add at a time (no words, no popcounts, no border tables)."""

        @self._njit(nogil=True, cache=False)
        def reference(bits, mask, diff, beta, bias, sh, sw, ph, pw, out):
            B, H, W, C = bits.shape
            Co, KH, KW = mask.shape[0], mask.shape[2], mask.shape[3]
            for b in range(B):
                for oy in range(out.shape[1]):
                    for ox in range(out.shape[2]):
                        for o in range(Co):
                            acc = 0.0
                            for ky in range(KH):
                                y = oy * sh + ky - ph
                                for kx in range(KW):
                                    x = ox * sw + kx - pw
                                    if 0 <= y < H and 0 <= x < W:
                                        for c in range(C):
                                            acc += (2.0 * bits[b, y, x, c] - 1.0) * (beta[o] + diff[o] * mask[o, c, ky, kx])
                            out[b, oy, ox, o] = acc + bias[o]
        return reference

    # -- bits between layers --------------------------------------------------------------------------------
    def _build_bit_ops(self, parallel):
        """``window(src, ph, pw, taps, cbits, xr)``: the conv's input words from unpadded bits [B, H, W, NW]:
        a zero border of ph rows and pw columns, and, for taps > 1, the words of ``taps`` neighbouring pixels
        side by side (bit j * cbits + c of a pixel's words is channel c of the pixel j to its right), so that
        a 3x3 window of 16 channels is 3 words instead of 9. ``bitpool(src, kh, kw, sh, sw, ph, pw, postinv,
        dst)``: the max-pool of signs, an OR of the bits over each window's valid pixels, then the words
        flipped where ``postinv`` is set (a pool in front of a BN with a negative scale becomes an AND)."""
        U = np.uint64
        prange, njit = self._prange, self._njit

        @njit(parallel=parallel, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def window(src, ph, pw, taps, cbits, xr):
            B, H, W, NW = src.shape
            Hp, Wr, NR = xr.shape[1], xr.shape[2], xr.shape[3]
            for t in prange(B * H):
                b = t // H
                y = t - b * H
                for xo in range(Wr):
                    if taps == 1:
                        x = xo - pw
                        if 0 <= x < W:
                            for w in range(NW):
                                xr[b, y + ph, xo, w] = src[b, y, x, w]
                        continue
                    for j in range(taps):
                        x = xo + j - pw
                        if 0 <= x < W:
                            shift = j * cbits
                            xr[b, y + ph, xo, shift // 64] |= src[b, y, x, 0] << U(shift % 64)

        @njit(parallel=parallel, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def bitpool(src, kh, kw, sh, sw, ph, pw, postinv, dst):
            B, H, W, NW = src.shape
            Ho, Wo = dst.shape[1], dst.shape[2]
            for t in prange(B * Ho):
                b = t // Ho
                oy = t - b * Ho
                y0, x0 = oy * sh - ph, 0
                for ox in range(Wo):
                    x0 = ox * sw - pw
                    for w in range(NW):
                        acc = U(0)
                        for y in range(max(y0, 0), min(y0 + kh, H)):
                            for x in range(max(x0, 0), min(x0 + kw, W)):
                                acc |= src[b, y, x, w]
                        dst[b, oy, ox, w] = acc ^ postinv[w]
        return window, bitpool

    # -- the conv ------------------------------------------------------------------------------------------
    def _store_tile(self, builder, results, dsts, cn, block):
        """IR that writes the tile's ``results`` (per pixel, per vector of 8 lanes) to the output rows ``dsts``:
        whole vectors when the block is full (``cn == block``), else through a staging row, ``cn`` values."""
        ir, cgutils = self._ir, self._cgutils
        i64, f32 = ir.IntType(64), ir.FloatType()
        ftype = ir.VectorType(f32, LANES)
        with builder.if_else(builder.icmp_signed("==", cn, ir.Constant(i64, block))) as (full, partial):
            with full:
                for dst_row, row in zip(dsts, results):
                    for v, values in enumerate(row):
                        dst = builder.bitcast(builder.gep(dst_row, [ir.Constant(i64, v * LANES)]), ftype.as_pointer())
                        builder.store(values, dst, align=4)
            with partial:  # the last block of a layer whose C_out is not a multiple of the block
                staging = cgutils.alloca_once(builder, ir.ArrayType(f32, block))
                first = builder.gep(staging, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 0)])
                for dst_row, row in zip(dsts, results):
                    for v, values in enumerate(row):
                        dst = builder.bitcast(builder.gep(first, [ir.Constant(i64, v * LANES)]), ftype.as_pointer())
                        builder.store(values, dst, align=4)
                    cgutils.raw_memcpy(builder, dst_row, first, cn, 4)

    def _store_bits(self, builder, results, dsts, thr, inv, c0, vectors):
        """IR that compares the tile's ``results`` with the block's thresholds and writes one bit per channel:
        ``vectors`` bytes per pixel at byte ``c0 / 8`` of its output words, flipped where ``inv`` is set."""
        ir = self._ir
        i64 = ir.IntType(64)
        itype = ir.IntType(vectors * LANES)
        byte = builder.lshr(c0, ir.Constant(i64, 3))
        flip = builder.load(builder.bitcast(builder.gep(inv, [byte]), itype.as_pointer()), align=1)
        for dst_row, row in zip(dsts, results):
            word = ir.Constant(itype, 0)
            for v, values in enumerate(row):
                above = builder.fcmp_ordered(">=", values, thr[v])
                lane = builder.zext(builder.bitcast(above, ir.IntType(LANES)), itype)
                word = builder.or_(word, builder.shl(lane, ir.Constant(itype, v * LANES)) if v else lane)
            dst = builder.bitcast(builder.gep(dst_row, [byte]), itype.as_pointer())
            builder.store(builder.xor(word, flip), dst, align=1)

    def _build_tile(self, pixels, vectors, bits):
        """The register tile: ``pixels`` output pixels x ``vectors`` * 8 output channels, every tap and word.

        tile(xf, i0, offs, wt, woff, nrow, rowlen, rowstride, out, ooffs, diff, beta, bias, thr, inv, etab,
        eoffs, nvs, c0, cn): pixel p is entry i0 + p of offs, ooffs, eoffs and nvs. It reads its window at
        xf[offs + ky * rowstride + j] (j < rowlen, ky < nrow), the block's weights at wt[woff + (ky * rowlen +
        j) * CB + lane]; it accumulates A = popcount(x & e) per pixel and lane and S = popcount(x) per pixel,
        and computes for channels c = c0 .. c0 + cn - 1 of pixel p
        v = diff[c] * (2 A - etab[eoffs + c]) + (beta[c] * (2 S - nvs) + bias[c]).
        Float output (``bits`` False): out[ooffs + c] = scale[c] * v + shift[c], with scale and shift
        interleaved in thr (8 scales, then their 8 shifts; 1 and 0 unless a BN is folded). Bit output: bit c - c0 of the bytes at out[ooffs +
        c0 / 8] is (v >= thr[c]) xor the bit of inv (one byte per 8 channels).
        """
        ir, types, cgutils, intrinsic = self._ir, self._types, self._cgutils, self._intrinsic
        data, splat = self._data, self._splat
        i64, f32 = ir.IntType(64), ir.FloatType()
        block = vectors * LANES
        store_tile, store_bits = self._store_tile, self._store_bits

        @intrinsic
        def tile(typingctx, xf, i0, offs, wt, woff, nrow, rowlen, rowstride, out, ooffs, diff, beta, bias, thr, inv,
                 etab, eoffs, nvs, c0, cn):
            def codegen(context, builder, sig, args):
                xptr, optr, wptr, outptr, ooptr, dptr, bptr, biasptr, tptr, invptr, eptr, eoptr, nvptr = (
                    data(context, builder, sig, args, i) for i in (0, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17))
                i0, woff, nrow, rowlen, rowstride, c0, cn = (args[i] for i in (1, 4, 5, 6, 7, 18, 19))
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
                if bits:
                    dsts = [builder.gep(outptr, [builder.load(builder.gep(ooptr, [entry[p]]))]) for p in range(pixels)]
                    thrv = [lanes(tptr, at[v], ftype, 4) for v in range(vectors)]
                    store_bits(builder, results, dsts, thrv, invptr, c0, vectors)
                else:  # a folded BN: scale and shift per channel, interleaved by 8 lanes in thr
                    scalev = [lanes(tptr, builder.shl(at[v], const(1)), ftype, 4) for v in range(vectors)]
                    shiftv = [lanes(tptr, builder.add(builder.shl(at[v], const(1)), const(LANES)), ftype, 4)
                              for v in range(vectors)]
                    results = [[builder.call(fma, [scalev[v], row[v], shiftv[v]]) for v in range(vectors)]
                               for row in results]
                    dsts = [builder.gep(outptr, [builder.add(builder.load(builder.gep(ooptr, [entry[p]])), c0)])
                            for p in range(pixels)]
                    store_tile(builder, results, dsts, cn, block)
                return context.get_dummy_value()
            ints = (types.intp,) * 4
            return types.void(xf, types.intp, offs, wt, *ints, out, ooffs, diff, beta, bias, thr, inv, etab, eoffs,
                              nvs, types.intp, types.intp), codegen
        return tile

    def conv(self, vectors, bits=False, serial=False):
        """The conv kernel with blocks of ``vectors`` * 8 output channels, writing floats or (``bits``) sign
        bits (compiled on first request); ``serial``: without parallel loops, for small layers."""
        key = (vectors, bool(bits), bool(serial))
        if key not in self._convs:
            self._convs[key] = self._build_conv(vectors, bool(bits), not serial)
        return self._convs[key]

    def _build_conv(self, vectors, bits, parallel):
        block = vectors * LANES
        wide, narrow = self._build_tile(TILE, vectors, bits), self._build_tile(1, vectors, bits)
        prange = self._prange
        threads = self.numba.get_num_threads

        @self._njit(parallel=parallel, nogil=True, boundscheck=False, error_model="numpy", cache=False)
        def conv(xr, out, cout, wt, diff, beta, bias, thr, inv, etab, nvtab, rowcls, colcls, sh, sw, KH, KW, NW):
            # xr: uint64 [B, Hp, Wr, NW] input words with their zero border (see window); out: float32 [B, Ho,
            # Wo, C_out], or uint8 [B, Ho, Wo, 8 * words] for bits; etab: int64 [row classes, column classes,
            # C_out padded to the block], the set mask bits on the valid taps; nvtab: int64 [row classes,
            # column classes], valid taps times C_in; rowcls, colcls: the class of each output row and column.
            # Tasks: a run of consecutive output pixels x a group of channel blocks.
            B, Hp, Wr = xr.shape[0], xr.shape[1], xr.shape[2]
            Ho, Wo, ostride = out.shape[1], out.shape[2], out.shape[3]
            padded = diff.shape[0]
            nblocks = padded // block
            ncols = nvtab.shape[1]
            K = KH * KW * NW
            xf = xr.reshape(xr.size)
            of = out.reshape(out.size)
            ef = etab.reshape(etab.size)
            npix = B * Ho * Wo
            # enough tasks for an even share per thread: shorter runs of pixels down to MIN_TASK_PIXELS,
            # then the channel blocks split into groups
            want = TASKS_PER_THREAD * (threads() if parallel else 1)
            size = min(TASK_PIXELS, max(MIN_TASK_PIXELS, (npix + want - 1) // want))
            chunks = (npix + size - 1) // size
            groups = max(1, min(nblocks, (want + chunks - 1) // chunks))
            per = (nblocks + groups - 1) // groups
            shared = np.empty((4, size), np.int64)  # a serial run's one table of pixel entries
            for t in prange(chunks * groups):
                g = t // chunks
                q0 = (t % chunks) * size
                n = min(npix, q0 + size) - q0
                entries = np.empty((4, size), np.int64) if parallel else shared
                offs, ooffs, eoffs, nvs = entries[0], entries[1], entries[2], entries[3]
                b = q0 // (Ho * Wo)
                oy = (q0 - b * Ho * Wo) // Wo
                ox = q0 - (b * Ho + oy) * Wo
                for i in range(n):
                    rc, cc = rowcls[oy], colcls[ox]
                    offs[i] = ((b * Hp + oy * sh) * Wr + ox * sw) * NW
                    ooffs[i] = (q0 + i) * ostride
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
                            wide(xf, min(i, n - TILE), offs, wt, woff, KH, KW * NW, Wr * NW, of, ooffs, diff, beta,
                                 bias, thr, inv, ef, eoffs, nvs, c0, cn)
                    else:
                        for i in range(n):
                            narrow(xf, i, offs, wt, woff, KH, KW * NW, Wr * NW, of, ooffs, diff, beta, bias, thr,
                                   inv, ef, eoffs, nvs, c0, cn)
        return conv
