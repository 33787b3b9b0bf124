"""Argument checks shared by every layer. Each raises an NnjitError subclass whose message
names the argument and the rule; none copies, casts or writes anything it should not."""
from __future__ import annotations

import math
import numbers

import numpy as np

from nnjit import errors


def array(name: str, value, ndim: int | None = None, *, what: str = "") -> np.ndarray:
    """A float32 ndarray of the given rank, C-contiguous (a non-contiguous view is copied;
    the dtype is never changed)."""
    if not isinstance(value, np.ndarray):
        raise errors.InvalidType(
            f"{name} must be a numpy.ndarray of float32, got {type(value).__name__}; "
            f"convert with numpy.asarray({name}, dtype=numpy.float32)")
    if value.dtype != np.float32:
        raise errors.InvalidType(
            f"{name} must have dtype float32, got {value.dtype} (nnjit never casts silently; "
            f"use {name}.astype(numpy.float32))")
    if ndim is not None and value.ndim != ndim:
        raise errors.InvalidShape(f"{name} must be {ndim}-D{what}, got shape {value.shape}")
    return np.ascontiguousarray(value)


def output(name: str, out, shape: tuple, inputs: dict[str, np.ndarray],
           in_place_ok: tuple[str, ...] = ()) -> np.ndarray:
    """Check a caller's ``out`` (or allocate one). ``out`` may be one of ``in_place_ok``
    inputs itself; otherwise it must not overlap any input."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise errors.InvalidType(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise errors.InvalidType(f"{name} must have dtype float32, got {out.dtype}")
    if out.shape != tuple(shape):
        raise errors.InvalidOutput(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise errors.InvalidOutput(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise errors.InvalidOutput(f"{name} must be writeable")
    for input_name, value in inputs.items():
        if value is out and input_name in in_place_ok:
            continue
        if np.may_share_memory(out, value):
            allowed = f" (it may be {' or '.join(in_place_ok)} itself, for in place)" \
                if in_place_ok else ""
            raise errors.InvalidOutput(f"{name} overlaps {input_name}{allowed}")
    return out


def positive_int(name: str, value, error=errors.InvalidArgument, *, minimum: int = 1) -> int:
    if type(value) is int and value >= minimum:  # the common case, checked cheaply
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise errors.InvalidType(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def pair(name: str, value, error=errors.InvalidArgument, *, minimum: int = 1) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= minimum."""
    if type(value) is int and value >= minimum:     # the common case, checked cheaply
        return value, value
    items = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != 2:
        raise errors.InvalidShape(f"{name} must be an int or a pair (h, w), got {value!r}")
    return (positive_int(f"{name}[0]", items[0], error, minimum=minimum),
            positive_int(f"{name}[1]", items[1], error, minimum=minimum))


def padding(name: str, value) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) from an int, (pad_h, pad_w), or NNPACK's 4-tuple."""
    if type(value) is int and value >= 0:           # the common case, checked cheaply
        return value, value, value, value
    items = (value,) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) not in (1, 2, 4):
        raise errors.InvalidShape(f"{name} must be an int, (pad_h, pad_w) or (top, right, "
                                  f"bottom, left), got {value!r}")
    ints = [positive_int(f"{name}", v, errors.InvalidInputPadding, minimum=0) for v in items]
    if len(ints) == 1:
        return ints[0], ints[0], ints[0], ints[0]
    if len(ints) == 2:
        return ints[0], ints[1], ints[0], ints[1]
    return tuple(ints)


def slope(name: str, value) -> np.float32:
    """A finite real negative slope."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise errors.InvalidType(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise errors.InvalidActivationParameters(f"{name} must be finite, got {value!r}")
    return np.float32(value)


def nonempty(name: str, shape: tuple, error_by_axis: dict[int, tuple[str, type]]) -> None:
    """Every listed axis of an array of this shape is non-zero (NNPACK's batch/channels/size
    statuses)."""
    for axis, (what, error) in error_by_axis.items():
        if shape[axis] == 0:
            raise error(f"{name} has zero {what} (shape {shape})")
