"""Explicit LLVM vector values for kernels: <width x float> as a Numba type, and intrinsics
on it (zero, splat, load, store, fused multiply-add, add, maximum, lane sum) plus a prefetch.

Numba has no vector type and ships with LLVM's SLP vectoriser off, so values that must stay
in vector registers (a GEMM micro-kernel's accumulators) or loops whose trip count is not a
multiple of the vector width are written with these. The width comes from the ISA level.
"""
import functools

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic, models, register_model


class F32Vector(types.Type):
    """An LLVM <width x float> value: what Numba has no type for, and SLP (off in Numba)
    would otherwise have to discover."""

    def __init__(self, width: int):
        self.width = width
        super().__init__(name=f"f32x{width}")


@register_model(F32Vector)
class _F32VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.width))


def _element_pointer(context, builder, aryty, ary, index):
    array = context.make_array(aryty)(context, builder, value=ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, array, [index])
    return ptr


@functools.lru_cache(maxsize=None)
def vector_ops(width: int) -> dict:
    """Intrinsics on <width x float>, by name: vzero, vsplat, vload, vstore, vfma, vadd,
    vmax, the lane sums vsum and vsum4, vload_even, the masked loads vload_lanes / vload_even_lanes, the masked
    store vstore_lanes and the block transpose vtranspose_copy. The loads and
    stores take a 1-D C-contiguous float32 array and an element index (unaligned)."""
    vty = F32Vector(width)
    llvm_vty = ir.VectorType(ir.FloatType(), width)

    def is_f32_row(t):
        return isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 1 \
            and t.layout == "C"

    @intrinsic
    def vzero(typingctx):
        def codegen(context, builder, signature, args):
            return ir.Constant(llvm_vty, [ir.Constant(ir.FloatType(), 0.0)] * width)
        return vty(), codegen

    @intrinsic
    def vsplat(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            one = builder.insert_element(ir.Constant(llvm_vty, ir.Undefined), args[0],
                                         ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(llvm_vty, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                      [0] * width))
        return vty(types.float32), codegen

    @intrinsic
    def vload(typingctx, arr, index):
        if not is_f32_row(arr) or not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            vptr = builder.bitcast(ptr, llvm_vty.as_pointer())
            return builder.load(vptr, align=4)
        return vty(arr, index), codegen

    @intrinsic
    def vstore(typingctx, arr, index, value):
        if not is_f32_row(arr) or not isinstance(index, types.Integer) or value != vty:
            return None

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            vptr = builder.bitcast(ptr, llvm_vty.as_pointer())
            builder.store(args[2], vptr, align=4)
            return context.get_dummy_value()
        return types.none(arr, index, value), codegen

    @intrinsic
    def vfma(typingctx, a, b, c):
        """a * b + c; one vfmadd where the level has FMA (llvm.fmuladd), else mul + add."""
        if not (a == b == c == vty):
            return None

        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(llvm_vty, [llvm_vty] * 3),
                f"llvm.fmuladd.v{width}f32")
            return builder.call(fn, args)
        return vty(vty, vty, vty), codegen

    @intrinsic
    def vadd(typingctx, a, b):
        if not (a == b == vty):
            return None

        def codegen(context, builder, signature, args):
            return builder.fadd(args[0], args[1])
        return vty(vty, vty), codegen

    @intrinsic
    def vmax(typingctx, a, b):
        """Lane-wise IEEE maximum, NaN if either lane is NaN (llvm.maximum)."""
        if not (a == b == vty):
            return None

        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(llvm_vty, [llvm_vty] * 2),
                f"llvm.maximum.v{width}f32")
            return builder.call(fn, args)
        return vty(vty, vty), codegen

    @intrinsic
    def vload_even(typingctx, arr, index):
        """arr[index], arr[index + 2], ..., arr[index + 2 * (width - 1)]: a stride-2 load,
        as two vector loads and one shuffle (reads arr[index + 2 * width - 1] too)."""
        if not is_f32_row(arr) or not isinstance(index, types.Integer):
            return None
        wide = ir.VectorType(ir.FloatType(), 2 * width)

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            both = builder.load(builder.bitcast(ptr, wide.as_pointer()), align=4)
            evens = ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(0, 2 * width, 2)))
            return builder.shuffle_vector(both, ir.Constant(wide, ir.Undefined), evens)
        return vty(arr, index), codegen

    i32 = ir.IntType(32)
    mask_ty = ir.VectorType(ir.IntType(1), width)

    def lane_mask(builder, lo, hi, lanes):
        """<width x i1>: lanes[i] in [lo, hi) for the constant i32 lane numbers ``lanes``."""
        def splat(value):
            value = builder.trunc(value, i32) if value.type.width > 32 else value
            one = builder.insert_element(ir.Constant(ir.VectorType(i32, width), ir.Undefined),
                                         value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(ir.VectorType(i32, width),
                                                           ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, width), [0] * width))
        lane = ir.Constant(ir.VectorType(i32, width), lanes)
        return builder.and_(builder.icmp_signed(">=", lane, splat(lo)),
                            builder.icmp_signed("<", lane, splat(hi)))

    def masked_load(builder, base, offset, mask):
        """llvm.masked.load of <width x float> at base + offset floats: masked-off lanes are
        zeros and never read (so the address may lie outside the array for them)."""
        ptr = builder.gep(base, [offset])       # not inbounds: may point outside
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(llvm_vty, [llvm_vty.as_pointer(), i32, mask_ty,
                                                       llvm_vty]),
            f"llvm.masked.load.v{width}f32.p0")
        return builder.call(fn, [builder.bitcast(ptr, llvm_vty.as_pointer()),
                                 ir.Constant(i32, 4), mask,
                                 ir.Constant(llvm_vty, [ir.Constant(ir.FloatType(), 0.0)]
                                             * width)])

    def is_index(*values):
        return all(isinstance(v, types.Integer) for v in values)

    @intrinsic
    def vload_lanes(typingctx, arr, index, lo, hi):
        """Lane i (0 <= i < width): arr[index + i] if lo <= i < hi, else 0. Lanes outside
        [lo, hi) are never read, so a run's edges need no scalar loop (lo, hi are clamped
        by the mask: any values work)."""
        if not is_f32_row(arr) or not is_index(index, lo, hi):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
            index, lo, hi = (context.cast(builder, v, t, types.int64)
                             for v, t in zip(args[1:], signature.args[1:]))
            mask = lane_mask(builder, lo, hi, list(range(width)))
            return masked_load(builder, data, index, mask)
        return vty(arr, index, lo, hi), codegen

    @intrinsic
    def vload_even_lanes(typingctx, arr, index, lo, hi):
        """Lane i: arr[index + 2 * i] if lo <= i < hi, else 0 (a stride-2 vload_lanes: two
        masked loads and one shuffle; nothing outside the lanes' elements is read)."""
        if not is_f32_row(arr) or not is_index(index, lo, hi):
            return None
        evens = ir.Constant(ir.VectorType(i32, width), list(range(0, 2 * width, 2)))

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
            index, lo, hi = (context.cast(builder, v, t, types.int64)
                             for v, t in zip(args[1:], signature.args[1:]))
            halves = []
            for half in range(2):
                # element e of this half is lane (half * width + e) / 2 when even
                lanes = [(half * width + e) // 2 if e % 2 == 0 else -1 for e in range(width)]
                mask = lane_mask(builder, lo, hi, lanes)
                halves.append(masked_load(builder, data,
                                          builder.add(index, ir.Constant(index.type,
                                                                         half * width)),
                                          mask))
            return builder.shuffle_vector(halves[0], halves[1], evens)
        return vty(arr, index, lo, hi), codegen

    @intrinsic
    def vstore_lanes(typingctx, arr, index, value, n):
        """arr[index + i] = value[i] for lanes 0 <= i < n only (llvm.masked.store): a run's
        last vector without writing past it."""
        if not is_f32_row(arr) or not is_index(index, n) or value != vty:
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
            index = context.cast(builder, args[1], signature.args[1], types.int64)
            n = context.cast(builder, args[3], signature.args[3], types.int64)
            mask = lane_mask(builder, ir.Constant(ir.IntType(64), 0), n, list(range(width)))
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [llvm_vty, llvm_vty.as_pointer(),
                                                                i32, mask_ty]),
                f"llvm.masked.store.v{width}f32.p0")
            ptr = builder.bitcast(builder.gep(data, [index]), llvm_vty.as_pointer())
            builder.call(fn, [args[2], ptr, ir.Constant(i32, 4), mask])
            return context.get_dummy_value()
        return types.none(arr, index, value, n), codegen

    @intrinsic
    def vsum(typingctx, v):
        """The sum of v's lanes (a shuffle-halving tree)."""
        if v != vty:
            return None

        def codegen(context, builder, signature, args):
            value, lanes = args[0], width
            while lanes > 1:
                half = lanes // 2
                undef = ir.Constant(ir.VectorType(ir.FloatType(), lanes), ir.Undefined)
                low = builder.shuffle_vector(value, undef, ir.Constant(
                    ir.VectorType(i32, half), list(range(half))))
                high = builder.shuffle_vector(value, undef, ir.Constant(
                    ir.VectorType(i32, half), list(range(half, lanes))))
                value, lanes = builder.fadd(low, high), half
            return builder.extract_element(value, ir.Constant(i32, 0))
        return types.float32(vty), codegen

    @intrinsic
    def vsum4(typingctx, a, b, c, d):
        """<4 x float> of the lane sums of a, b, c and d (width >= 4): pairs of vectors
        trade halves of their lane groups and add (a vector then holds both vectors'
        partial sums in groups half as wide), then the four groups narrow to one lane each:
        about a third of the shuffles and adds of four separate vsum trees."""
        if not (a == b == c == d == vty) or width < 4:
            return None
        quad = F32Vector(4)

        def codegen(context, builder, signature, args):
            vectors, group = list(args), width
            while len(vectors) > 1:
                half = group // 2
                starts = range(0, width, group)
                lo = [s + e for s in starts for e in range(half)]
                lo += [width + i for i in lo]
                hi = [i + half for i in lo]
                vectors = [builder.fadd(
                    builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, width), lo)),
                    builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, width), hi)))
                    for x, y in zip(vectors[::2], vectors[1::2])]
                group = half
            value, lanes = vectors[0], width
            while lanes > 4:
                group, half = lanes // 4, lanes // 8
                lo = [g * group + e for g in range(4) for e in range(half)]
                undef = ir.Constant(ir.VectorType(ir.FloatType(), lanes), ir.Undefined)
                value = builder.fadd(
                    builder.shuffle_vector(value, undef, ir.Constant(
                        ir.VectorType(i32, lanes // 2), lo)),
                    builder.shuffle_vector(value, undef, ir.Constant(
                        ir.VectorType(i32, lanes // 2), [i + half for i in lo])))
                lanes //= 2
            return value
        return quad(vty, vty, vty, vty), codegen

    @intrinsic
    def vtranspose_copy(typingctx, dst, d0, dstride, src, s0, sstride):
        """dst[d0 + j * dstride + i] = src[s0 + i * sstride + j] for i, j < width: a
        width x width block transposed in registers (width loads, log2(width) rounds of
        two-vector shuffles, width stores)."""
        if not (is_f32_row(dst) and is_f32_row(src)) or not all(
                isinstance(t, types.Integer) for t in (d0, dstride, s0, sstride)):
            return None

        def codegen(context, builder, signature, args):
            dst_ty, _, _, src_ty, _, _ = signature.args
            dst_a, d0_, dstride_, src_a, s0_, sstride_ = args
            rows = []
            for i in range(width):
                at = builder.add(s0_, builder.mul(sstride_, ir.Constant(s0_.type, i)))
                ptr = _element_pointer(context, builder, src_ty, src_a, at)
                rows.append(builder.load(builder.bitcast(ptr, llvm_vty.as_pointer()), align=4))
            b = width // 2
            while b:
                # rows i and i + b (i & b == 0) trade blocks of b lanes
                lo, hi = [], []
                for lane in range(width):
                    g, pos = lane // (2 * b) * 2 * b, lane % (2 * b)
                    first = pos < b
                    lo.append(g + pos if first else width + g + pos - b)
                    hi.append(g + b + pos if first else width + g + pos)
                masks = [ir.Constant(ir.VectorType(i32, width), m) for m in (lo, hi)]
                for i in range(width):
                    if i & b == 0:
                        a, c = rows[i], rows[i + b]
                        rows[i] = builder.shuffle_vector(a, c, masks[0])
                        rows[i + b] = builder.shuffle_vector(a, c, masks[1])
                b //= 2
            for j in range(width):
                at = builder.add(d0_, builder.mul(dstride_, ir.Constant(d0_.type, j)))
                ptr = _element_pointer(context, builder, dst_ty, dst_a, at)
                builder.store(rows[j], builder.bitcast(ptr, llvm_vty.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.none(dst, d0, dstride, src, s0, sstride), codegen

    return dict(vzero=vzero, vsplat=vsplat, vload=vload, vstore=vstore, vfma=vfma, vadd=vadd,
                vmax=vmax, vsum=vsum, vsum4=vsum4, vload_even=vload_even, vload_lanes=vload_lanes,
                vload_even_lanes=vload_even_lanes, vstore_lanes=vstore_lanes,
                vtranspose_copy=vtranspose_copy)


def _prefetch_intrinsic(write: bool):
    """An intrinsic prefetch(arr, i): the cache line holding arr[i] (a 1-D float32 array),
    to every cache level, for writing or for reading."""
    @intrinsic
    def prefetch(typingctx, arr, index):
        if not (isinstance(arr, types.Array) and arr.ndim == 1
                and arr.dtype == types.float32 and isinstance(index, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, int(write)),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.none(arr, index), codegen
    return prefetch


# C tiles, written after the k loop; operands the next panels read.
prefetch = _prefetch_intrinsic(write=True)
prefetch_read = _prefetch_intrinsic(write=False)
