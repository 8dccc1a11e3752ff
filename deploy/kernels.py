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
SERIAL_WORK = 120_000  # a conv with less work (outputs x (taps x words + 4)) runs on one thread

_compiled = None


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
    return _compiled


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
    def _build_compares(self):
        """The packer's vector compares: ``bits16`` (16 channels of one pixel) and ``words16`` (16 pixels of up
        to 64 channels). A value sets its bit when it is >= 0: sign(0) is +1, a NaN (unordered) counts as -1."""
        ir, types, cgutils, intrinsic = self._ir, self._types, self._cgutils, self._intrinsic
        i64 = ir.IntType(64)
        data, splat = self._data, self._splat

        @intrinsic
        def bits16(typingctx, x, off):
            """uint64 whose bit j says x[off + j] >= 0, j < 16 (one compare into a mask register)."""
            def codegen(context, builder, sig, args):
                vtype = ir.VectorType(ir.FloatType(), 16)
                ptr = builder.bitcast(builder.gep(data(context, builder, sig, args, 0), [args[1]]), vtype.as_pointer())
                positive = builder.fcmp_ordered(">=", builder.load(ptr, align=4), ir.Constant(vtype, [0.0] * 16))
                return builder.zext(builder.bitcast(positive, ir.IntType(16)), i64)
            return types.uint64(x, types.intp), codegen

        @intrinsic
        def words16(typingctx, x, off, cstride, nbits, out):
            """Words of 16 consecutive pixels of a channel-major input, into out[0:16]: bit c of word p says
            x[off + c * cstride + p] >= 0 (c < nbits; one compare per channel, 16 pixels into a mask)."""
            def codegen(context, builder, sig, args):
                xptr, optr = data(context, builder, sig, args, 0), data(context, builder, sig, args, 4)
                _, off, cstride, nbits, _ = args
                ftype, wtype = ir.VectorType(ir.FloatType(), 16), ir.VectorType(i64, 16)
                acc = cgutils.alloca_once_value(builder, ir.Constant(wtype, [0] * 16))
                with cgutils.for_range(builder, nbits) as loop:
                    c = loop.index
                    src = builder.gep(xptr, [builder.add(off, builder.mul(c, cstride))])
                    values = builder.load(builder.bitcast(src, ftype.as_pointer()), align=4)
                    positive = builder.fcmp_ordered(">=", values, ir.Constant(ftype, [0.0] * 16))
                    bit = splat(builder, builder.shl(ir.Constant(i64, 1), c), 16)
                    chosen = builder.select(positive, bit, ir.Constant(wtype, [0] * 16))
                    builder.store(builder.or_(builder.load(acc), chosen), acc)
                builder.store(builder.load(acc), builder.bitcast(optr, wtype.as_pointer()), align=8)
                return context.get_dummy_value()
            return types.void(x, types.intp, types.intp, types.intp, out), codegen
        return bits16, words16

    def _build_pack(self):
        """The input packer: signs to bits, bit j of word w of a pixel set when channel 64 w + j is >= 0."""
        bits16, words16 = self._build_compares()
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
                                if xf[src + c0 + j] >= 0:
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
                                    if xf[base + j * HW + q + p] >= 0:
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

        def store(builder, results, dsts, cn):
            self._store_tile(builder, results, dsts, cn, block)

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
                store(builder, results, dsts, cn)
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
