"""Forward convolution (``convolution_output`` and ``convolution_inference``) as a GEMM:
out[n] (K x OH*OW) = W (K x R) @ im2col(x[n]) (R x OH*OW), R = C*KH*KW.

Two algorithms, one engine (nnjit.kernels.gemm's register-blocked micro-kernel, tile shape
and NNPACK's cache budgets, reference/nnpack.md 5.3). Layers with a kernel wider than one
tap and enough output channels run transposed instead, output channels in the lanes
(nnjit.kernels.conv_lanes: no packing of the image at all), and 1x1 layers of few pixels
as dot products or row tiles (nnjit.kernels.conv_dot: no lane idle on a short tail); the
rest as below.

- ``implicit_gemm``: any kernel size, stride, padding and batch. The im2col matrix is never
  built: each NR-pixel x KC-row B micro-panel is packed on the fly, in the task that uses it,
  straight from the image (stride and padding applied, zeros for taps outside the image), in
  runs of pixels that share an output row, with vector loads of the level's width (stride 1:
  plain loads; stride 2: even lanes of two loads).
- stride-1 layers where packing would cost more than it saves (few channel panels to share
  each packed panel, short rows): the B panels are read in place from zero-bordered bands
  of the image through an offset table (nnjit.kernels.conv_band).
- ``direct`` (1x1 kernels, stride 1): the image as is is the B matrix (C x H*W): with no
  padding, every B micro-panel row is one contiguous run of the image; with padding it goes
  through the implicit GEMM packer (so direct accepts any padding).

W (the A matrix) is never packed: the micro-kernel (the fully-connected one) broadcasts its
weights straight from MR rows of W (K x R, rows contiguous); only the B panels are packed.
An image's pixels go in NR-wide panels, then one or two narrower ones (a vector, half a
vector) for the last P % NR: 49 = 32 + 16 + 8 lanes, not 64. Work is split into one task
per thread: equal runs of the (pixel panel) x (MR-channel panel) grid, walked pixel panel
by pixel panel, or channel panel by channel panel where W has more rows than the batch
has pixels (each thread then reads its share of W once). Per KC slice each B micro-panel
is packed into the task's own buffer (it stays in L1) while W's rows (in L2) stream past
it. A task walks its pixel panels in groups whose output tiles fit in L2 beside a block
of W's rows (its KC slice at most half of L2), and for each group and block runs every
slice: the first overwrites the output, later ones add, and on the last bias (and ReLU)
are applied to the MR x NR tile while it is in L1. Through im2col a batch's pixels are
one sequence of panels, a panel running on from one image into the next where an image is
not a whole number of panels; such a panel's tiles go out image by image.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import helper, kernel, with_globals
from nnjit.kernels.codegen import define, dispatcher
from nnjit.kernels.conv_band import band_plan, band_plan_jit, band_task, banded, banded_jit
from nnjit.kernels.conv_dot import dot_convolution, dot_workspace, dotted, dotted_jit
from nnjit.kernels.conv_lanes import (lanes_convolution, lanes_tile, lanes_workspace, long_tile,
                                      over_channels, over_channels_jit, transpose_panel)
from nnjit.kernels.fully_connected import fc_micro_kernel
from nnjit.kernels.gemm import blocking, tile_shape
from nnjit.kernels.signatures import boolean, i64, reads, void, writes
from nnjit.kernels.vectors import vector_ops

_SIGNATURE = void(reads(4), reads(4), reads(1), writes(4), i64, i64, i64, i64, boolean,
                  writes(1))


@functools.lru_cache(maxsize=None)
def panel_floats(level) -> int:
    """Floats of one thread's B micro-panel buffer (NR x KC, plus a vector of slack)."""
    mr, nr = tile_shape(level)
    return nr * blocking(mr, nr)[0] + 2 * level.vector_floats


def workspace_floats(level, x, w, bias, out, *rest) -> int:
    """Floats of workspace: one B micro-panel buffer per thread. The kernel takes its
    thread count from the length (the count in effect for the call: nnjit.set_num_threads)."""
    from nnjit.dispatch.policy import get_num_threads

    threads = get_num_threads()
    n, c, _, _ = x.shape
    k, _, kh, kw = w.shape
    sh, sw = rest[0], rest[1]
    mr, nr = tile_shape(level)
    kc, mc, nc = blocking(mr, nr)
    p = out.shape[2] * out.shape[3]
    vector = level.vector_floats
    lanes = panel_lanes(p, nr, tail_panels(panel_widths(level), vector), vector)
    if dotted(kh, kw, n * p, n * lanes, c, mc * kc):
        return dot_workspace(n * p, c)
    lnr = lanes_tile(level)[1]
    l3_floats = kc * nc
    if over_channels(kh, kw, sh, sw, c, k, lnr, mc * kc, l3_floats):
        return lanes_workspace(n, c, x.shape[2], x.shape[3], k, kh, kw, out.shape[2],
                               out.shape[3], sh, sw, rest[2], rest[3], long_tile(level), lnr,
                               level.vector_floats, mc * kc, l3_floats, threads)
    if banded(sh, sw, kh, kw, out.shape[2], out.shape[3], c, k, kc, mr, nr, mc * kc, False):
        band, tile = band_plan(n, c, k, out.shape[2], out.shape[3], kh, kw, threads, kc, mr,
                               nr, mc * kc)[3:]
        return threads * (band + tile)
    return threads * panel_floats(level)


@functools.lru_cache(maxsize=None)
def epilogue(mr: int, nr: int, width: int):
    """finish(c, row0, col0, bias, b0, relu): c[row0 + i, col0 + j] += bias[b0 + i], then
    max(., 0) if relu, for the MR x NR tile just stored (in L1)."""
    nv = nr // width
    lines = ["def finish(c, row0, col0, bias, b0, relu):",
             "    zero = vzero()"]
    for i in range(mr):
        lines.append(f"    row = c[row0 + {i}]")
        lines.append(f"    b = vsplat(bias[b0 + {i}])")
        for v in range(nv):
            lines.append(f"    v{v} = vadd(vload(row, col0 + {v * width}), b)")
        lines.append("    if relu:")
        lines += [f"        v{v} = vmax(v{v}, zero)" for v in range(nv)]
        lines += [f"    vstore(row, col0 + {v * width}, v{v})" for v in range(nv)]
    finish = define(lines, __file__, dict(vector_ops(width)), f"finish_{mr}x{nr}")
    return helper(finish)


@functools.lru_cache(maxsize=None)
def packer(nr: int, width: int):
    """pack(xf, x0, bp, kc, r0, C, H, W, KH, KW, sh, sw, pt, pl, seg, nseg, cols):
    bp[k * nr + j] = im2col row r0 + k, pixel j of the panel, for k < kc, j < nr (zero for
    taps outside the image and for j >= cols). The panel's pixels come as nseg runs along
    output rows: seg[s] = (oy, ox0, length, j0, image offset), the run's image being
    xf[x0 + offset:x0 + offset + C*H*W] (a panel may run on into the next image).

    Each run is copied in whole vectors (strides 1 and 2): plain loads inside the image,
    masked loads at its edges, whose lanes outside the image (padding) or past the run read
    nothing and give zeros, so there is no scalar edge loop. Other strides copy scalars."""

    def pack(xf, x0, bp, kc, r0, C, H, W, KH, KW, sh, sw, pt, pl, seg, nseg, cols):
        HW = H * W
        taps = KH * KW
        c0 = r0 // taps
        ky0 = (r0 - c0 * taps) // KW
        kx0 = r0 - c0 * taps - ky0 * KW
        # Run by run, then in groups of rows that share (channel, ky) and so an image row:
        # the per-row work is a few adds and the run's vectors. Whole vectors first, then
        # the run's last part: a vector that may write zeros past the run (the next run
        # overwrites them later) unless it would cross into the next row, which an earlier
        # run has written: then a masked store.
        for s in range(nseg):
            ln = seg[s, 2]
            j0 = seg[s, 3]
            iy0 = seg[s, 0] * sh - pt
            ixb = seg[s, 1] * sw - pl
            xs = x0 + seg[s, 4]
            full = ln // width * width
            tail = ln - full
            tail_spills = j0 + full + width > nr
            # Every tap of the run inside the image's columns: plain loads for whole vectors.
            inside = ixb >= 0 and ixb + KW - 1 + (ln - 1) * sw <= W - 1
            c = c0
            ky = ky0
            kx = kx0
            k = 0
            while k < kc:
                rows = min(KW - kx, kc - k)
                iy = iy0 + ky
                dst = k * nr + j0
                ix0 = ixb + kx
                src = xs + c * HW + iy * W + ix0
                row_inside = iy >= 0 and iy < H
                # The common case, a run inside the image: plain loads (for stride 2 the
                # even-lane load reads one float past its last lane: keep it in the row),
                # and no per-vector tests.
                fast = row_inside and inside and (
                    sw == 1 or (sw == 2 and ix0 + rows - 1 + 2 * full <= W))
                for kk in range(rows if fast else 0):
                    if sw == 1:
                        for t in range(0, full, width):
                            vstore(bp, dst + t, vload(xf, src + t))
                        v = vload_lanes(xf, src + full, 0, tail)
                    else:
                        for t in range(0, full, width):
                            vstore(bp, dst + t, vload_even(xf, src + 2 * t))
                        v = vload_even_lanes(xf, src + 2 * full, 0, tail)
                    if tail > 0:
                        if tail_spills:
                            vstore_lanes(bp, dst + full, v, tail)
                        else:
                            vstore(bp, dst + full, v)
                    src += 1
                    dst += nr
                for kk in range(0 if fast else rows):
                    # lanes t with 0 <= ix0 + t * sw < W (and t < ln) read the image
                    lo = 0
                    hi = ln
                    if not row_inside:
                        hi = 0
                    elif not inside:
                        if sw == 1:
                            lo = max(0, -ix0)
                            hi = min(ln, W - ix0)
                        elif sw == 2:
                            lo = max(0, (1 - ix0) >> 1)
                            hi = min(ln, (W - ix0 + 1) >> 1)
                    if sw == 1 or sw == 2 or not row_inside:
                        for t in range(0, full, width):
                            # masked loads throughout: as fast as plain ones, and no
                            # branch to mispredict per vector
                            if sw == 1:
                                v = vload_lanes(xf, src + t, lo - t, hi - t)
                            else:
                                v = vload_even_lanes(xf, src + 2 * t, lo - t, hi - t)
                            vstore(bp, dst + t, v)
                        if tail > 0:
                            if sw == 1:
                                v = vload_lanes(xf, src + full, lo - full, hi - full)
                            else:
                                v = vload_even_lanes(xf, src + 2 * full, lo - full, hi - full)
                            if tail_spills:
                                vstore_lanes(bp, dst + full, v, tail)
                            else:
                                vstore(bp, dst + full, v)
                    else:
                        for t in range(ln):
                            ix = ix0 + t * sw
                            bp[dst + t] = xf[src + t * sw] if 0 <= ix < W else 0
                    ix0 += 1
                    src += 1
                    dst += nr
                k += rows
                kx += rows
                if kx == KW:
                    kx = 0
                    ky += 1
                    if ky == KH:
                        ky = 0
                        c += 1
        if cols < nr:
            for k in range(kc):
                for j in range(cols, nr):
                    bp[k * nr + j] = 0

    pack = with_globals(pack, **vector_ops(width))
    pack.__qualname__ = pack.__name__ = f"pack_im2col_{nr}"
    return helper(pack)


@functools.lru_cache(maxsize=None)
def row_packer(nr: int, width: int):
    """copy(xf, x0, bp, kc, r0, P, col0, cols): bp[k * nr + j] = xf[x0 + (r0 + k) * P + col0 + j],
    zero for j >= cols: B micro-panel of a 1x1 stride-1 unpadded convolution (the image's
    rows as they are), in whole vectors (masked loads past cols)."""
    nv = nr // width

    def copy(xf, x0, bp, kc, r0, P, col0, cols):
        src = x0 + r0 * P + col0
        if cols == nr:
            for k in range(kc):
                for v in range(nv):
                    vstore(bp, k * nr + v * width, vload(xf, src + v * width))
                src += P
        else:
            for k in range(kc):
                for v in range(nv):
                    t = v * width
                    vstore(bp, k * nr + t, vload_lanes(xf, src + t, 0, cols - t))
                src += P

    copy = with_globals(copy, **vector_ops(width))
    copy.__qualname__ = copy.__name__ = f"pack_rows_{nr}"
    return helper(copy)


def panel_widths(level) -> tuple[int, ...]:
    """Widths of the B panels, widest first: NR (the tile), one vector, and half a vector
    (an image's last few pixels; on Zen 4 a half-width FMA runs at twice the rate, so a
    narrow panel costs in proportion to its lanes)."""
    nr = tile_shape(level)[1]
    width = level.vector_floats
    return tuple(dict.fromkeys(w for w in (nr, width, width // 2 if width >= 8 else width)
                               if w <= nr))


@functools.lru_cache(maxsize=None)
def tail_panels(widths: tuple[int, ...], vector: int) -> tuple[tuple[int, int], ...]:
    """For each r < NR: the (one or two) panels covering an image's last r = P % NR pixels,
    as (first width, second width or 0), the cheapest in lanes (half-vector panels, with
    fewer accumulators than the FMA latency needs, counted 4/3 a lane). 196 = 6 x 32 + 4:
    a half-vector panel (4 of 8 lanes used, not 4 of 16); 49 = 32 + 17: 16 + 8 (17 of 24
    lanes, not 17 of 32)."""
    def cost(w):
        return w * (4 / 3 if w < vector else 1) if w else 0
    table = [(0, 0)]
    for r in range(1, widths[0]):
        options = [(a, 0) for a in widths if a >= r]
        options += [(a, b) for a in widths for b in widths if a < r <= a + b and b <= a]
        table.append(min(options, key=lambda ab: (cost(ab[0]) + cost(ab[1]), -ab[0])))
    return tuple(table)


def panel_lanes(pixels, nr, tails, vector):
    """The lanes of the panels an image's pixels take (tail panels narrower than a vector
    counted 4/3 a lane, as tail_panels weighs them)."""
    lanes = pixels // nr * nr
    for w in tails[pixels % nr]:
        lanes += w * 4 / 3 if w < vector else w
    return lanes


panel_lanes_jit = njit(inline="always")(panel_lanes)


def _by_width(name: str, params: str, functions: list) -> object:
    """An inlined dispatcher name(which, params...): calls functions[which](params...)."""
    return dispatcher(name, params, dict(enumerate(functions)), __file__)


def _build(level, pointwise: bool):
    MR, NR = tile_shape(level)
    KC, MC, NC = blocking(MR, NR)
    L2_FLOATS = MC * KC     # NNPACK's L2 budget, floats
    L3_FLOATS = NC * KC     # and its L3 budget
    BP = panel_floats(level)
    POINTWISE = pointwise
    BANDS = not pointwise     # a constant: direct's kernel does not compile the bands
    LNR = lanes_tile(level)[1]
    WIDTHS = panel_widths(level)
    TAILS = tail_panels(WIDTHS, level.vector_floats)
    NW = len(WIDTHS)
    VECTOR = level.vector_floats

    def conv(x, w, bias, out, sh, sw, pt, pl, relu, workspace):
        N = x.shape[0]
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        KH = w.shape[2]
        KW = w.shape[3]
        OH = out.shape[2]
        OW = out.shape[3]
        P = OH * OW
        R = C * KH * KW
        m_panels = (K + MR - 1) // MR
        # W (the A operand) is read in place, MR rows at a time (its rows are contiguous
        # R-long runs): packing it would read and write all of it once more per call, which
        # cost 30-40% of the time of small-image layers (7x7 and 14x14, measured).
        wf = w.reshape((K, R))
        # One task per thread (their count: how many B micro-panel buffers the workspace
        # holds). The work is a grid of cells, (pixel panel) x (MR-channel panel); each
        # task takes an equal run of cells (in one of two orders, below), so tasks are
        # balanced to a cell.
        threads = max(1, workspace.shape[0] // BP)
        # An image's panels: whole NR-wide ones, then one or two narrower ones for the rest.
        full_panels = P // NR
        tail0, tail1 = TAILS[P - full_panels * NR]
        n_panels = full_panels + (tail0 > 0) + (tail1 > 0)
        # 1x1 stride 1 unpadded: the image's rows are B's rows (no im2col geometry).
        general = (not POINTWISE) or pt != 0 or pl != 0 or OH != H or OW != W
        if _dotted(KH, KW, N * P, N * _panel_lanes(P, NR, TAILS, VECTOR), C, L2_FLOATS):
            # few pixels: dot products (nnjit.kernels.conv_dot)
            _dot(x, w, bias, out, sh, sw, pt, pl, relu, workspace)
            return
        if _over_channels(KH, KW, sh, sw, C, K, LNR, L2_FLOATS, L3_FLOATS):
            # channels in the lanes (nnjit.kernels.conv_lanes)
            _lanes(x, w, False, bias, True, out, sh, sw, pt, pl, relu, workspace, None)
            return
        if BANDS and _banded(sh, sw, KH, KW, OH, OW, C, K, KC, MR, NR, L2_FLOATS, False):
            # the thread count the workspace was sized for (threads x per-thread floats)
            threads = 1
            while True:
                plan = _band_plan(N, C, K, OH, OW, KH, KW, threads + 1, KC, MR, NR,
                                  L2_FLOATS)
                if (threads + 1) * (plan[3] + plan[4]) > workspace.shape[0]:
                    break
                threads += 1
            rows_per, mb, units, band_f, tile_f = _band_plan(N, C, K, OH, OW, KH, KW, threads,
                                                             KC, MR, NR, L2_FLOATS)
            per = band_f + tile_f
            Wp = OW + KW - 1
            plane = (rows_per + KH - 1) * Wp
            off = np.empty(R, np.int64)
            for r in range(R):
                c = r // (KH * KW)
                t = r - c * KH * KW
                off[r] = c * plane + (t // KW) * Wp + t % KW
            for task in prange(threads):
                first = units * task // threads
                last = units * (task + 1) // threads
                if first < last:
                    _band_task(first, last, x, wf, bias, out, KH, KW, pt, pl, relu, off,
                               rows_per, mb, workspace[task * per:task * per + band_f],
                               workspace[task * per + band_f:(task + 1) * per])
            return
        # Packed through im2col, a batch's pixels are one sequence of panels that may run
        # from one image into the next: no partly empty panel per image (196 pixels = 6
        # panels of 32 + 4 wasted 12 of every 208 lanes of 14x14 batches).
        across = general and N > 1 and P % NR != 0
        units = (N * P + NR - 1) // NR if across else N * n_panels
        cells = units * m_panels
        # Cells are walked pixel panel by pixel panel, or, where W has more rows than the
        # batch has pixels, channel panel by channel panel (threads then split W, each
        # reading its share once, and pack every pixel panel: mobilenet.pw14 at 2 threads).
        # Packing through im2col costs 2-4 cycles a float, a few times W's streaming: there
        # W must have 4 times more rows (AlexNet's 13x13 layers at 2 threads spent a third
        # of their time packing every panel twice).
        rows_split = K > N * P * (4 if general else 1)
        for task in prange(threads):
            c_lo = cells * task // threads
            c_hi = cells * (task + 1) // threads
            if c_lo >= c_hi:
                continue
            bp = workspace[task * BP:(task + 1) * BP]
            # Views made once per task: one per panel costs atomic reference counts on the
            # arrays every thread shares.
            xall = x.reshape(N * C * H * W)
            oall = out.reshape((N * K, P))
            scratch = np.empty((MR, NR), np.float32)
            seg = np.empty((NR + 2, 5), np.int64)
            if rows_split:
                u_lo, u_hi = 0, units
                t_lo, t_hi = c_lo // units, (c_hi - 1) // units + 1
            else:
                u_lo, u_hi = c_lo // m_panels, (c_hi - 1) // m_panels + 1
                t_lo, t_hi = 0, m_panels
            # The task's W rows in blocks whose KC slice fills at most half of L2, the rest
            # for the output tiles of a group of GU pixel panels: a block's slice is read from
            # memory once per group (1024 x 214 floats is L2 whole: mobilenet.pw14 re-read W
            # for every pixel panel), and the group's tiles stay in L2 across the KC slices.
            row_blocks = max(1, (2 * (t_hi - t_lo) * MR * KC + L2_FLOATS - 1) // L2_FLOATS)
            MBP = (t_hi - t_lo + row_blocks - 1) // row_blocks
            GU = max(1, (L2_FLOATS - MBP * MR * KC) // (MBP * MR * NR))
            for ub in range(u_lo, u_hi, GU):
                ue = min(u_hi, ub + GU)
                for mb in range(t_lo, t_hi, MBP):
                    for pc in range(0, R, KC):
                        kc = min(KC, R - pc)
                        update = pc > 0
                        last = pc + kc >= R
                        for u in range(ub, ue):
                            if rows_split:      # cell p * units + u
                                p_lo = max(mb, (c_lo - u + units - 1) // units)
                                p_hi = min(mb + MBP, (c_hi - u + units - 1) // units)
                            else:               # cell u * m_panels + p
                                p_lo = max(mb, c_lo - u * m_panels)
                                p_hi = min(mb + MBP, m_panels, c_hi - u * m_panels)
                            if p_lo >= p_hi:
                                continue
                            if across:
                                n = u * NR // P
                                col0 = u * NR - n * P
                                cols = min(NR, N * P - u * NR)
                                pw = NR
                                for which in range(NW):     # the batch's last panel: narrower
                                    if cols <= WIDTHS[which]:
                                        pw = WIDTHS[which]
                            else:
                                n = u // n_panels
                                q = u - n * n_panels
                                col0 = min(q, full_panels) * NR + (tail0 if q > full_panels else 0)
                                pw = NR if q < full_panels else (tail0 if q == full_panels else tail1)
                                cols = min(pw, P - col0)
                            which = 0
                            for i in range(NW):
                                if WIDTHS[i] == pw:
                                    which = i
                            split = min(cols, P - col0)     # the panel's pixels in image n
                            x0 = n * C * H * W
                            o0 = n * K        # image n's first row of oall
                            if general:
                                # runs of pixels along output rows
                                nseg = 0
                                p0 = col0
                                while p0 < col0 + cols:
                                    later = p0 // P         # images past n
                                    oy = (p0 - later * P) // OW
                                    ox = p0 - later * P - oy * OW
                                    ln = min(OW - ox, col0 + cols - p0)
                                    seg[nseg, 0] = oy
                                    seg[nseg, 1] = ox
                                    seg[nseg, 2] = ln
                                    seg[nseg, 3] = p0 - col0
                                    seg[nseg, 4] = later * C * H * W
                                    nseg += 1
                                    p0 += ln
                                _pack(which, xall, x0, bp, kc, pc, C, H, W, KH, KW, sh, sw, pt, pl,
                                      seg, nseg, cols)
                            else:
                                _pack_rows(which, xall, x0, bp, kc, pc, P, col0, cols)
                            whole = cols == pw and split == cols
                            for p in range(p_lo, p_hi):
                                row0 = p * MR
                                rows = min(MR, K - row0)
                                # whole tiles straight into out; others, and the last channel
                                # panel's (its missing rows are garbage), through scratch
                                tile = whole and rows == MR
                                c = oall if tile else scratch
                                r0 = o0 + row0 if tile else 0
                                c0 = col0 if tile else 0
                                _micro(which, kc, wf, row0, rows, pc, bp, c, r0, c0, update and tile)
                                if tile:
                                    if last:
                                        _finish(which, oall, r0, col0, bias, row0, relu)
                                else:
                                    # scratch into out (adding what earlier slices left), and
                                    # the bias after the last slice
                                    # image by image where the panel runs on past image n
                                    for i in range(rows):
                                        s = c[r0 + i, c0:c0 + cols]
                                        b = bias[row0 + i]
                                        j0 = 0
                                        pos = col0
                                        img = o0 + row0 + i
                                        while j0 < cols:
                                            if pos >= P:
                                                pos -= P
                                                img += K
                                                continue
                                            ln = min(cols - j0, P - pos)
                                            dst = oall[img, pos:pos + ln]
                                            part = s[j0:j0 + ln]
                                            for j in range(ln):
                                                v = part[j]
                                                if update:
                                                    v += dst[j]
                                                if last:
                                                    v += b
                                                    if relu and v < 0:
                                                        v = 0
                                                dst[j] = v
                                            j0 += ln
                                            pos += ln

    width = level.vector_floats

    def each(make):
        return [make(w, min(w, width)) for w in WIDTHS]

    return with_globals(
        conv, _banded=banded_jit, _dotted=dotted_jit, _dot=dot_convolution(level),
        _panel_lanes=panel_lanes_jit, _band_plan=band_plan_jit,
        _over_channels=over_channels_jit, _lanes=lanes_convolution(level),
        _band_task=band_task(MR, NR, width, KC),
        _micro=_by_width("micro", "kc, w, r0, valid, k0, bp, c, crow0, col0, update",
                         each(lambda w, v: fc_micro_kernel(MR, w, v, clamped=True))),
        _finish=_by_width("finish", "c, row0, col0, bias, b0, relu",
                          each(lambda w, v: epilogue(MR, w, v))),
        _pack=_by_width("pack", "xf, x0, bp, kc, r0, C, H, W, KH, KW, sh, sw, pt, pl, seg, "
                                "nseg, cols", each(packer)),
        _pack_rows=_by_width("pack_rows", "xf, x0, bp, kc, r0, P, col0, cols",
                             each(row_packer)))

@kernel("convolution_inference", "implicit_gemm", signatures=_SIGNATURE, multiply_adds=True,
        workspace=workspace_floats)
@kernel("convolution_output", "implicit_gemm", signatures=_SIGNATURE, multiply_adds=True,
        workspace=workspace_floats)
def implicit_gemm(level):
    """W (K x C*KH*KW) @ im2col(x[n]), the im2col panels packed on the fly; any kernel,
    stride and padding."""
    return _build(level, pointwise=False)


@kernel("convolution_inference", "direct", signatures=_SIGNATURE, multiply_adds=True,
        workspace=workspace_floats)
@kernel("convolution_output", "direct", signatures=_SIGNATURE, multiply_adds=True,
        workspace=workspace_floats)
def direct(level):
    """1x1 stride 1: W (K x C) @ x[n] (C x H*W), the image's rows packed as they are
    (padding, if any, through the implicit GEMM packer); or, where over_channels takes
    the layer, x[n]^T @ W^T with the pixels broadcast from x in place (conv_lanes)."""
    return _build(level, pointwise=True)


# Kernel transforms (NNPACK's precompute / reuse strategies): W is transformed once into the
# layout the channel-lanes path reads, and every forward call with it skips the transform:
# at 7x7 a sixth of the layer's time (conv_lanes), and the reason mobilenet.pw14 ran as dot
# products (conv_dot) rather than in channel lanes, 25% faster at 1 thread without it.

def transform_layout(level) -> int:
    """What a level's transformed kernels' layout depends on: their panels' channels (NR).
    Levels that agree read each other's."""
    return lanes_tile(level)[1]


def transformed_shape(level, w_shape) -> tuple[int, int, int, int]:
    """The shape of W^T's panels as a transformed kernel holds them: W's, with K rounded up
    to whole NR-channel panels (the panels' floats, in conv_lanes' order, not W's)."""
    nr = transform_layout(level)
    k, c, kh, kw = w_shape
    return (k + nr - 1) // nr * nr, c, kh, kw


@kernel("convolution_kernel_transform", "implicit_gemm", signatures=void(reads(4), writes(4)))
def implicit_gemm_kernel_transform(level):
    """transform(w, panels): W (K, C, KH, KW) into W^T's NR-channel panels, each R x NR
    with the channels contiguous (conv_lanes.transpose_panel's layout), zero past K."""
    nr = lanes_tile(level)[1]

    def transform(w, panels):
        K = w.shape[0]
        R = w.shape[1] * w.shape[2] * w.shape[3]
        wf = w.reshape((K, R))
        flat = panels.reshape(panels.size)
        for kp in prange((K + NR - 1) // NR):
            _pack(wf, flat, kp, kp * R * NR)

    return with_globals(transform, NR=nr, prange=prange,
                        _pack=transpose_panel(nr, level.vector_floats))


def reuse_workspace_floats(level, x, panels, bias, out, sh, sw, pt, pl, relu) -> int:
    """Floats of workspace of a forward call with a transformed kernel: conv_lanes' without
    W^T."""
    from nnjit.dispatch.policy import get_num_threads

    mr, nr = tile_shape(level)
    kc, mc, nc = blocking(mr, nr)
    n, c, h, w_ = x.shape
    _, _, kh, kw = panels.shape
    return lanes_workspace(n, c, h, w_, out.shape[1], kh, kw, out.shape[2], out.shape[3], sh,
                           sw, pt, pl, long_tile(level), lanes_tile(level)[1],
                           level.vector_floats, mc * kc, nc * kc, get_num_threads(),
                           transformed=True)


# The panels are typed writeable (nothing writes them) so that the channel-lanes tasks see
# them as they see their workspace: a read-only type would not reach the code that packs.
_REUSE_SIGNATURE = void(reads(4), writes(4), reads(1), writes(4), i64, i64, i64, i64, boolean,
                        writes(1))


# parallel=False: the parallel loops are the channel-lanes stage's, compiled with its own.
@kernel("convolution_inference", "implicit_gemm_reuse", signatures=_REUSE_SIGNATURE,
        parallel=False, multiply_adds=True, workspace=reuse_workspace_floats)
@kernel("convolution_output", "implicit_gemm_reuse", signatures=_REUSE_SIGNATURE,
        parallel=False, multiply_adds=True, workspace=reuse_workspace_floats)
def implicit_gemm_reuse(level):
    """conv(x, panels, bias, out, sh, sw, pt, pl, relu, workspace): the forward
    convolution with a transformed kernel (implicit_gemm_kernel_transform's panels), any
    kernel, stride and padding, output channels in the lanes (conv_lanes)."""
    lanes = lanes_convolution(level)

    def conv(x, panels, bias, out, sh, sw, pt, pl, relu, workspace):
        _lanes(x, panels, False, bias, True, out, sh, sw, pt, pl, relu, workspace, panels)

    return with_globals(conv, _lanes=lanes)
