"""Numba types for kernel signatures. Inputs are declared read-only, so callers' read-only
arrays are accepted (Numba converts a writeable array to a read-only parameter, not back).

Kernels that may run in place take ``out=None`` for "in place" rather than the same array
twice: for two array arguments that may alias, LLVM vectorises only behind a run-time overlap
check, which identical arrays fail.
"""
from numba import types
from numba.core.extending import overload

f32 = types.float32
i64 = types.int64
boolean = types.boolean
none = types.none
void = types.void


def reads(ndim: int) -> types.Array:
    """A C-contiguous float32 array the kernel only reads."""
    return types.Array(f32, ndim, "C", readonly=True)


def writes(ndim: int) -> types.Array:
    """A C-contiguous float32 array the kernel writes (or reads and writes)."""
    return types.Array(f32, ndim, "C")


def destination(out, src, index):
    """Where a kernel writes the part ``src`` of its input: ``out[index]``, or ``src``
    itself when ``out`` is None (in place). Call it inside the parallel loop: a parfor body
    receives each array as its own argument, and only ``src`` itself is known not to alias."""


@overload(destination, inline="always")
def _destination(out, src, index):
    # Chosen while typing, per signature: Numba prunes `out is None` only when out's type is
    # None, so a run-time branch would type-check writes to a read-only x in the other case.
    if isinstance(out, types.NoneType):
        return lambda out, src, index: src
    return lambda out, src, index: out[index]
