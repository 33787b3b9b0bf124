"""A float32 exp that LLVM vectorises (this Numba has no SVML: np.exp calls expf per element).

exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two parts so the
reduction is exact), exp(r) = 1 + r + r**2 q(r) with q a degree-4 polynomial fitted at
import on Chebyshev nodes of |r| <= ln2/2 (relative error 1.1e-8, below float32's rounding).
2**n is built from exponent bits in two factors, so results that are subnormal still round
correctly; NaN propagates; below the smallest subnormal the result is 0, above the largest
float it is inf. No clamp is needed before the reduction: out-of-range inputs make garbage
that the final selects replace.
"""
import math

import numpy as np
from numba import njit

from nnjit.kernels.intrinsics import f32_from_bits


def _fit_exp_polynomial():
    half_ln2 = math.log(2.0) / 2 * 1.01
    nodes = half_ln2 * np.cos((2 * np.arange(400) + 1) * np.pi / 800)
    q = (np.expm1(nodes) - nodes) / nodes ** 2
    return tuple(np.float32(c) for c in np.polynomial.polynomial.polyfit(nodes, q, 4))


Q0, Q1, Q2, Q3, Q4 = _fit_exp_polynomial()
LOG2E = np.float32(1.0 / math.log(2.0))
LN2_HI = np.float32(0.693359375)                      # ln 2 rounded to 10 bits: n*LN2_HI is exact
LN2_LO = np.float32(math.log(2.0) - 0.693359375)
X_MAX = np.float32(88.72283)                           # exp overflows float32 above
X_MIN = np.float32(-103.97208)                         # exp is below the smallest subnormal
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(fastmath=FASTMATH, inline="always")
def _exp_in_range(x):
    # (SSE2 has no floor instruction: at the generic level this is a libm call per element)
    n = np.floor(x * LOG2E + np.float32(0.5))
    r = x - n * LN2_HI - n * LN2_LO
    q = Q0 + r * (Q1 + r * (Q2 + r * (Q3 + r * Q4)))
    p = np.float32(1.0) + r + r * r * q
    k = np.int32(n)
    half = k >> 1
    scale_a = f32_from_bits((half + np.int32(127)) << np.int32(23))
    scale_b = f32_from_bits((k - half + np.int32(127)) << np.int32(23))
    return p * scale_a * scale_b


@njit(fastmath=FASTMATH, inline="always")
def exp_f32(x):
    """exp of a float32, in branch-free float32 arithmetic."""
    result = _exp_in_range(x)
    result = np.float32(np.inf) if x > X_MAX else result
    return np.float32(0.0) if x < X_MIN else result

