"""Packed, register-blocked float32 GEMM: C (=, +=) A @ B, or A @ B^T with B stored [N, K].

The engine under the fully-connected and implicit-GEMM convolution layers, built the way
BLIS/NNPACK build theirs:

- loop jc over NC-column blocks of C (B panel sized for L3), loop pc over KC-deep slices of
  K (micro-panels sized for L1), then for each (jc, pc):
  one parallel launch packs A[:, pc:pc+KC] into MR-row micro-panels and B[pc:pc+KC, jc:jc+NC]
  (or B^T) into NR-column micro-panels, both zero-padded to whole tiles, so the micro-kernel
  never reads or writes out of bounds; a second launch runs tasks (an MC-row block of A that
  stays in L2 x a chunk of B micro-panels) in which each B micro-panel stays in L1 while
  every A micro-panel of the block streams past it.
- the micro-kernel computes one MR x NR tile in MR * NR/vector_floats accumulators that are
  LLVM vector values (<vector_floats x float>, via the intrinsics below: Numba has no vector
  type and leaves LLVM's SLP vectoriser off), named in source generated from the level's
  compile-time MR and NR. They are the k loop's phis, so the loop holds no load or store of
  C: per k, NR/vector_floats vector loads of B, MR broadcasts of A and one llvm.fmuladd per
  accumulator (vfmadd on FMA levels, mul + add elsewhere). The C tile is prefetched before
  the k loop (its misses were 10% at 1024^3). Edge tiles go through a scratch tile.
- the first K slice overwrites C (unless accumulating), later ones add: NNPACK's ``update``.

Tile shape and blocking come from the level (``vector_floats``) and the host caches
(NNPACK's budget rules, reference/nnpack.md 5.3), never from a per-ISA copy of the code.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np
from numba import prange
from numba.core import types

from nnjit.dispatch.registry import helper, kernel, with_globals
from nnjit.kernels.codegen import (accumulators, clear_tile, define, multiply_add_step,
                                   prefetch_tile, store_tile)
from nnjit.kernels.vectors import prefetch, vector_ops

# Tile shape per (float32 lanes, FMA): (MR rows, NR columns as a count of vectors). Measured
# on Zen 4 at 1024^3 / 2048^3, one thread (GFLOP/s at 1024):
#   avx512: 6x32 100, 8x32 97, 12x32 91, 14x32 82-90 (zmm; 12 accumulators suffice)
#   avx2:   4x24 96 (NNPACK's AVX2 shape), 6x16 89, 4x16 89
#   avx:    6x16 73, 4x16 71, 4x24 46 and 3x32 46 (no FMA: a temporary per product spills)
#   sse4:   4x8 35, 6x8 31-35, 4x12 27, 3x16 28
TILE_VECTORS = {
    (4, False): (4, 2),     # 4 x 8 on xmm: 8 accumulators, mul + add
    (4, True): (4, 2),
    (8, False): (6, 2),     # 6 x 16 on ymm, mul + add
    (8, True): (4, 3),      # 4 x 24 on ymm: 12 accumulators + 3 B vectors + 1 broadcast
    (16, True): (6, 2),     # 6 x 32 on zmm: 12 accumulators
}
# AVX-512 on Intel's cores (two 512-bit FMA pipes on the server parts): 6 x 32 is load-bound
# there, 8 loads per 12 FMAs, 0.59-0.63x numpy at 1 thread on Ice Lake server; 6 x 64 (24
# accumulators, 10 loads per 24 FMAs) 0.86-1.11x, 12 x 32 0.74-0.81x, 14 x 32 0.79-0.88x,
# 5 x 64 0.77-1.10x, 7 x 64 0.82-0.86x (runs a minute apart: the machine is noisy); its
# kernel gradients 1.41-1.51x torch against 1.10-1.38x (gemm_tile). Zen 4 runs 512-bit
# FMAs in two halves, one a cycle, and keeps the 6 x 32 measured there.
INTEL_AVX512_TILE = (6, 4)


def intel_host() -> bool:
    """Whether this host's CPU is Intel's (tile and path choices measured on Ice Lake server,
    whose cores run two 512-bit FMAs a cycle, against Zen 4's one)."""
    from nnjit.dispatch.cpu import cpu_info

    return cpu_info().vendor == "GenuineIntel"


@functools.lru_cache(maxsize=None)
def tile_shape(level) -> tuple[int, int]:
    """(MR, NR) for a level; NNJIT_GEMM_TILE=MRxNR overrides it (a tuning knob, read once
    per process: layers ask for the shape on every call)."""
    override = os.environ.get("NNJIT_GEMM_TILE", "").strip()
    if override:
        mr, nr = (int(v) for v in override.lower().split("x"))
        return mr, nr
    mr, nvec = TILE_VECTORS.get((level.vector_floats, level.fma), (4, 2))
    return mr, nvec * level.vector_floats


@functools.lru_cache(maxsize=None)
def gemm_tile(level) -> tuple[int, int]:
    """(MR, NR) of the packed GEMM and the kernel gradient: tile_shape, but
    INTEL_AVX512_TILE at avx512 on Intel hosts, where those two were measured with it (the
    forward paths' panel rules were tuned for tile_shape's and stay on it)."""
    if (not os.environ.get("NNJIT_GEMM_TILE", "").strip()
            and (level.vector_floats, level.fma) == (16, True) and intel_host()):
        mr, nvec = INTEL_AVX512_TILE
        return mr, nvec * level.vector_floats
    return tile_shape(level)


def _round_down(x: int, m: int) -> int:
    return max(m, x // m * m)


@functools.lru_cache(maxsize=None)
def blocking(mr: int, nr: int) -> tuple[int, int, int]:
    """(KC, MC, NC) from the host caches, NNPACK's budget rules (nnpack.md 5.3):
    L1 budget = L1 / threads sharing it; L2 budget = (L2 - L1) / threads sharing it;
    L3 budget = L3 - L2; KC = E1 / (mr + nr) rounded down to 2, MC = round_down(E2 / KC, mr),
    NC = round_down(E3 / KC, nr), E = budget / 4 bytes. NNJIT_GEMM_KC overrides KC (read
    once per process)."""
    from nnjit.dispatch.cpu import cpu_info

    info = cpu_info()
    l1 = info.l1d_bytes or 32 * 1024
    l2 = info.l2_bytes or 256 * 1024
    l3 = info.l3_bytes or 2 * 1024 * 1024
    e1 = l1 // max(info.l1d_shared_by, 1) // 4
    e2 = (l2 - l1) // max(info.l2_shared_by, 1) // 4
    e3 = (l3 - l2) // 4
    override = os.environ.get("NNJIT_GEMM_KC", "").strip()
    kc = int(override) if override else _round_down(e1 // (mr + nr), 2)
    mc = _round_down(e2 // kc, mr)
    nc = _round_down(e3 // kc, nr)
    return kc, mc, nc


@functools.lru_cache(maxsize=None)
def micro_kernel(mr: int, nr: int, width: int):
    """The MR x NR micro-kernel for <width x float> vectors (a plain @njit helper; each
    level compiles its own twin).

    micro(kc, ap, bp, c, row0, col0, update):
        c[row0 + i, col0 + j] (=, +=) sum_k ap[k*MR + i] * bp[k*NR + j]
    for a packed k x MR panel ap, a packed k x NR panel bp and a C-contiguous c.
    The MR x NR/width accumulators are named vector values, the k loop's phis: they live
    in registers, and the loop body is NR/width vector loads of B, MR broadcasts of A and
    MR * NR/width fused multiply-adds."""
    acc = accumulators(mr, nr, width)
    lines = ["def micro(kc, ap, bp, c, row0, col0, update):"]
    # The C tile is read (update) or written only after the k loop: prefetching its lines
    # now hides the cache misses behind the k loop.
    lines += prefetch_tile(mr, nr)
    lines += clear_tile(acc)
    lines.append("    for k in range(kc):")
    lines += multiply_add_step(acc, f"ap[k * {mr} + {{i}}]", f"k * {nr}", width, " " * 8)
    lines += store_tile(acc, width)
    micro = define(lines, __file__, dict(vector_ops(width), prefetch=prefetch),
                   f"micro_{mr}x{nr}")
    # Only contraction: with reassociation the loop vectoriser may vectorise the k loop
    # itself (every accumulator a reduction over k, the panels read by gathers).
    return helper(micro, fastmath={"contract"})


# Compute tasks per (jc, pc) step, at least, all of about the same size: prange splits its
# range statically, so 16 equal tasks share evenly among 1, 2, 4, 8 or 16 threads.
TASKS = 16

_F32 = types.float32
SIGNATURES = (
    # gemm(a [M,K], b [K,N] or [N,K] when trans_b, c [M,N], accumulate, trans_b, workspace):
    # a and b read-only (so read-only arrays are accepted), all C-contiguous float32.
    types.void(types.Array(_F32, 2, "C", readonly=True), types.Array(_F32, 2, "C", readonly=True),
               types.Array(_F32, 2, "C"), types.boolean, types.boolean,
               types.Array(_F32, 1, "C")),
)


@functools.lru_cache(maxsize=None)
def transposed_packer(width: int):
    """pack(src, dst): dst[k * width + j] = src[j, k] for a (rows x depth) view src, zero for
    rows <= j < width: a micro-panel whose rows are src's columns (a whole panel's loop
    has a constant trip count, which LLVM unrolls)."""

    def pack(src, dst):
        rows = src.shape[0]
        for k in range(src.shape[1]):
            d = dst[k * width:(k + 1) * width]
            if rows == width:
                for j in range(width):
                    d[j] = src[j, k]
            else:
                for j in range(rows):
                    d[j] = src[j, k]
                for j in range(rows, width):
                    d[j] = 0

    pack.__qualname__ = pack.__name__ = f"pack_transposed_{width}"
    return helper(with_globals(pack, width=width))


def workspace_floats(level, m: int, n: int, k: int) -> int:
    """Floats of workspace the packed GEMM needs for an [m, k] x [k, n] product at a level
    (a smaller workspace is allowed: the kernel then allocates its own, which costs page
    faults on every call for large sizes)."""
    mr, nr = gemm_tile(level)
    kc, _, nc = blocking(mr, nr)
    kc = min(kc, k)
    return (-(-m // mr) * mr + -(-min(nc, n) // nr) * nr) * kc


@kernel("gemm", "packed", signatures=SIGNATURES, multiply_adds=True)
def gemm_packed(level):
    """C[M,N] (=, or += when accumulate) A[M,K] @ B, B given [K,N] or (trans_b) [N,K]."""
    MR, NR = gemm_tile(level)
    KC, MC, NC = blocking(MR, NR)

    def gemm(a, b, c, accumulate, trans_b, workspace):
        M = a.shape[0]
        K = a.shape[1]
        N = c.shape[1]
        if M == 0 or N == 0:
            return
        if K == 0:
            if not accumulate:
                c[:, :] = 0
            return
        kc_max = min(KC, K)
        m_panels = (M + MR - 1) // MR
        n_panels_max = (min(NC, N) + NR - 1) // NR
        a_size = m_panels * MR * kc_max
        b_size = n_panels_max * NR * kc_max
        if workspace.shape[0] < a_size + b_size:
            workspace = np.empty(a_size + b_size, np.float32)
        apack = workspace[:a_size]
        bpack = workspace[a_size:a_size + b_size]
        # MC-row blocks of A of equal size (whole micro-panels).
        m_blocks = (m_panels * MR + MC - 1) // MC
        block_panels = (m_panels + m_blocks - 1) // m_blocks
        m_blocks = (m_panels + block_panels - 1) // block_panels
        for jc in range(0, N, NC):
            nc = min(NC, N - jc)
            n_panels = (nc + NR - 1) // NR
            # Chunks of B micro-panels, so that there are about TASKS tasks. (The thread
            # count is not asked for: numba.get_num_threads() is an external function
            # pointer, a "dynamic global" that would make the kernel uncacheable.)
            want_chunks = min(n_panels, max(1, (TASKS + m_blocks - 1) // m_blocks))
            chunk = (n_panels + want_chunks - 1) // want_chunks
            n_chunks = (n_panels + chunk - 1) // chunk
            for pc in range(0, K, KC):
                kc = min(KC, K - pc)
                update = accumulate or pc > 0
                # 1. pack A's MR-row and B's NR-column micro-panels, zero-padded to whole
                # tiles: element (k, i) of a panel at k * MR + i (k * NR + j for B).
                for p in prange(m_panels):
                    dst = apack[p * MR * kc:(p + 1) * MR * kc]
                    rows = min(MR, M - p * MR)
                    _pack_a(a[p * MR:p * MR + rows, pc:pc + kc], dst)
                for q in prange(n_panels):
                    dst = bpack[q * NR * kc:(q + 1) * NR * kc]
                    col0 = jc + q * NR
                    cols = min(NR, N - col0)
                    if trans_b:
                        _pack_b(b[col0:col0 + cols, pc:pc + kc], dst)
                    else:
                        for k in range(kc):
                            src = b[pc + k, col0:col0 + cols]
                            d = dst[k * NR:(k + 1) * NR]
                            for j in range(cols):
                                d[j] = src[j]
                            for j in range(cols, NR):
                                d[j] = 0
                # 2. the tiles. A task is an MC-row block of A (kept in L2) times a chunk
                # of B micro-panels; each B micro-panel meets every A micro-panel of the
                # block in turn.
                for task in prange(m_blocks * n_chunks):
                    bi = task // n_chunks
                    ci = task - bi * n_chunks
                    p_lo = bi * block_panels
                    p_hi = min(m_panels, p_lo + block_panels)
                    q_lo = ci * chunk
                    q_hi = min(n_panels, q_lo + chunk)
                    scratch = np.empty((MR, NR), np.float32)
                    for q in range(q_lo, q_hi):
                        bp = bpack[q * NR * kc:(q + 1) * NR * kc]
                        col0 = jc + q * NR
                        cols = min(NR, N - col0)
                        for p in range(p_lo, p_hi):
                            ap = apack[p * MR * kc:(p + 1) * MR * kc]
                            row0 = p * MR
                            rows = min(MR, M - row0)
                            if rows == MR and cols == NR:
                                _micro_kernel(kc, ap, bp, c, row0, col0, update)
                            else:
                                # Edge tile: compute it whole into scratch, store its part.
                                _micro_kernel(kc, ap, bp, scratch, 0, 0, False)
                                tile = c[row0:row0 + rows, col0:col0 + cols]
                                for i in range(rows):
                                    if update:
                                        for j in range(cols):
                                            tile[i, j] += scratch[i, j]
                                    else:
                                        for j in range(cols):
                                            tile[i, j] = scratch[i, j]

    return with_globals(gemm, _micro_kernel=micro_kernel(MR, NR, level.vector_floats),
                        _pack_a=transposed_packer(MR), _pack_b=transposed_packer(NR))



def gemm(a, b, out=None, *, level=None, accumulate=False, trans_b=False):
    """out = a @ b (or a @ b.T when trans_b, b stored [N, K]); accumulate: out += ...

    a, b: 2-D float32 (made C-contiguous float32 if they are not). out: a C-contiguous
    float32 [M, N] array, allocated when None (accumulate then needs it given).
    level: an IsaLevel or its name (default: the level in effect)."""
    from nnjit.dispatch import registry
    from nnjit.dispatch.isa import IsaLevel, level_named
    from nnjit.dispatch.policy import apply_num_threads, get_isa
    from nnjit.errors import InvalidArgument

    if level is None:
        level = get_isa()
    elif not isinstance(level, IsaLevel):
        level = level_named(level)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2:
        raise InvalidArgument(f"gemm: a and b must be 2-D, got {a.shape} and {b.shape}")
    m, k = a.shape
    n, kb = (b.shape if trans_b else b.shape[::-1])
    if kb != k:
        raise InvalidArgument(f"gemm: inner dimensions differ: a {a.shape}, b {b.shape}"
                              f"{' (transposed)' if trans_b else ''}")
    if out is None:
        if accumulate:
            raise InvalidArgument("gemm: accumulate=True needs out")
        out = np.empty((m, n), np.float32)
    elif (out.shape != (m, n) or out.dtype != np.float32
          or not out.flags.c_contiguous):
        raise InvalidArgument(f"gemm: out must be a C-contiguous float32 array of shape "
                              f"{(m, n)}, got {out.dtype} {out.shape}")
    apply_num_threads()
    workspace = _workspace(workspace_floats(level, m, n, k))
    registry.variant("gemm", "packed", level)(a, b, out, bool(accumulate), bool(trans_b),
                                              workspace)
    return out


_workspaces = threading.local()


def _workspace(floats: int) -> np.ndarray:
    """This thread's packing workspace, grown on demand and kept (a fresh multi-megabyte
    allocation per call page-faults: 6-8% of a 1024^3 product)."""
    buffer = getattr(_workspaces, "buffer", None)
    if buffer is None or buffer.shape[0] < floats:
        buffer = _workspaces.buffer = np.empty(max(floats, 1), np.float32)
    return buffer
