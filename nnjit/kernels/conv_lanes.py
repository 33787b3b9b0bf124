"""Forward convolution with output channels in the vector lanes: the implicit GEMM
transposed, out^T (pixels x K) = im2col(x)^T (pixels x R) @ W^T (R x K), R = C*KH*KW.

The pixel-lanes form (nnjit.kernels.conv_forward) packs an im2col panel per KC slice,
1-4 cycles a float, and wastes lanes where rows are short (13x13: 169 pixels in 192 or
224 lanes). Here the lanes hold NR output channels (two vectors) and up to MR pixels of
one output row are broadcast, each straight from the image: im2col row r = (c, ky, kx)
at pixel (oy, ox) is src[off[r] + oy * sh * Ws + ox * sw], so a tile reads MR floats at
one table offset per r, for any stride. A tile accumulates over all R in registers and is
stored once (transposed into out's rows, with the bias and ReLU): no packing of the
image and no partial tiles to reload. At strides 1 and 2 a row runs in long tiles (14
pixels where there are 32 vector registers) whose pixels are constant displacements from
one address; what is left of it, and rows of other strides, in tiles of equal width (13 =
7 + 6), so no lane is wasted.

The price is W^T: its NR-channel panels (R x NR, channels contiguous) are transposed
from W on every call, in width x width register blocks, about 8 / (N * OH * OW) of the
layer's time (a twentieth at 13x13, a sixth at 7x7). Where the padding is not zero the
image is first copied into a zero-bordered plane per channel, so every broadcast reads
real data or a zero (the images in groups whose planes fit a cap).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import helper, with_globals
from nnjit.kernels.codegen import define
from nnjit.kernels.vectors import vector_ops

LANE_VECTORS = 2                    # NR = 2 vectors of output channels


def lanes_tile(level) -> tuple[int, int]:
    """(MR, NR): at most MR pixels x NR channels. MR x 2 accumulators, two W^T vectors and
    a broadcast: 7 pixels (17 registers) where there are 32 vector registers (AVX-512,
    AArch64), 6 (15) where there are 16."""
    wide = level.vector_registers == 32
    return (7 if wide else 6), LANE_VECTORS * level.vector_floats


LONG_STRIDES = (1, 2)               # strides compiled into the long tiles


def long_tile(level) -> int:
    """Pixels of the long tiles that rows of stride 1 and 2 run in: with the stride compiled
    in, the tile's pixels are displacements from one address (a runtime stride needs a
    pointer register per pixel, and 12 spill), so 14 pixels fit 32 vector registers (28
    accumulators, two W^T vectors, two broadcasts). A 14-pixel tile stores once per 14
    pixels what a 7-pixel one stores per 7: resnet.conv1 ran 3% faster at 1 thread and 14%
    at 2, 3x3 layers 0-4% (same-process A/B)."""
    wide = level.vector_registers == 32
    return 14 if wide else lanes_tile(level)[0]


def over_channels(KH, KW, sh, sw, C, K, nr, l2_floats, l3_floats) -> bool:
    """Whether a forward convolution runs with channels in the lanes: a kernel wider than
    one tap or a stride, or a 1x1 stride-1 layer whose reduction is long (C >= 256) or
    whose K is at most C; K filling the NR-channel panels (a multiple of NR, or at least 4
    panels); a panel of W^T (R x NR) within three quarters of L2, where the tiles re-read
    it; and W with W^T within L3 (overfeat's conv4 and conv5, 19 and 38 MB of W^T, went
    through memory: 13-15% slower). 1x1 stride-1 layers against the pixel-lanes GEMM
    (same-process A/B, batch 1 and 16, 13x13 to 112x112): with C >= 256 or K <= C the
    lanes ran 1.03-1.42x as fast at 1 and 2 threads, 1.1-1.2x most often (256 channels at
    13x13: 1.10x at 1 thread, 0.92x at 2); with fewer channels in than out (64 -> 256,
    128 -> 512, 32 -> 64) the short reduction leaves a tile's transposed stores a large
    share, and they ran 0.81-1.14x. The forward kernels try dot products first."""
    R = C * KH * KW
    pointwise = KH * KW == 1 and sh * sw == 1
    return ((not pointwise or C >= 256 or K <= C) and K >= nr
            and (K % nr == 0 or K >= 4 * nr) and 4 * R * nr <= 3 * l2_floats
            and 2 * K * R <= l3_floats)


over_channels_jit = njit(inline="always")(over_channels)


def lanes_plan(N, C, H, W, K, KH, KW, OH, OW, sh, sw, pt, pl, nr, l2_floats, l3_floats,
               transformed):
    """(shared W^T floats, private W^T floats per thread, images per group, floats of one
    image's zero-bordered planes (0 where the image is read in place), plane rows, plane
    columns). Where all of W^T fits half of L2 it is transposed once, shared, and units
    go image-major; else each thread transposes the panels its run of (panel-major) units
    meets, one at a time, into a panel of its own that stays in L2: W^T never goes out to
    memory and back (resnet18's 7x7 layer, 9.4 MB of it, scaled 1.6x from 1 to 2
    threads). A ``transformed`` kernel (all of W^T given) takes neither. A group's planes
    take at most a quarter of L3."""
    R = C * KH * KW
    wt = (K + nr - 1) // nr * nr * R
    shared, private = (wt, 0) if 2 * wt <= l2_floats else (0, R * nr)
    if transformed:
        shared, private = 0, 0
    hp = (OH - 1) * sh + KH
    wp = (OW - 1) * sw + KW
    if pt == 0 and pl == 0 and hp <= H and wp <= W:
        return shared, private, N, 0, H, W
    image = C * hp * wp
    return shared, private, max(1, min(N, l3_floats // 4 // image)), image, hp, wp


lanes_plan_jit = njit(inline="always")(lanes_plan)


def scratch_pixels(mr, width):
    """Pixels of a thread's tile scratch: MR (the longest tile's) rounded up to whole
    width x width blocks, and a block more, so that a paired tile's second line (from
    pixel MR / 2) is read in whole blocks inside it too."""
    return (mr + width - 1) // width * width + width


def scratch_floats(mr, nr, width):
    """A thread's tile scratch (scratch_pixels x NR channels), then one transposed block."""
    return (scratch_pixels(mr, width) + width) * nr


scratch_floats_jit = njit(inline="always")(scratch_floats)


def lanes_workspace(N, C, H, W, K, KH, KW, OH, OW, sh, sw, pt, pl, mr, nr, width, l2_floats,
                    l3_floats, threads, transformed=False) -> int:
    shared, private, group, image = lanes_plan(N, C, H, W, K, KH, KW, OH, OW, sh, sw, pt,
                                               pl, nr, l2_floats, l3_floats, transformed)[:4]
    return shared + group * image + threads * (scratch_floats(mr, nr, width) + private)


@functools.lru_cache(maxsize=None)
def bordered_row_copy(width: int):
    """copy(d, src, left, count): d[e] = src[e - left] for left <= e < left + count, else 0,
    over all of d, in whole masked vectors: the band rows of both gradients are short
    (tens of floats), where a scalar copy loop with zero-fill loops costs a cycle a float."""
    ops = vector_ops(width)

    def copy(d, src, left, count):
        n = d.shape[0]
        e = 0
        while e + width <= n:
            vstore(d, e, vload_lanes(src, e - left, left - e, left + count - e))
            e += width
        if e < n:
            vstore_lanes(d, e, vload_lanes(src, e - left, left - e, left + count - e), n - e)

    return helper(with_globals(copy, width=width, vstore=ops["vstore"],
                               vload_lanes=ops["vload_lanes"],
                               vstore_lanes=ops["vstore_lanes"]))


@functools.lru_cache(maxsize=None)
def lanes_micro_kernel(rows: int, nr: int, width: int, stride: int = 0, lines: int = 1):
    """micro(R, wt, w0, src, base, off, step, s): s[(l * rows + i) * nr + j] = sum_r
    src[base + off[r] + l * step + i * sw] * wt[w0 + r * nr + j] for l < lines, i < rows,
    j < nr. A zero ``stride`` takes sw from ``step`` (one line); a nonzero one is sw
    compiled in, and ``step`` is then the distance between the ``lines`` output rows of
    the tile (ignored for one): two rows of up to 7 pixels a tile where rows are short
    (13 = 7 + 6: 2 x 7 pixels), each line's pixels displacements from one pointer."""
    assert lines == 1 or stride
    nv = nr // width
    pixels = lines * rows
    acc = [[f"c{i}_{v}" for v in range(nv)] for i in range(pixels)]
    lines_ = ["def micro(R, wt, w0, src, base, off, step, s):"]
    lines_ += [f"    {c} = vzero()" for row in acc for c in row]
    # unsigned offsets: indices that are provably >= 0 carry no negative-index wraparound
    if stride:
        pixel = [f"at{l} + np.uint64({i * stride})" for l in range(lines) for i in range(rows)]
        lines_ += [f"    p{l} = np.uint64(base + {l} * step)" for l in range(lines)]
    else:
        pixel = [f"at + p{i}" for i in range(rows)]
        lines_ += [f"    p{i} = np.uint64(base + {i} * step)" for i in range(rows)]
    lines_.append("    offr = off[:R]")
    lines_.append("    wp = wt[w0:w0 + R * " + str(nr) + "]")
    lines_.append("    for r in range(R):")
    if stride:
        lines_ += [f"        at{l} = offr[r] + p{l}" for l in range(lines)]
    else:
        lines_.append("        at = offr[r]")
    lines_ += [f"        b{v} = vload(wp, r * {nr} + {v * width})" for v in range(nv)]
    for i in range(pixels):
        lines_.append(f"        a = vsplat(src[{pixel[i]}])")
        lines_ += [f"        {acc[i][v]} = vfma(a, b{v}, {acc[i][v]})" for v in range(nv)]
    lines_ += [f"    vstore(s, {i * nr + v * width}, {acc[i][v]})"
               for i in range(pixels) for v in range(nv)]
    name = (f"lanes_micro_{lines}x{rows}x{nr}" if lines > 1 else f"lanes_micro_{rows}x{nr}")
    name += f"_stride{stride}" if stride else ""
    micro = define(lines_, __file__, dict(vector_ops(width), np=np), name)
    return helper(micro, fastmath={"contract"})


# Narrowest tiles that rows pair up for (row_span): pairs of narrower ones do not
# recover the code their variants take.
PAIR_MIN = 4


def pair_width(OH, OW, sw, long, mr):
    """Pixels a line of the narrowest tile that runs two output rows at once, or 0 where
    rows do not pair up. They pair where the registers hold a tile of two rows of MR
    pixels (long >= 2 * MR: 32 vector registers), the stride is 1 or 2 and what is left of
    a row after its long tiles splits into tiles of PAIR_MIN to MR pixels (13 = 7 + 6,
    12 = 6 + 6, 7, 27 = 14 + 7 + 6): those tiles then run two rows at once, 2 x 7 pixels
    like a long tile; alexnet.conv3-5 and overfeat.conv3 ran 15-24% faster forward at 1
    and 2 threads, batch 1 and 16 (Ice Lake server, same-run ratios to the peers)."""
    if long < 2 * mr or OH < 2 or not (sw == 1 or sw == 2):
        return 0
    rest = OW % long
    narrowest = rest // ((rest + mr - 1) // mr) if rest else 0
    return narrowest if narrowest >= PAIR_MIN else 0


pair_width_jit = njit(inline="always")(pair_width)


def row_span(OH, OW, sw, long, mr):
    """Output rows a lanes unit computes: 2 where rows pair up (pair_width), else 1."""
    return 2 if pair_width(OH, OW, sw, long, mr) else 1


row_span_jit = njit(inline="always")(with_globals(row_span, pair_width=pair_width_jit))


@functools.lru_cache(maxsize=None)
def lanes_micro_pairs(mr: int, nr: int, width: int):
    """pairs(rows, sw, ...): the two-line micro-kernel for PAIR_MIN <= rows <= mr pixels a
    line at stride sw (1 or 2; inlined dispatch)."""
    lines = ["def micro_pairs(rows, sw, R, wt, w0, src, base, off, step, s):"]
    kernels = {}
    for stride in LONG_STRIDES:
        lines.append("    if sw == 1:" if stride == 1 else "    else:")
        for rows in range(PAIR_MIN, mr + 1):
            name = f"m{rows}_{stride}"
            kernels[name] = lanes_micro_kernel(rows, nr, width, stride, 2)
            lines.append(f"        {'if' if rows == PAIR_MIN else 'elif'} rows == {rows}:")
            lines.append(f"            {name}(R, wt, w0, src, base, off, step, s)")
    if mr < PAIR_MIN:
        lines = lines[:1] + ["    pass"]
    return njit(inline="always")(define(lines, __file__, kernels))


@functools.lru_cache(maxsize=None)
def lanes_micro_any(mr: int, nr: int, width: int):
    """micro(rows, ...): the micro-kernel for 1 <= rows <= mr pixels (inlined dispatch)."""
    lines = ["def micro_any(rows, R, wt, w0, src, base, off, sw, s):"]
    for rows in range(1, mr + 1):
        lines.append(f"    {'if' if rows == 1 else 'elif'} rows == {rows}:")
        lines.append(f"        m{rows}(R, wt, w0, src, base, off, sw, s)")
    return njit(inline="always")(define(
        lines, __file__, {f"m{r}": lanes_micro_kernel(r, nr, width) for r in range(1, mr + 1)}))


@functools.lru_cache(maxsize=None)
def transpose_panel(nr: int, width: int):
    """pack(wf, wt, kp, w0): wt[w0 + r * nr + j] = wf[kp * nr + j, r] (zero for channels
    past K): panel kp of W^T, in width x width blocks transposed in registers."""
    ops = vector_ops(width)

    def pack(wf, wt, kp, w0):
        K = wf.shape[0]
        R = wf.shape[1]
        flat = wf.reshape(K * R)
        rv = R // width * width
        for j0 in range(0, nr, width):
            k0 = kp * nr + j0
            if k0 + width <= K:
                for r0 in range(0, rv, width):
                    vtranspose_copy(wt, w0 + r0 * nr + j0, nr, flat, k0 * R + r0, R)
                for r in range(rv, R):
                    for j in range(width):
                        wt[w0 + r * nr + j0 + j] = flat[(k0 + j) * R + r]
            else:
                for r in range(R):
                    for j in range(width):
                        k = k0 + j
                        wt[w0 + r * nr + j0 + j] = flat[k * R + r] if k < K else 0

    pack = with_globals(pack, nr=nr, width=width, vtranspose_copy=ops["vtranspose_copy"])
    return helper(pack)


@functools.lru_cache(maxsize=None)
def flipped_panel(nr: int):
    """pack(wf, wt, kp, w0, T): panel kp of W'^T for W'[k, c, t] = W[c, k, T - 1 - t]
    (the kernel an input gradient correlates grad_output with), wf = W as (C, K * T):
    wt[w0 + (c * T + t) * nr + j] = wf[c, (kp * nr + j) * T + T - 1 - t], zero past K.
    Scalar: it reads T floats apart, and costs 1 / (2 * N * OH * OW) of the layer."""

    def pack(wf, wt, kp, w0, T):
        C = wf.shape[0]
        K = wf.shape[1] // T
        for c in range(C):
            row = wf[c]
            for t in range(T):
                d = w0 + (c * T + t) * nr
                for j in range(nr):
                    k = kp * nr + j
                    wt[d + j] = row[k * T + T - 1 - t] if k < K else 0

    return helper(with_globals(pack, nr=nr))


@functools.lru_cache(maxsize=None)
def store_tile(nr: int, width: int):
    """store(s, first, block, out, n, kp, oy, ox0, rows, bias, has_bias, relu): the tile
    in s (pixels first..first + rows - 1 x nr channels of panel kp) into
    out[n, :, oy, ox0:ox0 + rows], a
    transposed width x width block at a time, with the bias and ReLU; lanes past the
    tile's pixels are not stored."""
    ops = vector_ops(width)

    def store(s, first, block, out, n, kp, oy, ox0, rows, bias, has_bias, relu):
        K = out.shape[1]
        zero = vzero()
        for j0 in range(0, NR, width):
            for p0 in range(0, rows, width):
                vtranspose_copy(block, 0, width, s, (first + p0) * NR + j0, NR)
                lanes = min(width, rows - p0)
                for j in range(min(width, K - kp * NR - j0)):
                    k = kp * NR + j0 + j
                    v = vload(block, j * width)
                    if has_bias:
                        v = vadd(v, vsplat(bias[k]))
                    if relu:
                        v = vmax(v, zero)
                    vstore_lanes(out[n, k, oy], ox0 + p0, v, lanes)

    return helper(with_globals(store, NR=nr, width=width, **ops))


# How a task's units run through W^T (lanes_task)
IMAGE_MAJOR, PANEL_MAJOR, PRIVATE_PANELS = 0, 1, 2


@functools.lru_cache(maxsize=None)
def lanes_task(mr: int, long: int, nr: int, width: int):
    """task(first, last, src, images, image, Ws, wf, flip, T, wt, order, off, bias,
    has_bias, out, sh, sw, relu, s, n0): units first..last-1 of a group of images n0,
    read from src ``image`` floats apart, plane rows Ws floats long. ``order``:
    IMAGE_MAJOR: all of W^T is in ``wt`` and in L2; units are (image, output row, channel
    panel), the row's image data reused from L1 by every panel. PANEL_MAJOR: all of W^T
    is in ``wt``, too large for L2; units are (channel panel, image, output row), a panel
    reused from L2 by every row. PRIVATE_PANELS: as PANEL_MAJOR, each panel transposed
    from wf (``flip``: flipped_panel's, T taps) into the task's own ``wt`` as its units
    begin. A unit's output rows are row_span's (one, or two whose short tiles pair up). At
    the LONG_STRIDES a row runs in ``long``-pixel tiles, and what is left of it in tiles
    of at most ``mr`` (of two rows where the unit has two)."""
    micro = lanes_micro_any(mr, nr, width)
    # levels whose registers hold no paired tile (row_span 1) compile no pair kernels
    pairs = lanes_micro_pairs(mr if long >= 2 * mr else 0, nr, width)
    long_stride1, long_stride2 = (lanes_micro_kernel(long, nr, width, stride)
                                  for stride in LONG_STRIDES)
    pack = transpose_panel(nr, width)
    pack_flipped = flipped_panel(nr)

    def task(first, last, src, images, image, Ws, wf, flip, T, wt, order, off, bias,
             has_bias, out, sh, sw, relu, s, n0):
        K = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        R = off.shape[0]
        kpanels = (K + NR - 1) // NR
        longs = OW // LONG if sw == 1 or sw == 2 else 0
        rest = OW - longs * LONG
        chunks = (rest + MR - 1) // MR
        block = s[MRB * NR:]        # one transposed width x width block
        have = -1
        span = row_span(OH, OW, sw, LONG, MR)
        slots = (OH + span - 1) // span
        for u in range(first, last):
            if order != IMAGE_MAJOR:
                kp = u // (images * slots)
                n = u // slots - kp * images
                slot = u % slots
                w0 = kp * R * NR
                if order == PRIVATE_PANELS:
                    if kp != have:
                        if flip:
                            pack_flipped(wf, wt, kp, 0, T)
                        else:
                            pack(wf, wt, kp, 0)
                        have = kp
                    w0 = 0
            else:
                n = u // (kpanels * slots)
                slot = u // kpanels - n * slots
                kp = u % kpanels
                w0 = kp * R * NR
            oy0 = slot * span
            lines = min(span, OH - oy0)
            for oy in range(oy0, oy0 + lines):
                row0 = n * image + oy * sh * Ws
                for q in range(longs):
                    ox0 = q * LONG
                    if sw == 1:
                        long_stride1(R, wt, w0, src, row0 + ox0, off, sw, s)
                    else:
                        long_stride2(R, wt, w0, src, row0 + 2 * ox0, off, sw, s)
                    store(s, 0, block, out, n0 + n, kp, oy, ox0, LONG, bias, has_bias, relu)
                if lines == 1:
                    for q in range(chunks):
                        ox0 = OW - rest + rest * q // chunks
                        rows = OW - rest + rest * (q + 1) // chunks - ox0
                        micro(rows, R, wt, w0, src, row0 + ox0 * sw, off, sw, s)
                        store(s, 0, block, out, n0 + n, kp, oy, ox0, rows, bias, has_bias,
                              relu)
            if lines == 2:
                row0 = n * image + oy0 * sh * Ws
                for q in range(chunks):
                    ox0 = OW - rest + rest * q // chunks
                    rows = OW - rest + rest * (q + 1) // chunks - ox0
                    pairs(rows, sw, R, wt, w0, src, row0 + ox0 * sw, off, sh * Ws, s)
                    store(s, 0, block, out, n0 + n, kp, oy0, ox0, rows, bias, has_bias, relu)
                    store(s, rows, block, out, n0 + n, kp, oy0 + 1, ox0, rows, bias, has_bias,
                          relu)

    task = with_globals(task, IMAGE_MAJOR=IMAGE_MAJOR, PRIVATE_PANELS=PRIVATE_PANELS, MR=mr,
                        LONG=long, MRB=scratch_pixels(long, width), row_span=row_span_jit,
                        pairs=pairs,
                        NR=nr, micro=micro, long_stride1=long_stride1,
                        long_stride2=long_stride2, store=store_tile(nr, width), pack=pack,
                        pack_flipped=pack_flipped)
    task.__qualname__ = task.__name__ = f"lanes_task_{mr}x{nr}"
    return helper(task)


@functools.lru_cache(maxsize=None)
def lanes_convolution(level):
    """The channel-lanes convolution for one level, a parallel stage that kernels call:

    conv(x, w, flip, bias, has_bias, out, sh, sw, pt, pl, relu, workspace, panels)

    out = x correlated with w (K, C, KH, KW), plus the bias and ReLU; or, ``flip``, with
    W'[k, c, i, j] = w[c, k, KH - 1 - i, KW - 1 - j] (w is then (C, K, KH, KW)): a
    stride-1 input gradient is that correlation of grad_output padded by KH - 1 - pad_top
    and KW - 1 - pad_left. ``panels``: None, or all of W^T already transposed (panel kp
    as transpose_panel writes it, at kp * R * NR; shaped (K rounded up to NR, C, KH, KW)),
    which w then is too, only its shape read. ``workspace`` holds lanes_workspace(...) floats for the
    thread count in effect (the count is read back from its length)."""
    from nnjit.dispatch.registry import parallel_stage
    from nnjit.kernels.gemm import blocking, tile_shape

    kc, mc, nc = blocking(*tile_shape(level))
    L2_FLOATS, L3_FLOATS = mc * kc, nc * kc
    LMR, LNR = lanes_tile(level)
    LONG = long_tile(level)
    width = level.vector_floats
    LSCRATCH = scratch_floats(LONG, LNR, width)

    def conv(x, w, flip, bias, has_bias, out, sh, sw, pt, pl, relu, workspace, panels):
        N = x.shape[0]
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = out.shape[1]
        KH = w.shape[2]
        KW = w.shape[3]
        OH = out.shape[2]
        OW = out.shape[3]
        if KH * KW == 1 and sh * sw == 1 and pt == 0 and pl == 0 and OH * OW == H * W:
            # a 1x1 stride-1 unpadded layer's image is one row of pixels: long tiles run
            # across its rows (7x7: 14 + 14 + 14 + 7 pixels, not seven tiles of 7)
            x = x.reshape((N, C, 1, H * W))
            out = out.reshape((N, K, 1, OH * OW))
            H, W, OH, OW = 1, H * W, 1, OH * OW
        T = KH * KW
        R = C * T
        wf = w.reshape((w.shape[0], w.shape[1] * T))
        transformed = panels is not None
        shared, private, group, image, Hs, Ws = _lanes_plan(
            N, C, H, W, K, KH, KW, OH, OW, sh, sw, pt, pl, LNR, L2_FLOATS, L3_FLOATS,
            transformed)
        fixed = shared + group * image
        per_task = LSCRATCH + private
        threads = max(1, (workspace.shape[0] - fixed) // per_task)
        kpanels = (K + LNR - 1) // LNR
        order = IMAGE_MAJOR if shared else PRIVATE_PANELS
        if transformed:     # W^T given: reused from L2 whole, or a panel at a time
            order = IMAGE_MAJOR if 2 * kpanels * LNR * R <= L2_FLOATS else PANEL_MAJOR
        if shared:
            for kp in prange(kpanels):
                if flip:
                    _pack_flipped(wf, workspace, kp, kp * R * LNR, T)
                else:
                    _pack(wf, workspace, kp, kp * R * LNR)
        off = np.empty(R, np.uint64)
        for r in range(R):
            c = r // T
            t = r - c * T
            off[r] = c * Hs * Ws + (t // KW) * Ws + t % KW
        planes = workspace[shared:fixed]
        xall = x.reshape(N * C * H * W)
        for g0 in range(0, N, group):
            images = min(group, N - g0)
            if image == 0:
                src = xall[g0 * C * H * W:]
                image_floats = C * H * W
            else:
                src = planes
                image_floats = image
                for nc in prange(images * C):
                    n = nc // C
                    c = nc - n * C
                    for yy in range(Hs):
                        iy = yy - pt
                        d0 = nc * Hs * Ws + yy * Ws
                        inside = 0 <= iy < H
                        _copy_row(planes[d0:d0 + Ws], x[g0 + n, c, iy if inside else 0], pl,
                                  max(0, min(W, Ws - pl)) if inside else 0)
            units = kpanels * images * ((OH + _span(OH, OW, sw, LONG, LMR) - 1)
                                        // _span(OH, OW, sw, LONG, LMR))
            for task in prange(threads):
                s0 = fixed + task * per_task
                first = units * task // threads
                last = units * (task + 1) // threads
                scratch = workspace[s0:s0 + LSCRATCH]
                if panels is None:
                    wt = workspace[s0 + LSCRATCH:s0 + per_task] if private else workspace
                    _task(first, last, src, images, image_floats, Ws, wf, flip, T, wt, order,
                          off, bias, has_bias, out, sh, sw, relu, scratch, g0)
                else:
                    _task(first, last, src, images, image_floats, Ws, wf, flip, T,
                          panels.reshape(panels.size), order, off, bias, has_bias, out, sh,
                          sw, relu, scratch, g0)

    return parallel_stage(with_globals(
        conv, L2_FLOATS=L2_FLOATS, L3_FLOATS=L3_FLOATS, LNR=LNR, LSCRATCH=LSCRATCH, LONG=LONG,
        LMR=LMR, _span=row_span_jit,
        IMAGE_MAJOR=IMAGE_MAJOR, PANEL_MAJOR=PANEL_MAJOR, PRIVATE_PANELS=PRIVATE_PANELS,
        prange=prange, np=np, _lanes_plan=lanes_plan_jit, _pack=transpose_panel(LNR, width),
        _pack_flipped=flipped_panel(LNR), _copy_row=bordered_row_copy(width),
        _task=lanes_task(LMR, LONG, LNR, width)))
