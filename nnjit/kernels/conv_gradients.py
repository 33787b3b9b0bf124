"""Convolution gradients as implicit GEMMs on the packed GEMM engine's register tiles.

Both kernels take the level's tile shape (MR x NR) and cache budgets from nnjit.kernels.gemm
(tile_shape, the kernel gradient gemm_tile; blocking: NNPACK's rules) and never materialise an im2col / col2im buffer of a
whole tensor.

``convolution_input_gradient`` / ``implicit_gemm``
    Stride 1 (``flipped_lanes``): the forward channel-lanes path's correlation of
    grad_output with the flipped kernel. Otherwise:
    grad_input[n, c, y, x] = sum_{k,i,j} w[k, c, i, j] * grad_output[n, k, oy, ox] where
    y + pad_top = oy * sh + i, x + pad_left = ox * sw + j. Input pixels are split by stride
    phase ((y + pad_top) mod sh, (x + pad_left) mod sw): a phase meets only the taps
    i = ph + sh*u, j = pw + sw*v, and within it (oy, ox) = (a0 + a - u, b0 + b - v) for its
    pixel (a, b): a stride-1 correlation with no multiplications by the stride's zeros.
    Per phase, transposed: C[phase pixels, C] = A[pixels, K*taps] @ B[K*taps, C]. B (the
    kernel) is packed once per call into NR-channel panels; A needs no packing: each task
    copies the rows of grad_output its group of pixels reads into a zero-bordered band, and
    pixel p's row r = (k, u, v) is band[base_p + roff[r]], which the micro-kernel broadcasts
    straight from the band (MR pixel bases, one offset table). Packing B panels of
    im2col(grad_output) on the fly instead cost 14-18% at C = 64 (a copy per 2*C flops).
    Tasks own the same share of every phase's MR-pixel panels, in groups whose C rows (MR x
    C each) stay in L2 across the KC slices; a group goes through all phases, each writing
    its pixels out transposed into grad_input, before the next group (the phases' pixels
    interleave in grad_input's rows, which stay in cache between them).

``convolution_kernel_gradient`` / ``implicit_gemm``
    grad_w^T[(c, i, j), k] = sum_{n, oy, ox} xpad[n, c, oy*sh + i, ox*sw + j] * go[n, k, oy, ox]
    with xpad x zero-padded once (one pass over x). The GEMM runs transposed (rows = C*KH*KW
    kernel taps, columns = K output channels) so that B = grad_output^T is packed once into
    NR-channel panels (one pass over grad_output, reused by every row) and A needs no packing
    at all: the micro-kernel broadcasts its MR row values straight from xpad (row m at
    offset base_m + oy*sh*Wp + ox*sw), looping over whole output rows of an image inside the
    k loop. Packing im2col(x) instead would cost a transposing copy per element of the
    C*KH*KW x pixels matrix, 1/(2K) of the flops (25% at K = 64). Tasks own blocks of
    MR-row panels (all channels, all of the batch: no partial sums to add), accumulate in
    their own scratch and write their rows of grad_w transposed at the end.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import helper, kernel, with_globals
from nnjit.kernels.codegen import (accumulators, add_tile, clear_tile, define, multiply_add_step,
                                   prefetch_tile, store_tile)
from nnjit.kernels.conv_lanes import (bordered_row_copy, lanes_convolution, lanes_tile,
                                      lanes_workspace, long_tile, over_channels,
                                      over_channels_jit, pair_width, pair_width_jit)
from nnjit.kernels.gemm import blocking, gemm_tile, intel_host, tile_shape
from nnjit.kernels.signatures import i64, reads, void, writes
from nnjit.kernels.vectors import vector_ops

# Tasks per parallel launch, at most, of equal size (prange splits its range statically:
# 16 equal tasks share evenly among 1, 2, 4, 8 or 16 threads).
TASKS = 16

_WS = writes(1)
_INPUT_GRADIENT = void(reads(4), reads(4), writes(4), i64, i64, i64, i64, _WS)
_KERNEL_GRADIENT = void(reads(4), reads(4), writes(4), i64, i64, i64, i64, _WS)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------ input gradient
def _band_width(kw, w, ow, sw, pl):
    """Columns of a row of grad_output in a band: KW - 1 zeros left, then enough for every
    tap of every phase (zeros past OW)."""
    return kw - 1 + max(ow, (w - 1 + pl) // sw + 1)


_band_width_jit = njit(inline="always")(_band_width)


def _pixel_group(cp, mr):
    """MR-pixel panels whose rows of C (cp floats each) accumulate together: about 128 KiB,
    so that they stay in L2 across the KC slices."""
    return max(1, (128 * 1024 // 4) // (mr * cp))


_pixel_group_jit = njit(inline="always")(_pixel_group)


def _phase_band_rows(pixels, wq, hwq, n, ni):
    """Rows of a group's band of grad_output in one stride phase: the phase rows that a run
    of ``pixels`` pixels (row-major, wq a row, hwq an image) spans in each image it touches,
    plus ni - 1 rows above each image's part for the taps."""
    images = min(n, (pixels + hwq - 1) // hwq + 1)
    return (pixels + wq - 1) // wq + 2 * images + images * (ni - 1)


_phase_band_rows_jit = njit(inline="always")(_phase_band_rows)


def _phase(ph, k, s, p, size):
    """(taps, first pixel, pixels, output offset) of stride phase ph along one axis:
    kernel taps ph, ph + s, ...; input pixels first, first + s, ...; output index of
    (pixel 0, tap 0)."""
    taps = (k - ph + s - 1) // s if ph < k else 0
    first = (ph - p) % s
    pixels = (size - first + s - 1) // s if first < size else 0
    return taps, first, pixels, (first + p - ph) // s


_phase_jit = njit(inline="always")(_phase)


def _band_floats(k, kh, kw, n, h, w, sh, sw, pt, pl, pixels, wg):
    """Floats of the largest band (over the stride phases) of a group of ``pixels``."""
    most = 0
    for ph in range(sh):
        ni, _, hq, _ = _phase(ph, kh, sh, pt, h)
        for pw in range(sw):
            nj, _, wq, _ = _phase(pw, kw, sw, pl, w)
            if ni * nj > 0 and hq * wq > 0:
                most = max(most, k * _phase_band_rows(pixels, wq, hq * wq, n, ni) * wg)
    return most


_band_floats_jit = njit(with_globals(_band_floats, _phase=_phase_jit,
                                     _phase_band_rows=_phase_band_rows_jit))


# Reduction rows from which narrow rows run better as phase GEMMs (flipped_lanes).
DEEP_REDUCTION = 1536


def flipped_lanes(sh, sw, pt, pl, KH, KW, K, C, H, W, mr, long, nr, l2_floats,
                  l3_floats, deep_pairs) -> bool:
    """Whether an input gradient (input H x W) runs as the forward channel-lanes path's
    correlation of grad_output (K channels) with the flipped, transposed kernel (C output
    channels), padded by KH - 1 - pad_top and KW - 1 - pad_left: stride 1, top and left
    padding within the kernel (bottom and right ones past it only drop grad_output rows
    that meet no input), the shape conv_lanes.over_channels takes, and rows that either
    split into tiles of MR pixels with under 5% of their lanes idle, unless the rows are at
    most two tiles wide and the reduction deep (R = K*KH*KW >= DEEP_REDUCTION), or pair up
    (conv_lanes.pair_width) into tiles of at least MR - 1 pixels a line, with the reduction
    under DEEP_REDUCTION unless ``deep_pairs`` (paired_rows_deep). The phase GEMMs
    below run pixels across rows and images, without idle lanes, and slice R in L2; on
    Zen 4, 14-wide rows ran 5-8% slower on the lanes at R 1728-4608 (3-6% at two threads),
    as fast at R 1152 and 11% faster at R 576; 27- to 56-wide ones 3-16% faster (batch 16,
    same-run A/B). Paired rows (12 and 13 wide: 2 x 6 and 2 x 7 pixels) on the lanes
    against the phase GEMMs' 7-pixel tiles, on Ice Lake server at batch 16: alexnet.conv3
    102 -> 119 GFLOP/s, alexnet.conv5 102 -> 125, overfeat.conv3 73 -> 113 at one thread
    (runs a few minutes apart, torch level across them). On Zen 4 the same pairs ran
    overfeat.conv3 (R 4608) 10% slower than the phase GEMMs (0.78-0.81 of torch against
    0.88-0.89) and alexnet.conv3 (R 3456) and conv5 (R 2304) as fast (batch 16, 1 thread,
    alternating runs)."""
    tiles = (W + mr - 1) // mr
    return (sh == 1 and sw == 1 and pt < KH and pl < KW
            and ((20 * W >= 19 * tiles * mr and (W > 2 * mr or K * KH * KW < DEEP_REDUCTION))
                 or (pair_width(H, W, 1, long, mr) >= mr - 1
                     and (deep_pairs or K * KH * KW < DEEP_REDUCTION)))
            and over_channels(KH, KW, 1, 1, K, C, nr, l2_floats, l3_floats))


def paired_rows_deep() -> bool:
    """flipped_lanes' ``deep_pairs``: paired rows take the lanes at any reduction depth on
    Intel hosts, where they were measured faster, and only below DEEP_REDUCTION elsewhere."""
    return intel_host()


flipped_lanes_jit = njit(inline="always")(with_globals(
    flipped_lanes, over_channels=over_channels_jit, pair_width=pair_width_jit))


def input_gradient_workspace(level, grad_output, w, grad_input, sh, sw, pt, pl) -> int:
    """Floats of scratch: the flipped correlation's (conv_lanes.lanes_workspace) where it
    runs; else W^T packed for all phases, and per task its group's rows of C and its band
    of zero-bordered grad_output."""
    from nnjit.dispatch.policy import get_num_threads

    mr, nr = lanes_tile(level)
    n, k, oh, ow = grad_output.shape
    _, c, kh, kw = w.shape
    h, w_ = grad_input.shape[2:]
    kc, mc, nc = blocking(*tile_shape(level))
    if flipped_lanes(sh, sw, pt, pl, kh, kw, k, c, h, w_, mr, long_tile(level), nr, mc * kc,
                     nc * kc, paired_rows_deep()):
        return lanes_workspace(n, k, oh, ow, c, kh, kw, h, w_, 1, 1, kh - 1 - pt, kw - 1 - pl,
                               long_tile(level), nr, level.vector_floats, mc * kc, nc * kc,
                               get_num_threads())
    wg = _band_width(kw, w_, ow, sw, pl)
    cp = _cdiv(c, nr) * nr
    pixels = _pixel_group(cp, mr) * mr
    return (cp * k * kh * kw + TASKS * pixels * cp
            + TASKS * _band_floats(k, kh, kw, n, h, w_, sh, sw, pt, pl, pixels, wg))


def reduction_depth(mr: int, nr: int) -> int:
    """Reduction rows per micro-kernel call, at most, for both gradients: slices of B (KC x
    NR) of a quarter of the L2 budget. Neither gradient packs A into L1-sized panels (the
    micro-kernels broadcast it in place), so NNPACK's L1 rule (KC = 210 at 7 x 32) does not
    bind, and at that depth each call's fixed cost (MR base loads, the C tile's reload and
    store) was 3-9% of the layer. At 1536 and 1152 rows overfeat.conv3's and alexnet.conv5's
    input gradients ran 2-5% faster; 9x deeper chunks of output rows, resnet18.l1's,
    alexnet.conv2's and resnet50.l1's kernel gradients 2-9% (batch 16, 1 and 2 threads,
    same-process A/B)."""
    kc, mc, _ = blocking(mr, nr)
    return max(2, mc * kc // (4 * nr))


@functools.lru_cache(maxsize=None)
def gather_micro_kernel(mr: int, nr: int, width: int):
    """The MR x NR micro-kernel with A broadcast straight from a flat array at a per-step
    offset (a plain @njit helper, like gemm.micro_kernel):

    micro(kc, xs, table, tbase, bases, bbase, bp, c, row0, col0, update):
        c[row0 + i, col0 + j] (=, +=) sum_{k < kc} xs[bases[bbase + i] + table[tbase + k]]
                                                   * bp[k * NR + j]

    Per step: one offset load, NR/width vector loads of B, MR scalar broadcasts and
    MR * NR/width multiply-adds on the MR x NR/width accumulators (named vector values)."""
    acc = accumulators(mr, nr, width)
    lines = ["def micro(kc, xs, table, tbase, bases, bbase, bp, c, row0, col0, update):"]
    # Unsigned: a signed index costs a negative-index fix-up per broadcast (the sums
    # wrap modulo 2**64 to the right non-negative index).
    lines += [f"    o{i} = np.uint64(bases[bbase + {i}])" for i in range(mr)]
    lines += prefetch_tile(mr, nr)
    lines += clear_tile(acc)
    lines.append("    tb = np.uint64(tbase)")
    lines.append("    for k in range(kc):")
    lines.append("        off = np.uint64(table[tb + np.uint64(k)])")
    lines += multiply_add_step(acc, "xs[o{i} + off]", f"k * {nr}", width, " " * 8)
    lines += store_tile(acc, width)
    return _compile_micro(lines, width, f"gather_micro_{mr}x{nr}")


def _compile_micro(lines, width, name):
    from nnjit.kernels.vectors import prefetch

    micro = define(lines, __file__, dict(vector_ops(width), prefetch=prefetch, np=np), name)
    # Only contraction, as gemm.micro_kernel: no reassociation of the accumulations.
    return helper(micro, fastmath={"contract"})


@kernel("convolution_input_gradient", "implicit_gemm", signatures=_INPUT_GRADIENT,
        multiply_adds=True, workspace=input_gradient_workspace)
def input_gradient_implicit_gemm(level):
    """grad_input^T = im2col(grad_output)^T @ W per stride phase, im2col read in place from a
    zero-bordered grad_output, W^T packed once. The tile is conv_lanes' (pixels broadcast,
    channels in the lanes): 7 x 32 with 32 vector registers was 2-11% faster than the GEMM
    engine's 6 x 32 (8 x 32 the same as 7, 10 x 32 slower)."""
    MR, NR = lanes_tile(level)
    kc, mc, nc = blocking(*tile_shape(level))
    L2_FLOATS, L3_FLOATS = mc * kc, nc * kc     # the forward path's budgets
    KC_MAX = reduction_depth(MR, NR)
    LONG = long_tile(level)
    DEEP_PAIRS = paired_rows_deep()

    def input_gradient(grad_output, w, grad_input, sh, sw, pt, pl, workspace):
        N = grad_output.shape[0]
        K = grad_output.shape[1]
        OH = grad_output.shape[2]
        OW = grad_output.shape[3]
        C = w.shape[1]
        KH = w.shape[2]
        KW = w.shape[3]
        H = grad_input.shape[2]
        W = grad_input.shape[3]
        if _flipped_lanes(sh, sw, pt, pl, KH, KW, K, C, H, W, MR, LONG, NR, L2_FLOATS,
                          L3_FLOATS, DEEP_PAIRS):
            # w's elements, as the (unread) bias argument of the stage's forward signature
            _lanes(grad_output, w, True, w.reshape(K * C * KH * KW), False, grad_input, 1, 1,
                   KH - 1 - pt, KW - 1 - pl, False, workspace, None)
            return
        c_panels = (C + NR - 1) // NR
        CP = c_panels * NR
        w_size = CP * K * KH * KW
        PL = KW - 1
        Wg = _band_width_jit(KW, W, OW, sw, pl)
        GP = _pixel_group_jit(CP, MR)
        task_base = w_size
        task_size = GP * MR * CP
        # Each task's band: the grad_output rows its group of pixels reads (all channels),
        # with a zero border (KW - 1 columns left, zero rows where a tap leaves the image),
        # so every tap of every pixel reads a real element.
        band_base = task_base + TASKS * task_size
        band_size = _band_floats_jit(K, KH, KW, N, H, W, sh, sw, pt, pl, GP * MR, Wg)
        # 1. per stride phase: pixels no tap reaches are zero; the others' B[(k, u, v), c]
        # = w[k, c, ph + sh*u, pw + sw*v] in NR-channel panels (panel q holds (r, jj) at
        # r * NR + jj, channels past C zero), and the band offsets of their rows: row
        # r = (k, u, v) of a group's pixel t reads its task's band at bases[t] + roff[r]
        # (channel planes of the phase's plane floats, rows of Wg).
        roff = np.empty(K * KH * KW, np.int64)
        w_off = 0
        most = 0        # MR-pixel panels of the largest phase
        for ph in range(sh):
            # taps ph + sh * u, rows yf + sh * a, (a = 0, u = 0) reads output row bh
            nI, yf, Hq, bh = _phase_jit(ph, KH, sh, pt, H)
            for pw in range(sw):
                nJ, xf, Wq, bw = _phase_jit(pw, KW, sw, pl, W)
                R = K * nI * nJ
                if N * Hq * Wq == 0:
                    continue
                if R == 0:
                    for nc in prange(N * C):
                        n = nc // C
                        c = nc - n * C
                        for a in range(Hq):
                            row = grad_input[n, c, yf + sh * a]
                            for b in range(Wq):
                                row[xf + sw * b] = 0
                    continue
                most = max(most, (N * Hq * Wq + MR - 1) // MR)
                wpack = workspace[w_off:w_off + CP * R]
                for q in prange(c_panels):
                    dst = wpack[q * R * NR:(q + 1) * R * NR]
                    chans = min(NR, C - q * NR)
                    for k in range(K):
                        for u in range(nI):
                            for v in range(nJ):
                                r = (k * nI + u) * nJ + v
                                d = dst[r * NR:(r + 1) * NR]
                                for jj in range(chans):
                                    d[jj] = w[k, q * NR + jj, ph + sh * u, pw + sw * v]
                                for jj in range(chans, NR):
                                    d[jj] = 0
                plane = _phase_band_rows_jit(GP * MR, Wq, Hq * Wq, N, nI) * Wg
                r0 = w_off // CP
                for k in range(K):
                    for u in range(nI):
                        for v in range(nJ):
                            roff[r0 + (k * nI + u) * nJ + v] = k * plane - u * Wg - v
                w_off += CP * R
        if most == 0:
            return
        # 2. tasks: the same share of every phase's MR-pixel panels (the same part of the
        # image), in groups whose C rows stay in L2 across the KC slices, each group through
        # all phases before the next: the phases interleave in grad_input's rows, which then
        # stay in cache from phase to phase (phase by phase over the whole batch, a stride-2
        # layer spent 40% of its time writing grad_input and reading grad_output again).
        gflat = grad_input.reshape(N * C * H * W)
        n_tasks = min(TASKS, most)
        n_groups = ((most + n_tasks - 1) // n_tasks + GP - 1) // GP
        for task in prange(n_tasks):
            cbuf = workspace[task_base + task * task_size:
                             task_base + (task + 1) * task_size].reshape((GP * MR, CP))
            bases = np.empty(GP * MR, np.int64)
            for gi in range(n_groups):
                w_off = 0
                for ph in range(sh):
                    nI, yf, Hq, bh = _phase_jit(ph, KH, sh, pt, H)
                    for pw in range(sw):
                        nJ, xf, Wq, bw = _phase_jit(pw, KW, sw, pl, W)
                        R = K * nI * nJ
                        HWq = Hq * Wq
                        Np = N * HWq
                        if Np == 0 or R == 0:
                            continue
                        wpack = workspace[w_off:w_off + CP * R]
                        r0 = w_off // CP
                        w_off += CP * R
                        # R in equal slices of at most KC_MAX rows
                        slices = (R + KC_MAX - 1) // KC_MAX
                        KC = (R + slices - 1) // slices
                        plane = _phase_band_rows_jit(GP * MR, Wq, HWq, N, nI) * Wg
                        band = workspace[band_base + task * band_size:
                                         band_base + task * band_size + K * plane]
                        p_panels = (Np + MR - 1) // MR
                        p_lo = task * p_panels // n_tasks
                        p_hi = (task + 1) * p_panels // n_tasks
                        g_lo = p_lo + gi * (p_hi - p_lo) // n_groups
                        g_hi = p_lo + (gi + 1) * (p_hi - p_lo) // n_groups
                        if g_lo >= g_hi:
                            continue
                        pix0 = g_lo * MR
                        pixels = min(g_hi * MR, Np) - pix0
                        # The band: for each image the group's pixels lie in, the output rows
                        # their taps read (a_lo + bh - nI + 1 .. a_hi + bh), every channel,
                        # zero-bordered.
                        row0 = 0
                        t = 0
                        while t < pixels:
                            g = pix0 + t
                            n = g // HWq
                            run = min(pixels - t, (n + 1) * HWq - g)
                            a_lo = (g - n * HWq) // Wq
                            rows = (g + run - 1 - n * HWq) // Wq - a_lo + nI
                            oy0 = a_lo + bh - nI + 1
                            for k in range(K):
                                for rr in range(rows):
                                    start = k * plane + (row0 + rr) * Wg
                                    oy = oy0 + rr
                                    inside = oy >= 0 and oy < OH
                                    _bordered(band[start:start + Wg],
                                              grad_output[n, k, oy if inside else 0], PL,
                                              OW if inside else 0)
                            for e in range(run):
                                rem = g + e - n * HWq
                                a = rem // Wq
                                bases[t + e] = ((row0 + a - a_lo + nI - 1) * Wg
                                                + rem - a * Wq + bw + PL)
                            row0 += rows
                            t += run
                        for t in range(pixels, (g_hi - g_lo) * MR):
                            bases[t] = bases[pixels - 1]    # pad a panel with a real pixel
                        for pc in range(0, R, KC):
                            kc = min(KC, R - pc)
                            for q in range(c_panels):
                                start = q * R * NR + pc * NR
                                bp = wpack[start:start + kc * NR]
                                for p in range(g_lo, g_hi):
                                    o = (p - g_lo) * MR
                                    _gather_micro(kc, band, roff, r0 + pc, bases, o, bp, cbuf,
                                                  o, q * NR, pc > 0)
                        # 3. the group's pixels out to grad_input, transposed.
                        t = 0
                        while t < pixels:
                            g = pix0 + t
                            n = g // HWq
                            rem = g - n * HWq
                            if sh == 1 and sw == 1:
                                # the phase is the image: a run within one image is
                                # contiguous in each channel's plane
                                ln = min(pixels - t, HWq - rem)
                                for c in range(C):
                                    plane_c = gflat[(n * C + c) * HWq + rem:
                                                    (n * C + c) * HWq + rem + ln]
                                    for e in range(ln):
                                        plane_c[e] = cbuf[t + e, c]
                            else:
                                a = rem // Wq
                                b = rem - a * Wq
                                ln = min(pixels - t, Wq - b)
                                y = yf + sh * a
                                x0 = xf + sw * b
                                for c in range(C):
                                    row = grad_input[n, c, y]
                                    for e in range(ln):
                                        row[x0 + sw * e] = cbuf[t + e, c]
                            t += ln

    return with_globals(input_gradient, _gather_micro=gather_micro_kernel(
        MR, NR, level.vector_floats), _bordered=bordered_row_copy(level.vector_floats),
        _flipped_lanes=flipped_lanes_jit, _lanes=lanes_convolution(level))


# ----------------------------------------------------------------- kernel gradient
@functools.lru_cache(maxsize=None)
def strided_micro_kernel(mr: int, nr: int, width: int, row_sums: bool):
    """The MR x NR micro-kernel with A broadcast straight from a flat array instead of a
    packed panel (a plain @njit helper, like gemm.micro_kernel):

    micro(rows, cols, block, rstride, cstride, xs, table, tbase, shift, bp, c, row0, col0,
          update):
        c[row0 + i, col0 + j] (=, +=) sum_{r < rows, s < cols}
            xs[o_i + r * rstride + s * cstride] * bp[(r * cols + s) * NR + j]
    with o_i = shift + table[tbase + i] (an int64 array of row offsets).

    The MR x NR/width accumulators are named vector values held across the loops; per
    step: NR/width vector loads of B, MR scalar broadcasts and MR * NR/width multiply-adds.
    With ``row_sums`` (where the registers hold a second tile) each ``block`` of rows sums
    into a tile of its own, added to the first after the block: chains of block * cols
    additions, as with NNPACK's L1-sized KC, however deep the chunk (reduction_depth), so
    that deep chunks keep its 1e-6 on AlexNet's, OverFeat's and VGG's kernel gradients."""
    acc = accumulators(mr, nr, width)
    step = accumulators(mr, nr, width, "r") if row_sums else acc
    lines = ["def micro(rows, cols, block, rstride, cstride, xs, table, tbase, shift, bp, c, "
             "row0, col0, update):"]
    lines += [f"    o{i} = shift + table[tbase + {i}]" for i in range(mr)]
    lines += prefetch_tile(mr, nr)
    lines += clear_tile(acc)
    # Unsigned indices: a signed one costs a negative-index fix-up per broadcast.
    lines.append("    rs = np.uint64(rstride)")
    lines.append("    cs = np.uint64(cstride)")
    lines += [f"    u{i} = np.uint64(o{i})" for i in range(mr)]
    lines.append("    t = 0")
    lines.append("    for r0 in range(0, rows, block):")
    if row_sums:
        lines += clear_tile(step, " " * 8)
    lines.append("        for r in range(r0, min(rows, r0 + block)):")
    lines.append("            idx = np.uint64(r) * rs")
    lines.append("            for s in range(cols):")
    lines += multiply_add_step(step, "xs[u{i} + idx]", "t", width, " " * 16)
    lines.append(f"                t += {nr}")
    lines.append("                idx += cs")
    if row_sums:
        lines += add_tile(acc, step, " " * 8)
    lines += store_tile(acc, width)
    return _compile_micro(lines, width, f"strided_micro_{mr}x{nr}{'_rows' if row_sums else ''}")


def _row_sums(level) -> bool:
    """Whether the kernel gradient's micro-kernel holds a second tile for row sums: MR x NR
    twice, the B vectors and a broadcast within the vector registers."""
    mr, nr = gemm_tile(level)
    vectors = nr // level.vector_floats
    return 2 * mr * vectors + vectors + 1 <= level.vector_registers


def kernel_gradient_depth(level) -> int:
    """Reduction steps per micro-kernel call: reduction_depth where the row sums keep the
    rounding of a deep chunk down, else NNPACK's L1 rule (blocking's KC)."""
    mr, nr = gemm_tile(level)
    return reduction_depth(mr, nr) if _row_sums(level) else blocking(mr, nr)[0]


# Row panels a task should own at least, so that each B slice (in L1) meets enough of
# them: with fewer, grad_output^T streams from memory once per task.
MIN_TASK_PANELS = 24


def _kernel_gradient_split(m_panels, n):
    """(row blocks, batch groups): a power-of-two count of row blocks of at least
    MIN_TASK_PANELS panels (at most TASKS), the batch split into groups for the rest of
    TASKS; each group sums into its own partial grad_w^T."""
    blocks = 1
    while blocks * 2 <= TASKS and m_panels // (blocks * 2) >= MIN_TASK_PANELS:
        blocks *= 2
    return blocks, max(1, min(n, TASKS // blocks))


_kernel_gradient_split_jit = njit(inline="always")(_kernel_gradient_split)


def _reads_x_in_place(pt, pl, hp, wp, h, w):
    """Whether every tap lands inside x (no top/left padding, and the taps' extent within
    x): the kernel gradient then reads x itself instead of a zero-padded copy."""
    return pt == 0 and pl == 0 and hp <= h and wp <= w


_reads_x_in_place_jit = njit(inline="always")(_reads_x_in_place)


def _band_shape(block, taps, kc, oh, ow, sh, kh):
    """(output rows per micro-kernel chunk, output rows per band, channels, rows) of a
    task's zero-padded band of x: the image rows that a few chunks of output rows read (at
    least 4 kernel heights, so the rows shared by neighbouring bands are a small part, and
    at most the image's), for the channels of the task's block of rows."""
    chunk_rows = max(1, min(oh, kc // ow))
    band_out = (min(oh, max(chunk_rows, 4 * kh)) + chunk_rows - 1) // chunk_rows * chunk_rows
    return chunk_rows, band_out, (block + taps - 1) // taps + 1, (band_out - 1) * sh + kh


_band_shape_jit = njit(inline="always")(_band_shape)


def _kernel_gradient_sizes(mr, nr, kc, x_shape, go_shape, kernel_size, sh, sw, pt, pl):
    n, c, h, w = x_shape
    k, oh, ow = go_shape[1:]
    kh, kw = kernel_size
    hp, wp = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    m_panels = _cdiv(c * kh * kw, mr)
    blocks, groups = _kernel_gradient_split(m_panels, n)
    block = _cdiv(m_panels, blocks) * mr
    kp = _cdiv(k, nr) * nr
    bands = 0
    if not _reads_x_in_place(pt, pl, hp, wp, h, w):
        _, _, channels, rows = _band_shape(block, kh * kw, kc, oh, ow, sh, kh)
        bands = groups * blocks * channels * rows * wp
    return kp * n * oh * ow, groups * blocks * block * kp, bands


def kernel_gradient_workspace(level, x, grad_output, grad_w, sh, sw, pt, pl) -> int:
    """Floats of scratch: grad_output^T panels, partial grad_w^T per task, and (unless no
    tap reaches the padding) each task's zero-padded band of x."""
    mr, nr = gemm_tile(level)
    kc = kernel_gradient_depth(level)
    return sum(_kernel_gradient_sizes(mr, nr, kc, x.shape, grad_output.shape,
                                      grad_w.shape[2:], sh, sw, pt, pl))


@kernel("convolution_kernel_gradient", "implicit_gemm", signatures=_KERNEL_GRADIENT,
        multiply_adds=True, workspace=kernel_gradient_workspace)
def kernel_gradient_implicit_gemm(level):
    """grad_w^T = im2col(x) @ grad_output^T summed over the batch: grad_output^T packed once,
    im2col(x) read in place by the micro-kernel: from x itself where no tap reaches the
    padding, else from a zero-padded band of x per task and chunk of output rows (the rows
    and channels the chunk reads: no padded copy of the whole input)."""
    MR, NR = gemm_tile(level)
    KC = kernel_gradient_depth(level)
    SUM_DEPTH = blocking(MR, NR)[0]

    def kernel_gradient(x, grad_output, grad_w, sh, sw, pt, pl, workspace):
        N = x.shape[0]
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = grad_output.shape[1]
        OH = grad_output.shape[2]
        OW = grad_output.shape[3]
        KH = grad_w.shape[2]
        KW = grad_w.shape[3]
        Hp = (OH - 1) * sh + KH
        Wp = (OW - 1) * sw + KW
        P = OH * OW
        taps = KH * KW
        M = C * taps
        m_panels = (M + MR - 1) // MR
        k_panels = (K + NR - 1) // NR
        KP = k_panels * NR
        RB, BG = _kernel_gradient_split_jit(m_panels, N)
        block = (m_panels + RB - 1) // RB * MR
        # Taps that reach no padding read x as it is; others a zero-padded band of it.
        in_place = _reads_x_in_place_jit(pt, pl, Hp, Wp, H, W)
        chunk_rows, BO, BC, BH = _band_shape_jit(block, taps, KC, OH, OW, sh, KH)
        block_rows = max(1, SUM_DEPTH // OW)     # rows per row-sum tile
        b_size = KP * N * P
        xflat = x.reshape(N * C * H * W)
        bpack = workspace[:b_size]
        task_base = b_size
        task_size = block * KP
        n_tasks = RB * BG
        band_base = task_base + n_tasks * task_size
        band_size = 0 if in_place else BC * BH * Wp
        # 1. grad_output^T in NR-channel panels: panel q holds (pixel t of image n, channel
        # jj) at ((q * N + n) * P + t) * NR + jj, channels past K zero.
        for nq in prange(N * k_panels):
            n = nq // k_panels
            q = nq - n * k_panels
            dst = bpack[(q * N + n) * P * NR:(q * N + n + 1) * P * NR]
            chans = min(NR, K - q * NR)
            for jj in range(chans):
                k = q * NR + jj
                for oy in range(OH):
                    src = grad_output[n, k, oy]
                    for ox in range(OW):
                        dst[(oy * OW + ox) * NR + jj] = src[ox]
            for t in range(P):
                for jj in range(chans, NR):
                    dst[t * NR + jj] = 0
        # 2. tasks: (block of MR-row panels of grad_w^T) x (group of images), each summing
        # into its own partial grad_w^T rows.
        for task in prange(n_tasks):
            g = task // RB
            rb = task - g * RB
            p_lo = rb * m_panels // RB
            p_hi = (rb + 1) * m_panels // RB
            n_lo = g * N // BG
            n_hi = (g + 1) * N // BG
            region = workspace[task_base + task * task_size:
                               task_base + (task + 1) * task_size]
            cbuf = region.reshape((block, KP))
            band = workspace[band_base + task * band_size:band_base + (task + 1) * band_size]
            c_first = (p_lo * MR) // taps
            channels = (min(p_hi * MR, M) - 1) // taps - c_first + 1
            # Offset of each row's tap (c, i, j) in x (or in the band: channels from
            # c_first, BH rows of Wp); rows past M repeat the last row (their results are
            # dropped).
            table = np.empty(block, np.int64)
            for rr in range((p_hi - p_lo) * MR):
                m = min(p_lo * MR + rr, M - 1)
                c = m // taps
                ij = m - c * taps
                i = ij // KW
                j = ij - i * KW
                if in_place:
                    table[rr] = (c * H + i) * W + j
                else:
                    table[rr] = ((c - c_first) * BH + i) * Wp + j
            first = True
            for n in range(n_lo, n_hi):
                for ob0 in range(0, OH, BO):
                    bo = min(BO, OH - ob0)
                    if not in_place:
                        # the band: x rows ob0 * sh - pt + yy, columns xx - pl, zero outside
                        for cc in range(channels):
                            for yy in range((bo - 1) * sh + KH):
                                y = ob0 * sh - pt + yy
                                inside = y >= 0 and y < H
                                _bordered(band[(cc * BH + yy) * Wp:(cc * BH + yy + 1) * Wp],
                                          x[n, c_first + cc, y if inside else 0], pl,
                                          W if inside else 0)
                    for oy0 in range(ob0, ob0 + bo, chunk_rows):
                        rows = min(chunk_rows, ob0 + bo - oy0)
                        if in_place:
                            shift = (n * C * H + oy0 * sh) * W
                        else:
                            shift = (oy0 - ob0) * sh * Wp
                        for q in range(k_panels):
                            start = ((q * N + n) * P + oy0 * OW) * NR
                            bp = bpack[start:start + rows * OW * NR]
                            for p in range(p_lo, p_hi):
                                o = (p - p_lo) * MR
                                if in_place:
                                    _strided_micro(rows, OW, block_rows, sh * W, sw, xflat, table,
                                                   o, shift, bp, cbuf, o, q * NR, not first)
                                else:
                                    _strided_micro(rows, OW, block_rows, sh * Wp, sw, band, table,
                                                   o, shift, bp, cbuf, o, q * NR, not first)
                        first = False
        # 3. out, transposed and summed over the groups: grad_w[k, m] = sum_g part_g[m, k].
        gw = grad_w.reshape((K, M))
        for m in prange(M):
            p = m // MR
            rb = p * RB // m_panels
            while rb + 1 < RB and (rb + 1) * m_panels // RB <= p:
                rb += 1
            while rb > 0 and rb * m_panels // RB > p:
                rb -= 1
            rr = m - (rb * m_panels // RB) * MR
            src = workspace[task_base + rb * task_size + rr * KP:
                            task_base + rb * task_size + (rr + 1) * KP]
            for k in range(K):
                gw[k, m] = src[k]
            for g in range(1, BG):
                start = task_base + (g * RB + rb) * task_size + rr * KP
                src = workspace[start:start + KP]
                for k in range(K):
                    gw[k, m] += src[k]

    return with_globals(kernel_gradient, _strided_micro=strided_micro_kernel(
        MR, NR, level.vector_floats, _row_sums(level)),
        _bordered=bordered_row_copy(level.vector_floats))
