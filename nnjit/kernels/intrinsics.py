"""LLVM operations Numba does not expose, as intrinsics that vectorise.

- f32_bits / f32_from_bits: reinterpret float32 <-> int32 (one LLVM ``bitcast``), for the
  sign-bit rule of ReLU and for building 2**n in the vectorised exp;
- maximum: ``llvm.maximum.f32``, IEEE maximum that propagates NaN. Numba's ``max`` and
  ``a if a > b else b`` are selects that LLVM does not vectorise as a reduction without
  'nnan'; ``llvm.maximum`` reductions vectorise (a row max runs at memory bandwidth).

An intrinsic is compiled inside the calling kernel's target, so each ISA level gets its own.
"""
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32, as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))

    return types.int32(types.float32), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the low 32 bits of the given integer (Numba
    widens int32 arithmetic to int64, so any integer type is taken and truncated)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = context.cast(builder, args[0], signature.args[0], types.int32)
        return builder.bitcast(low, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@intrinsic
def maximum(typingctx, a, b):
    """The larger of two float32; NaN if either is NaN."""
    if a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.maximum", [f32],
                                              ir.FunctionType(f32, [f32, f32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32), codegen
