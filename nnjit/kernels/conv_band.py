"""Forward convolution, stride 1, on zero-bordered bands of the image: the implicit GEMM's
B operand read in place, never packed.

With stride 1, output pixel (oy, ox) reads band row oy + ky, column ox + kx of an image
padded to Wp = OW + KW - 1 columns. Number the outputs q = oy * Wp + ox over that padded
width (its last KW - 1 columns are not outputs and are dropped): im2col row (c, ky, kx) at
pixel q is then band[c * plane + ky * Wp + kx + q], contiguous in q. So an NR-pixel B
micro-panel row is one unaligned run of the band, found through a table of R offsets, and
the micro-kernel loads it directly: no im2col packing, which cost 1.7-4 cycles a float
(30% of a 64-channel 56x56 3x3 layer, 20% of a 14x14 one). The price is the KW - 1 dropped
columns a row (58 computed for 56 outputs) and copying the band, about (rows + KH - 1) /
rows times the image.

A task owns runs of output rows of one image; per KC slice it copies the band rows of the
slice's channels (zero borders, masked vector copies), runs every NR-pixel panel against
every MR-channel panel of W (read in place) into its accumulator tile (all K rows, in L2),
and at the end writes the tile's real columns out with the bias and ReLU.
"""
from __future__ import annotations

import functools

from numba import njit

from nnjit.dispatch.registry import helper, with_globals
from nnjit.kernels.codegen import (accumulators, clear_tile, define, multiply_add_step,
                                   prefetch_tile, store_tile)
from nnjit.kernels.vectors import prefetch, vector_ops


def band_plan(N, C, K, OH, OW, KH, KW, threads, kc, mr, nr, l2_floats):
    """(output rows, W rows per unit, units, band floats, tile floats) of the band path.
    A unit is (image, run of output rows, block of W's rows). The band of a KC slice's
    channels for a run of rows takes at most a quarter of L2 (which bounds the run), the
    unit's accumulator tile (W rows x rows * Wp) and the block's KC slice of W half, so
    that each KC slice of W is read once per run; blocks of at least 4 MR rows. Blocks
    and runs are then split so that the units keep every thread busy. Band and tile floats
    are per thread."""
    wp = OW + KW - 1
    taps = KH * KW
    band_channels = kc // taps + 2
    k_up = (K + mr - 1) // mr * mr
    rows = max(1, min(OH, l2_floats // 4 // (band_channels * wp) - (KH - 1)))
    # all of W's rows in one block where a run of at least one row fits beside them
    whole = (l2_floats // 2 // k_up - kc) // wp
    if whole >= 1:
        rows = min(rows, whole)
        mb = k_up
    else:
        mb = min(k_up, max(4 * mr, l2_floats // 2 // (kc + rows * wp) // mr * mr))
        rows = max(1, min(rows, (l2_floats // 2 // mb - kc) // wp))
    blocks = (K + mb - 1) // mb
    mb = ((K + blocks - 1) // blocks + mr - 1) // mr * mr       # balanced blocks
    blocks = (K + mb - 1) // mb
    chunks = (OH + rows - 1) // rows
    units = N * chunks * blocks
    small_w = K * C * taps <= l2_floats // 2
    if threads > 1 and (units < threads or (units < 4 * threads and (
            small_w or units % threads))):
        # Units for every thread alike: split the rows where W is small (re-reading it per
        # run costs nothing; 4 units a thread even out blocks of unequal size), else W's
        # rows (each thread then reads its share once).
        if small_w:
            chunks = min(OH, (4 * threads + N * blocks - 1) // (N * blocks))
            rows = (OH + chunks - 1) // chunks
            chunks = (OH + rows - 1) // rows
        else:
            blocks = max(blocks, (threads + N * chunks - 1) // (N * chunks))
            while N * chunks * blocks % threads and blocks < k_up // mr:
                blocks += 1
            mb = ((K + blocks - 1) // blocks + mr - 1) // mr * mr
            blocks = (K + mb - 1) // mb
    units = N * chunks * blocks
    panels = (rows * wp + nr - 1) // nr
    band = band_channels * (rows + KH - 1) * wp + nr + KW
    return rows, mb, units, band, mb * panels * nr


band_plan_jit = njit(inline="always")(band_plan)


def banded(sh, sw, KH, KW, OH, OW, C, K, kc, mr, nr, l2_floats, pointwise) -> bool:
    """Whether a forward convolution runs on bands: stride 1, a kernel wider than one tap,
    packing dearer than the lanes the bands waste, and W read no more often than the
    packed path reads it.

    Packing costs about 1.5 + 32 / OW cycles a float (short rows split panels into more
    runs; measured 1.7 at 56x56, 4 at 14x14), shared by the ceil(K / MR) channel panels at
    12 cycles a panel row. Bands waste the KW - 1 dropped columns of each row and the end
    of the last panel (14x14: 196 of 224 lanes; 13x13: 169 of 224); they are used where
    packing costs 1.5 times more. Units must hold all of W's rows (else the band is copied
    once per block of them), and either the whole image or a W small enough to re-read
    per run of rows: resnet18's 56x56 (64 channels) and 14x14 3x3 layers and VGG's first;
    not VGG's 112x112 and 56x56 ones (W read per few rows) nor AlexNet's 13x13 ones."""
    if pointwise or sh != 1 or sw != 1 or KH * KW == 1:
        return False
    wp = OW + KW - 1
    panels = (K + mr - 1) // mr
    lanes = (OH * wp + nr - 1) // nr * nr
    # pack / panels > 1.5 waste, with pack = 4 + 85 / OW and waste = 1 - OH * OW / lanes
    if (4 * OW + 85) * lanes * 2 <= 3 * (lanes - OH * OW) * panels * OW:
        return False
    rows, mb = band_plan(1, C, K, OH, OW, KH, KW, 1, kc, mr, nr, l2_floats)[:2]
    return mb >= K and (rows == OH or K * C * KH * KW <= l2_floats // 2)


banded_jit = njit(inline="always")(with_globals(banded, band_plan=band_plan_jit))


@functools.lru_cache(maxsize=None)
def offset_micro_kernel(rows: int, nr: int, width: int):
    """micro(kc, w, r0, valid, k0, band, base, off, c, crow0, col0, update):
        c[crow0 + i, col0 + j] (=, +=) sum_k w[r0 + i, k0 + k] * band[base + off[k0 + k] + j]
    for i < rows, j < nr: the fully-connected micro-kernel (clamped: rows past the valid
    ones repeat the last and give garbage rows of c) with its B rows found through an
    offset table in the band instead of a packed panel."""
    acc = accumulators(rows, nr, width)
    lines = ["def micro(kc, w, r0, valid, k0, bp, base, off, c, crow0, col0, update):"]
    lines += [f"    w{i} = w[r0 + min({i}, valid - 1), k0:k0 + kc]" for i in range(rows)]
    lines.append("    offk = off[k0:k0 + kc]")
    lines += prefetch_tile(rows, nr, row="c[crow0 + {i}]")
    lines += clear_tile(acc)
    lines.append("    for k in range(kc):")
    lines.append("        at = base + offk[k]")
    lines += multiply_add_step(acc, "w{i}[k]", "at", width, " " * 8)
    lines += store_tile(acc, width, row="c[crow0 + {i}]")
    micro = define(lines, __file__, dict(vector_ops(width), prefetch=prefetch),
                   f"band_micro_{rows}x{nr}")
    return helper(micro, fastmath={"contract"})


@functools.lru_cache(maxsize=None)
def band_task(mr: int, nr: int, width: int, kc_max: int):
    """task(first, last, x, wf, bias, out, KH, KW, pt, pl, relu, off, rows_per, mb, band,
    tile): units first..last-1 of the band path (band_plan's: image, run of rows_per output
    rows, block of mb rows of W; blocks innermost), with this thread's band and tile."""
    from nnjit.kernels.conv_lanes import bordered_row_copy

    copy_row = bordered_row_copy(width)
    micro = offset_micro_kernel(mr, nr, width)

    def task(first, last, x, wf, bias, out, KH, KW, pt, pl, relu, off, rows_per, mb, band,
             tile):
        H = x.shape[2]
        W = x.shape[3]
        K = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        R = wf.shape[1]
        taps = KH * KW
        Wp = OW + KW - 1
        plane = (rows_per + KH - 1) * Wp       # the offset table's channel stride
        chunks = (OH + rows_per - 1) // rows_per
        blocks = (K + mb - 1) // mb
        for e in range(band.shape[0] - NR - KW, band.shape[0]):
            band[e] = 0         # read only for dropped columns: keep them finite
        for u in range(first, last):
            kb = u % blocks
            n = u // (chunks * blocks)
            oy0 = (u // blocks - n * chunks) * rows_per
            rows = min(rows_per, OH - oy0)
            k0 = kb * mb
            kn = min(mb, K - k0)
            panels = (rows * Wp + NR - 1) // NR
            # rows rounded up to whole MR panels: the last panel's missing rows are garbage
            ct = tile[:(kn + MR - 1) // MR * MR * panels * NR].reshape(
                ((kn + MR - 1) // MR * MR, panels * NR))
            for pc in range(0, R, KC):
                kc = min(KC, R - pc)
                c_lo = pc // taps
                for c in range(c_lo, (pc + kc - 1) // taps + 1):
                    for by in range(rows + KH - 1):
                        iy = oy0 - pt + by
                        d0 = (c - c_lo) * plane + by * Wp
                        inside = 0 <= iy < H
                        copy_row(band[d0:d0 + Wp], x[n, c, iy if inside else 0], pl,
                                 W if inside else 0)
                b0 = -c_lo * plane
                for qp in range(panels):
                    q0 = qp * NR
                    for row0 in range(0, kn, MR):
                        micro(kc, wf, k0 + row0, min(MR, kn - row0), pc, band, b0 + q0, off,
                              ct, row0, q0, pc > 0)
            # the tile's real columns out, with the bias (and ReLU)
            for k in range(kn):
                b = bias[k0 + k]
                src = ct[k]
                for r in range(rows):
                    dst = out[n, k0 + k, oy0 + r]
                    s = src[r * Wp:r * Wp + OW]
                    for j in range(OW):
                        v = s[j] + b
                        if relu and v < 0:
                            v = 0
                        dst[j] = v

    task = with_globals(task, MR=mr, NR=nr, KC=kc_max, copy_row=copy_row, micro=micro)
    task.__qualname__ = task.__name__ = f"band_task_{mr}x{nr}"
    return helper(task)
