"""Fully connected layers: out[n, o] = sum_i x[n, i] * w[o, i] (+ bias[o]).

Two kernels, after NNPACK's (reference/nnpack.md 5.3-5.4):

- ``fully_connected_output`` / ``gemm``: the packed GEMM engine's register-blocked
  micro-kernel scheme (nnjit.kernels.gemm: MR x NR accumulators as LLVM vector values, the
  level's tile shape and NNPACK's cache budgets), laid out for the FC operand shapes. The
  weights are the big operand (151 MB for AlexNet fc6) and are used once per call, so they
  are never packed: the micro-kernel broadcasts W[o, k] straight from MR weight rows (one
  scalar load each, folded into the FMA), and only x^T, which is small, is packed into
  NR-wide batch panels. Each task owns an OB-row block of output channels (L2-sized) and
  accumulates its tile transposed (channels x batch) in its own scratch across the KC
  slices, then writes out[n, o0:o0+OB] + bias once. Packing W as a general GEMM does would
  read and write all of it once more per call (20% of the batch-64 fc6 time measured).
  Batches smaller than NR/2 go to the GEMV kernel instead (``fully_connected_output`` /
  ``gemv``): a padded batch panel would waste most of the FMAs.
- ``fully_connected_inference`` / ``gemv`` and ``gemv_f16``: memory-bound matrix-vector
  product, NNPACK's sdotxf8: a parallel loop over blocks of ROWS output channels; each block
  keeps ROWS vector accumulators and reuses every vector of x (from L1) for ROWS weight
  rows; then one horizontal sum per row. ``gemv_f16`` reads IEEE half weights (as uint16)
  and widens them in registers: ``fpext <N x half>`` (vcvtph2ps) where the level has F16C
  (and on AArch64, fcvtl), exact integer bit arithmetic elsewhere. Two algorithms rather
  than one with two signatures: explain() then says which weights were read, and a caller
  with float32 weights never compiles the half variant.
"""
from __future__ import annotations

import functools

from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from nnjit.dispatch.registry import helper, kernel, with_globals
from nnjit.kernels.codegen import (accumulators, clear_tile, define, multiply_add_step,
                                   prefetch_tile, store_tile)
from nnjit.kernels.gemm import blocking, tile_shape, transposed_packer
from nnjit.kernels.signatures import reads, writes
from nnjit.kernels.vectors import F32Vector, prefetch, vector_ops

# Output channels per GEMV block (NNPACK's sdotxf8 fuses 8 dot products).
ROWS = 8
# Tasks per call at least, of equal size (prange splits statically: 16 share evenly among
# 1, 2, 4, 8 or 16 threads).
TASKS = 16

_U16_WEIGHTS = types.Array(types.uint16, 2, "C", readonly=True)
_GEMV_F32 = types.void(reads(2), reads(2), reads(1), types.boolean, writes(2))
_GEMV_F16 = types.void(reads(2), _U16_WEIGHTS, reads(1), types.boolean, writes(2))
_GEMM = types.void(reads(2), reads(2), reads(1), types.boolean, writes(2), writes(1))


# ------------------------------------------------------------------------- intrinsics
def _native_f16(level) -> bool:
    """Whether the level converts half to float in one instruction (F16C, AArch64)."""
    return level.arch == "aarch64" or "f16c" in level.requires


def _half_to_float(builder, bits16, native: bool):
    """LLVM value(s) of i16 (scalar or vector) IEEE half bits -> float (scalar or vector)."""
    is_vector = isinstance(bits16.type, ir.VectorType)
    count = bits16.type.count if is_vector else None

    def ty(element):
        return ir.VectorType(element, count) if is_vector else element

    def const(element, value):
        return ir.Constant(ty(element), [value] * count) if is_vector \
            else ir.Constant(element, value)

    f32, i32 = ir.FloatType(), ir.IntType(32)
    if native:
        return builder.fpext(builder.bitcast(bits16, ty(ir.HalfType())), ty(f32))
    # IEEE half -> float with integer operations (no F16C): the exponent and mantissa
    # shifted into float position are the value times 2**-112 for normal and subnormal
    # halves alike; one multiply by 2**112 rescales it exactly. Exponent 31 (inf, NaN)
    # becomes exponent 255 with the same mantissa. The sign is put back last.
    u = builder.zext(bits16, ty(i32))
    magnitude = builder.and_(u, const(i32, 0x7FFF))
    shifted = builder.shl(magnitude, const(i32, 13))
    finite = builder.fmul(builder.bitcast(shifted, ty(f32)), const(f32, 2.0 ** 112))
    special = builder.or_(shifted, const(i32, 0x7F800000))
    is_special = builder.icmp_signed(">=", magnitude, const(i32, 0x7C00))
    value = builder.select(is_special, special, builder.bitcast(finite, ty(i32)))
    sign = builder.shl(builder.and_(u, const(i32, 0x8000)), const(i32, 16))
    return builder.bitcast(builder.or_(value, sign), ty(f32))


def _is_row(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == 1 and t.layout == "C"


def _pointer(context, builder, aryty, ary, index):
    array = context.make_array(aryty)(context, builder, value=ary)
    return cgutils.get_item_pointer(context, builder, aryty, array, [index])


@functools.lru_cache(maxsize=None)
def fc_vector_ops(width: int, native_f16: bool):
    """(vload_h, load_h) for <width x float>:
    vload_h(row, i): width IEEE halves row[i:i+width] (a 1-D uint16 array), as floats;
    load_h(row, i): one half row[i] as a float32."""
    vty = F32Vector(width)
    f32, i16, i32 = ir.FloatType(), ir.IntType(16), ir.IntType(32)

    @intrinsic
    def vload_h(typingctx, arr, index):
        if not _is_row(arr, types.uint16) or not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ptr = _pointer(context, builder, signature.args[0], args[0], args[1])
            vptr = builder.bitcast(ptr, ir.VectorType(i16, width).as_pointer())
            return _half_to_float(builder, builder.load(vptr, align=2), native_f16)
        return vty(arr, index), codegen

    @intrinsic
    def load_h(typingctx, arr, index):
        if not _is_row(arr, types.uint16) or not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ptr = _pointer(context, builder, signature.args[0], args[0], args[1])
            return _half_to_float(builder, builder.load(ptr), native_f16)
        return types.float32(arr, index), codegen

    return vload_h, load_h


# ----------------------------------------------------------------------------- GEMV
@functools.lru_cache(maxsize=None)
def dot_rows(rows: int, width: int, half: bool, native_f16: bool):
    """dots(x, w, r0, out): out[r0 + i] = x . w[r0 + i] for i < rows, with one
    <width x float> accumulator per row (named values: they stay in registers) and each
    vector of x loaded once for all rows."""
    load = "vload_h" if half else "vload"
    scalar = "load_h({w}, k)" if half else "{w}[k]"
    lines = ["def dots(x, w, r0, out):",
             "    K = x.shape[0]",
             f"    kv = K // {width} * {width}"]
    lines += [f"    w{i} = w[r0 + {i}]" for i in range(rows)]
    lines += [f"    a{i} = vzero()" for i in range(rows)]
    lines.append(f"    for k in range(0, kv, {width}):")
    lines.append("        xv = vload(x, k)")
    lines += [f"        a{i} = vfma({load}(w{i}, k), xv, a{i})" for i in range(rows)]
    lines += [f"    s{i} = vsum(a{i})" for i in range(rows)]
    # The tail (fewer than width products per row; LLVM unrolls it), on slices: indices
    # counted from 0 are provably >= 0, so they carry no negative-index wraparound.
    lines.append("    xt = x[kv:]")
    lines += [f"    t{i} = w{i}[kv:]" for i in range(rows)]
    lines.append("    for k in range(K - kv):")
    lines.append("        xk = xt[k]")
    lines += [f"        s{i} += {scalar.format(w=f't{i}')} * xk" for i in range(rows)]
    lines += [f"    out[r0 + {i}] = s{i}" for i in range(rows)]
    vload_h, load_h = fc_vector_ops(width, native_f16)
    dots = define(lines, __file__,
                  dict(vector_ops(width), vload_h=vload_h, load_h=load_h),
                  f"dots_{rows}x{width}{'_f16' if half else ''}")
    return helper(dots, fastmath={"contract"})


def _gemv(level, half: bool):
    width = level.vector_floats
    native = _native_f16(level)

    def gemv(x, w, bias, has_bias, out):
        N = x.shape[0]
        M = w.shape[0]
        blocks = (M + ROWS - 1) // ROWS
        for b in prange(blocks):
            r0 = b * ROWS
            for n in range(N):
                xn = x[n]
                on = out[n]
                if r0 + ROWS <= M:
                    _dots(xn, w, r0, on)
                else:
                    for r in range(r0, M):
                        _dot1(xn, w, r, on)
        # The bias in one vectorised pass over the outputs (a few KB, after the weights'
        # hundreds of MB), not per row inside the blocks.
        if has_bias:
            for n in range(N):
                on = out[n]
                for o in range(M):
                    on[o] += bias[o]

    return with_globals(gemv, _dots=dot_rows(ROWS, width, half, native),
                         _dot1=dot_rows(1, width, half, native))


@kernel("fully_connected_inference", "gemv", signatures=_GEMV_F32, multiply_adds=True)
def fc_inference_gemv(level):
    """out[n] = w @ x[n] (+ bias), float32 weights: ROWS fused dot products per block."""
    return _gemv(level, half=False)


@kernel("fully_connected_inference", "gemv_f16", signatures=_GEMV_F16, multiply_adds=True)
def fc_inference_gemv_f16(level):
    """out[n] = w @ x[n] (+ bias), IEEE half weights widened to float32 in registers."""
    return _gemv(level, half=True)


@kernel("fully_connected_output", "gemv", signatures=_GEMV_F32, multiply_adds=True)
def fc_output_gemv(level):
    """Small batches: each block of ROWS weight rows (from L2) meets every batch row."""
    return _gemv(level, half=False)


# ----------------------------------------------------------------------------- GEMM
def output_tiles(level) -> tuple[int, int, int]:
    """(MR output channels, NR batch rows, KC) of the FC GEMM at a level: the packed GEMM's
    tile shape and L1 budget (the batch runs along the vector lanes)."""
    mr, nr = tile_shape(level)
    kc = blocking(mr, nr)[0]
    return mr, nr, kc


def _task_grid(m, n_panels, mr, nr, kc, mc):
    """(channels per block OB, channel blocks, batch groups, batch panels per L2 group) of
    the FC GEMM: about TASKS tasks, a grid of (OB-channel block) x (run of batch panels).
    Each channel block streams all of x^T's panels and each batch group all of w, so the
    split is the one (of the power-of-two batch splits) that moves the fewest floats:
    blocks * N + groups * M per input channel (fc6 at batch 64: channel blocks only; a
    batch of 3136 against 256 channels: batch groups only). OB is whole MR groups, at most
    the L2 budget's rows; each task's (OB x group) tile stays in L2 beside w's KC slice."""
    best_moved = -1
    ob = blocks = groups = 1
    g = 1
    while g <= min(TASKS, max(n_panels, 1)):
        per_block = -(-m // -(-TASKS // g))
        b_ob = max(mr, min(mc, -(-per_block // mr) * mr))
        b_blocks = -(-m // b_ob)
        moved = b_blocks * n_panels * nr + g * m
        if best_moved < 0 or moved < best_moved:
            best_moved, ob, blocks, groups = moved, b_ob, b_blocks, g
        g *= 2
    return ob, blocks, groups, max(1, (mc - ob) * kc // (ob * nr))


_task_grid_jit = njit(inline="always")(_task_grid)


def gemm_workspace_floats(level, batch: int, in_channels: int, out_channels: int) -> int:
    """Floats of workspace fully_connected_output/gemm uses: the packed x^T panels and each
    task's (channels x batch group) accumulator tile."""
    mr, nr, kc = output_tiles(level)
    mc = blocking(mr, nr)[1]
    n_panels = -(-batch // nr)
    ob, blocks, groups, gq = _task_grid(out_channels, n_panels, mr, nr, kc, mc)
    return n_panels * nr * in_channels + blocks * groups * ob * gq * nr


@functools.lru_cache(maxsize=None)
def fc_micro_kernel(rows: int, nr: int, width: int, clamped: bool = False):
    """micro(kc, w, r0, k0, bp, c, crow0, col0, update):
        c[crow0 + i, col0 + j] (=, +=) sum_k w[r0 + i, k0 + k] * bp[k * nr + j]
    for i < rows, j < nr: rows x nr/width accumulators (named vector values, the k loop's
    phis), per k nr/width vector loads of the packed x^T panel and one broadcast of a
    weight per row, read in place from the weight matrix. ``clamped``: one more argument
    after r0, valid, the rows of w that exist from r0 (1..rows); rows past them repeat
    the last one, and their rows of c are garbage (a scratch tile's): one kernel for
    every edge, instead of one per row count."""
    acc = accumulators(rows, nr, width)
    head = "r0, valid, k0" if clamped else "r0, k0"
    lines = [f"def micro(kc, w, {head}, bp, c, crow0, col0, update):"]
    # Rows sliced to the KC slice: indices from the k loop are then provably >= 0 and
    # carry no negative-index wraparound.
    row = "r0 + min({i}, valid - 1)" if clamped else "r0 + {i}"
    lines += [f"    w{i} = w[{row.format(i=i)}, k0:k0 + kc]" for i in range(rows)]
    lines += prefetch_tile(rows, nr, row="c[crow0 + {i}]")
    lines += clear_tile(acc)
    lines.append("    for k in range(kc):")
    lines += multiply_add_step(acc, "w{i}[k]", f"k * {nr}", width, " " * 8)
    lines += store_tile(acc, width, row="c[crow0 + {i}]")
    micro = define(lines, __file__, dict(vector_ops(width), prefetch=prefetch),
                   f"fc_micro_{rows}x{nr}{'_clamped' if clamped else ''}")
    return helper(micro, fastmath={"contract"})


@functools.lru_cache(maxsize=None)
def fc_micro_any(mr: int, nr: int, width: int):
    """micro(rows, ...): the micro-kernel for 1 <= rows <= mr output channels."""
    lines = ["def micro_any(rows, kc, w, r0, k0, bp, c, crow0, col0, update):"]
    for rows in range(mr, 0, -1):
        keyword = "if" if rows == mr else "elif"
        lines.append(f"    {keyword} rows == {rows}:")
        lines.append(f"        m{rows}(kc, w, r0, k0, bp, c, crow0, col0, update)")
    micro_any = define(lines, __file__,
                       {f"m{r}": fc_micro_kernel(r, nr, width) for r in range(1, mr + 1)},
                       f"fc_micro_upto_{mr}x{nr}")
    return helper(micro_any)


def _gemm_workspace(level, x, w, bias, has_bias, out) -> int:
    return gemm_workspace_floats(level, x.shape[0], x.shape[1], w.shape[0])


@kernel("fully_connected_output", "gemm", signatures=_GEMM, multiply_adds=True,
        workspace=_gemm_workspace)
def fc_output_gemm(level):
    """out[N, OUT] = x[N, IN] @ w[OUT, IN]^T (+ bias): packed x^T, weights read in place."""
    MR, NR, KC = output_tiles(level)
    MC = blocking(MR, NR)[1]

    def fc(x, w, bias, has_bias, out, workspace):
        N = x.shape[0]
        K = x.shape[1]
        M = w.shape[0]
        n_panels = (N + NR - 1) // NR
        padded = n_panels * NR
        OB, blocks, groups, GQ = _task_grid_jit(M, n_panels, MR, NR, KC, MC)
        tasks = blocks * groups
        bpack = workspace[:padded * K]
        tile = OB * GQ * NR
        # 1. x^T in NR-wide batch panels, zero-padded: panel q holds x[q*NR + j, k] at
        # q*K*NR + k*NR + j, so a KC slice of a panel is contiguous.
        for q in prange(n_panels):
            _pack_xt(x[q * NR:min(N, (q + 1) * NR)], bpack[q * K * NR:(q + 1) * K * NR])
        # 2. per task, (block of output channels) x (run of batch panels), in groups of
        # panels: accumulate the group's (channels x batch) tile over the KC slices (each
        # KC-deep x^T micro-panel stays in L1 while the block's weight rows stream past
        # it), then write it transposed, with the bias, while it is in L2.
        for t in prange(tasks):
            cb = t % blocks
            bg = t // blocks
            o0 = cb * OB
            ob = min(OB, M - o0)
            q_lo = bg * n_panels // groups
            q_hi = (bg + 1) * n_panels // groups
            c = workspace[padded * K + t * tile:padded * K + (t + 1) * tile].reshape(
                (OB, GQ * NR))
            for q0 in range(q_lo, q_hi, GQ):
                q1 = min(q_hi, q0 + GQ)
                for k0 in range(0, K, KC):
                    kc = min(KC, K - k0)
                    update = k0 > 0
                    for q in range(q0, q1):
                        bp = bpack[q * K * NR + k0 * NR:q * K * NR + (k0 + kc) * NR]
                        col = (q - q0) * NR
                        for g in range(0, ob, MR):
                            rows = min(MR, ob - g)
                            if rows == MR:
                                _micro(kc, w, o0 + g, k0, bp, c, g, col, update)
                            else:
                                _micro_any(rows, kc, w, o0 + g, k0, bp, c, g, col, update)
                for n in range(q0 * NR, min(N, q1 * NR)):
                    dst = out[n, o0:o0 + ob]
                    j = n - q0 * NR
                    if has_bias:
                        b = bias[o0:o0 + ob]
                        for o in range(ob):
                            dst[o] = c[o, j] + b[o]
                    else:
                        for o in range(ob):
                            dst[o] = c[o, j]

    width = level.vector_floats
    return with_globals(fc, _pack_xt=transposed_packer(NR),
                        _micro=fc_micro_kernel(MR, NR, width),
                        _micro_any=fc_micro_any(MR, NR, width))
