"""1x1 forward convolutions of few pixels as dot products:
out[n, k, p] = bias[k] + W[k, :] . x[n, :, p], with W as (K, C).

The pixel-lanes GEMM (nnjit.kernels.conv_forward) puts pixels in the lanes and broadcasts
W. Few pixels make narrow panels (49 = 32 + 16 + 8 lanes), and a narrow panel, one
broadcast of W per row and channel for one vector of FMAs or half of one, runs at half
speed or less: mobilenet.pw14's last pixel, in an 8-lane panel, took a quarter of its time.
Here both operands are read as vectors along the reduction: W's rows as they are, and each
pixel's channel vector from x^T (pixels x C), which the call transposes first (few pixels:
a small copy). A tile of MR channels x J pixels holds MR * J vector accumulators over all
of C, MR + J loads per MR * J FMAs, and ends with one horizontal sum per output, stored
with the bias and ReLU. Tiles go channel panel by channel panel: a panel's rows of W are
reused, from L1 or L2, by every pixel group while x^T (in L2) streams past, and each thread
reads its share of W from memory once.

Images of V whole vectors and one pixel (7x7 = 3 x 16 + 1 at AVX-512) take row tiles
instead: MR channels x the whole image, the V vectors with the pixels in the lanes (W
broadcast, x's rows read in place) and the last pixel as a dot product in the same loop
over C, so no lane idles and only one horizontal sum per row is left. Its W vectors are the
lines the broadcasts just read. mobilenet.pw14 (1024 -> 1024, 49 pixels) ran 113 GFLOP/s
at 1 thread and 220 at 2 so, against 95 and 183 in dot tiles (their horizontal sums and the
W rows' 4 KiB aliasing; same-process A/B).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import helper, with_globals
from nnjit.kernels.codegen import define, dispatcher
from nnjit.kernels.gemm import TASKS
from nnjit.kernels.vectors import vector_ops

# What a tile's horizontal sums, bias and stores cost, in input channels' worth of FMAs
# per output (measured: about 6% of a 1024-channel layer's time, 12% of a 512-channel one).
DOT_OVERHEAD = 64


def dot_tile(level) -> tuple[int, int]:
    """(MR, J): MR channels x J pixels. 6 x 4 where there are 32 vector registers (24
    accumulators, 4 x^T vectors and a W vector), 3 x 3 where there are 16."""
    wide = level.vector_registers == 32
    return (6, 4) if wide else (3, 3)


def dotted(KH, KW, pixels, lanes, C, l2_floats) -> bool:
    """Whether a forward convolution runs as dot products: a 1x1 kernel, its pixels
    costing less so (each output C + DOT_OVERHEAD) than in the pixel-lanes path's panels
    (``lanes``: their lanes, narrow tail panels weighted; each lane C), and x^T within a
    quarter of L2 (it streams from there past every channel panel). 7x7 images with 1024
    channels: 49 lanes, not 32 + 16 + 8 (+13%); 8x8 ones stay in two whole panels."""
    return (KH == 1 and KW == 1 and pixels * (C + DOT_OVERHEAD) < lanes * C
            and 4 * pixels * C <= l2_floats)


dotted_jit = njit(inline="always")(dotted)


def row_floats(C: int) -> int:
    """Floats from one row of x^T to the next: C rounded up to an odd count of 64-byte
    lines, so a tile's rows of x^T fall in different L1 sets (4 KiB apart, they and W's
    rows, as far apart, would be more than the 8 ways of one set)."""
    lines = (C + 15) // 16
    return (lines + 1 - lines % 2) * 16


row_floats_jit = njit(inline="always")(row_floats)


def dot_workspace(pixels: int, C: int) -> int:
    """Floats: x^T (pixels x row_floats)."""
    return pixels * row_floats(C)


@functools.lru_cache(maxsize=None)
def dot_micro_kernel(rows: int, pixels: int, width: int):
    """micro(w, r0, valid, xt, q0, C, o, orow0, col0, bias, relu): for i < valid,
    o[orow0 + i, col0:col0 + pixels] = w[r0 + i] . xt[q0 + j] (j < pixels) + bias[r0 + i],
    then max(., 0) if relu (w: (K, C), xt: (pixels, >= C)). rows x pixels vector
    accumulators over C, the last partial vector through masked loads; rows past valid
    repeat the last one and are not stored. A row's sums come out of vsum4 as one
    4-lane vector, stored as one."""
    assert pixels <= 4
    acc = [[f"c{i}_{j}" for j in range(pixels)] for i in range(rows)]
    lines = ["def micro(w, r0, valid, xt, q0, C, o, orow0, col0, bias, relu):"]
    lines += [f"    w{i} = w[r0 + min({i}, valid - 1)]" for i in range(rows)]
    lines += [f"    x{j} = xt[q0 + {j}]" for j in range(pixels)]
    lines += [f"    {c} = vzero()" for row in acc for c in row]
    lines.append(f"    whole = C // {width} * {width}")

    def step(load, indent):
        out = [f"{indent}b{j} = {load.format(f'x{j}')}" for j in range(pixels)]
        for i in range(rows):
            out.append(f"{indent}a = {load.format(f'w{i}')}")
            out += [f"{indent}{acc[i][j]} = vfma(a, b{j}, {acc[i][j]})" for j in range(pixels)]
        return out

    lines.append(f"    for k in range(0, whole, {width}):")
    lines += step("vload({}, k)", " " * 8)
    lines.append("    if whole < C:")
    lines += step("vload_lanes({}, whole, 0, C - whole)", " " * 8)
    lines.append("    zero = vzero()")
    lines.append("    zero4 = qzero()")
    for i in range(rows):
        sums = ", ".join(acc[i] + ["zero"] * (4 - pixels))
        lines.append(f"    if {i} < valid:")
        lines.append(f"        r = qadd(vsum4({sums}), qsplat(bias[r0 + {i}]))")
        lines.append("        if relu:")
        lines.append("            r = qmax(r, zero4)")
        lines.append(f"        qstore_lanes(o[orow0 + {i}], col0, r, {pixels})")
    quad = vector_ops(4)
    names = dict(vector_ops(width), qzero=quad["vzero"], qadd=quad["vadd"],
                 qsplat=quad["vsplat"], qmax=quad["vmax"], qstore_lanes=quad["vstore_lanes"])
    micro = define(lines, __file__, names, f"dot_micro_{rows}x{pixels}")
    return helper(micro, fastmath={"contract"})


@functools.lru_cache(maxsize=None)
def dot_micro_any(mr: int, j: int, width: int):
    """micro(pixels, ...): the MR x pixels micro-kernel for 1 <= pixels <= J."""
    return dispatcher("micro_any", "w, r0, valid, xt, q0, C, o, orow0, col0, bias, relu",
                      {p: dot_micro_kernel(mr, p, width) for p in range(1, j + 1)}, __file__)


def row_vectors(level) -> int:
    """The most whole vectors V of a row tile's image (V * width + 1 pixels): MR x (V + 1)
    accumulators, V vectors of x, a broadcast of W, the last pixel's x vector and a W
    vector within the vector registers. 3 at AVX-512 (49 pixels), 2 at AVX2 (17)."""
    mr = dot_tile(level)[0]
    v = 0
    while mr * (v + 2) + (v + 1) + 3 <= level.vector_registers:
        v += 1
    return v


def row_tiled(level, pixels: int) -> bool:
    """Whether an image of ``pixels`` (its output's, a 1x1 stride-1 unpadded layer on the
    dot path) takes row tiles: V whole vectors and one pixel, 1 <= V <= row_vectors."""
    width = level.vector_floats
    return pixels % width == 1 and 1 <= pixels // width <= row_vectors(level)


@functools.lru_cache(maxsize=None)
def row_micro_kernel(rows: int, vectors: int, width: int):
    """micro(w, r0, valid, x, xb, xt, q, C, o, orow0, bias, relu): for i < valid, row
    orow0 + i of o (vectors * width + 1 pixels) = w[r0 + i] @ the image (C x pixels, x's
    floats from xb) + bias[r0 + i], then max(., 0) if relu; xt[q] is the image's last
    pixel's channel vector. Per channel: the pixels' vectors times a broadcast of W (rows x
    vectors accumulators); per width channels: the last pixel's dot with W's vectors (rows
    accumulators, summed across lanes at the end). Rows past valid repeat the last one and
    are not stored."""
    pixels = vectors * width + 1
    acc = [[f"a{i}_{v}" for v in range(vectors)] for i in range(rows)]
    last = [f"d{i}" for i in range(rows)]
    lines = ["def micro(w, r0, valid, x, xb, xt, q, C, o, orow0, bias, relu):"]
    lines += [f"    w{i} = w[r0 + min({i}, valid - 1)]" for i in range(rows)]
    lines.append("    t = xt[q]")
    lines += [f"    {c} = vzero()" for c in sum(acc, []) + last]
    lines.append(f"    whole = C // {width} * {width}")

    def lanes(indent):
        out = [f"{indent}base = xb + k * {pixels}"]
        out += [f"{indent}b{v} = vload(x, base + {v * width})" for v in range(vectors)]
        for i in range(rows):
            out.append(f"{indent}s = vsplat(w{i}[k])")
            out += [f"{indent}{acc[i][v]} = vfma(s, b{v}, {acc[i][v]})" for v in range(vectors)]
        return out

    def dot(load, indent):
        out = [f"{indent}e = {load.format('t')}"]
        out += [f"{indent}{last[i]} = vfma({load.format(f'w{i}')}, e, {last[i]})"
                for i in range(rows)]
        return out

    lines.append(f"    for k0 in range(0, whole, {width}):")
    lines.append(f"        for k in range(k0, k0 + {width}):")
    lines += lanes(" " * 12)
    lines += dot("vload({}, k0)", " " * 8)
    lines.append("    for k in range(whole, C):")
    lines += lanes(" " * 8)
    lines.append("    if whole < C:")
    lines += dot("vload_lanes({}, whole, 0, C - whole)", " " * 8)
    lines.append("    zero = vzero()")
    for i in range(rows):
        lines.append(f"    if {i} < valid:")
        lines.append(f"        row = o[orow0 + {i}]")
        lines.append(f"        b = bias[r0 + {i}]")
        lines.append("        bs = vsplat(b)")
        for v in range(vectors):
            lines.append(f"        r = vadd({acc[i][v]}, bs)")
            lines.append("        if relu:")
            lines.append("            r = vmax(r, zero)")
            lines.append(f"        vstore(row, {v * width}, r)")
        lines.append(f"        s = vsum({last[i]}) + b")
        lines.append("        if relu and s < 0:")
        lines.append("            s = np.float32(0)")
        lines.append(f"        row[{pixels - 1}] = s")
    micro = define(lines, __file__, dict(vector_ops(width), np=np),
                   f"row_micro_{rows}x{pixels}")
    return helper(micro, fastmath={"contract"})


@functools.lru_cache(maxsize=None)
def row_micro_any(mr: int, most: int, width: int):
    """micro(vectors, ...): the MR-row row tile of vectors * width + 1 pixels, 1 <= vectors
    <= most."""
    return dispatcher("row_any", "w, r0, valid, x, xb, xt, q, C, o, orow0, bias, relu",
                      {v: row_micro_kernel(mr, v, width) for v in range(1, most + 1)}, __file__)


@functools.lru_cache(maxsize=None)
def dot_convolution(level):
    """The dot-product 1x1 convolution for one level, a parallel stage:

    conv(x, w, bias, out, sh, sw, pt, pl, relu, workspace)

    out = x correlated with w (K, C, 1, 1), plus the bias and ReLU, any stride and padding;
    ``workspace`` holds dot_workspace(...) floats (x^T). The work goes in TASKS equal
    runs of (channel panel, image, pixel group) tiles, channel panel by channel panel;
    images that row_tiled takes (1x1 stride 1 unpadded), in runs of (channel panel, image)
    row tiles."""
    from nnjit.dispatch.registry import parallel_stage

    MR, J = dot_tile(level)
    width = level.vector_floats
    VECTORS = row_vectors(level)

    def conv(x, w, bias, out, sh, sw, pt, pl, relu, workspace):
        N, C, H, W = x.shape
        K, OH, OW = out.shape[1:]
        P = OH * OW
        Q = N * P
        CS = _row_floats(C)
        xt = workspace[:Q * CS]
        xall = x.reshape(N * C * H * W)
        plain = sh == 1 and sw == 1 and pt == 0 and pl == 0 and OH == H and OW == W
        vectors = (P - 1) // width
        wf = w.reshape((K, C))
        oall = out.reshape((N * K, P))
        panels = (K + MR - 1) // MR
        if plain and P % width == 1 and 1 <= vectors <= VECTORS:
            # row tiles: x's rows are their vectors; only each image's last pixel goes
            # into x^T
            xr = workspace[:N * CS].reshape((N, CS))
            for n in prange(N):
                src = n * C * P + P - 1
                for c in range(C):
                    xr[n, c] = xall[src + c * P]
            cells = panels * N
            for task in prange(TASKS):
                for cell in range(cells * task // TASKS, cells * (task + 1) // TASKS):
                    kp = cell // N
                    n = cell - kp * N
                    r0 = kp * MR
                    _rows(vectors, wf, r0, min(MR, K - r0), xall, n * C * P, xr, n, C, oall,
                          n * K + r0, bias, relu)
            return
        # x^T[n * P + p, c], in width x width blocks transposed in registers where the
        # image's pixels are the output's (1x1 stride 1, no padding), else gathered
        blocks = (C + width - 1) // width
        for nb in prange(N * blocks):
            n = nb // blocks
            c0 = (nb - n * blocks) * width
            c1 = min(C, c0 + width)
            p0 = 0
            if plain:
                if c1 - c0 == width:
                    while p0 + width <= P:
                        vtranspose_copy(xt, (n * P + p0) * CS + c0, CS, xall,
                                        (n * C + c0) * P + p0, P)
                        p0 += width
                for c in range(c0, c1):
                    src = (n * C + c) * P
                    for p in range(p0, P):
                        xt[(n * P + p) * CS + c] = xall[src + p]
            else:
                for c in range(c0, c1):
                    plane = x[n, c]
                    for oy in range(OH):
                        iy = oy * sh - pt
                        for ox in range(OW):
                            ix = ox * sw - pl
                            v = np.float32(0)
                            if 0 <= iy < H and 0 <= ix < W:
                                v = plane[iy, ix]
                            xt[(n * P + oy * OW + ox) * CS + c] = v
        xq = xt.reshape((Q, CS))
        groups = (P + J - 1) // J        # per image: a tile's pixels share one
        cells = panels * N * groups
        for task in prange(TASKS):
            for cell in range(cells * task // TASKS, cells * (task + 1) // TASKS):
                kp = cell // (N * groups)
                ng = cell - kp * N * groups
                n = ng // groups
                p0 = (ng - n * groups) * J
                r0 = kp * MR
                _micro(min(J, P - p0), wf, r0, min(MR, K - r0), xq, n * P + p0, C, oall,
                       n * K + r0, p0, bias, relu)

    ops = vector_ops(width)
    return parallel_stage(with_globals(
        conv, MR=MR, J=J, TASKS=TASKS, width=width, VECTORS=VECTORS, np=np, prange=prange,
        _row_floats=row_floats_jit, vtranspose_copy=ops["vtranspose_copy"],
        _micro=dot_micro_any(MR, J, width), _rows=row_micro_any(MR, VECTORS, width)))
