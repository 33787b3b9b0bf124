"""Max pooling over (N, C, H, W) planes, any window, stride and padding.

Per plane, a row buffer holds one padded input row: -inf in the padding, set once. For each
output row, the window's input rows are reduced vertically into the buffer's inside, then each
output is the maximum over its window of the buffer, with no bounds checks. Cells in padding
or beyond the input never win, as in NNPACK.

Rows are short (27 to 224 floats in common layers), so the loops are written on explicit
vectors of the level's width (nnjit/kernels/vectors.py) and end with one more vector that
overlaps the previous one instead of a scalar remainder: recomputing a maximum is harmless.
Stride 2 reads its windows with stride-2 vector loads (two loads and a shuffle); other strides
above 2 fall back to scalar code.
"""
import numpy as np
from numba import prange

from nnjit.dispatch.registry import kernel, with_globals
from nnjit.kernels.intrinsics import maximum
from nnjit.kernels.signatures import i64, reads, void, writes
from nnjit.kernels.vectors import vector_ops


@kernel("max_pooling_output", "direct",
        signatures=void(reads(4), writes(4), i64, i64, i64, i64, i64, i64))
def max_pooling_output(level):
    """out[n, c, oy, ox] = max of x over the window at (oy*sh - pad_top, ox*sw - pad_left)."""
    V = level.vector_floats

    def max_pool(x, out, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left):
        batch, channels, height, width = x.shape
        out_h, out_w = out.shape[2], out.shape[3]
        # every window, plus the slack a stride-2 vector load reads past the last window
        span = max((out_w - 1) * stride_w + pool_w, pad_left + width) + 2 * V
        neg_inf = np.float32(-np.inf)
        for plane in prange(batch * channels):
            n = plane // channels
            src = x[n, plane - n * channels]
            dst = out[n, plane - n * channels]
            row = np.full(span, neg_inf, dtype=np.float32)
            inside = row[pad_left:pad_left + width]
            for oy in range(out_h):
                y0 = oy * stride_h - pad_top
                y_lo, y_hi = max(y0, 0), min(y0 + pool_h, height)
                if y_lo >= y_hi:                    # a window wholly in the padding (ceil mode)
                    inside[:] = neg_inf
                elif width >= V:
                    for b0 in range(0, width, V):
                        b = min(b0, width - V)      # the last vector overlaps the previous
                        m = vload(src[y_lo], b)
                        for iy in range(y_lo + 1, y_hi):
                            m = vmax(m, vload(src[iy], b))
                        vstore(inside, b, m)
                else:
                    for b in range(width):
                        m = src[y_lo, b]
                        for iy in range(y_lo + 1, y_hi):
                            m = maximum(m, src[iy, b])
                        inside[b] = m
                result = dst[oy]
                if out_w >= V and stride_w <= 2:
                    for o0 in range(0, out_w, V):
                        o = min(o0, out_w - V)
                        if stride_w == 1:
                            m = vload(row, o)
                            for k in range(1, pool_w):
                                m = vmax(m, vload(row, o + k))
                        else:
                            m = vload_even(row, 2 * o)
                            for k in range(1, pool_w):
                                m = vmax(m, vload_even(row, 2 * o + k))
                        vstore(result, o, m)
                else:
                    for o in range(out_w):
                        m = row[o * stride_w]
                        for k in range(1, pool_w):
                            m = maximum(m, row[o * stride_w + k])
                        result[o] = m

    return with_globals(max_pool, **vector_ops(V))
