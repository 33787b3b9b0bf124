"""Max pooling over (N, C, H, W) planes, any window, stride and padding.

For each output row the window's input rows are first reduced vertically into a row buffer
(contiguous, so it vectorises), padded with -inf on both sides; the horizontal pass then takes
the maximum of each window of the buffer with no bounds checks. Cells in padding or beyond the
input are ignored (the buffer starts at -inf), as NNPACK does.
"""
import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import kernel
from nnjit.kernels.intrinsics import maximum
from nnjit.kernels.signatures import i64, reads, void, writes


@njit(inline="always")
def window_max(row, result, pool_w, stride):
    """result[ox] = max(row[stride*ox : stride*ox + pool_w]), row padded so none is out of range."""
    for ox in range(result.shape[0]):
        result[ox] = row[stride * ox]
    for k in range(1, pool_w):
        for ox in range(result.shape[0]):
            result[ox] = maximum(result[ox], row[stride * ox + k])


@kernel("max_pooling_output", "direct",
        signatures=void(reads(4), writes(4), i64, i64, i64, i64, i64, i64))
def max_pooling_output(level):
    """out[n, c, oy, ox] = max of x over the window at (oy*sh - pad_top, ox*sw - pad_left)."""

    def max_pool(x, out, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left):
        batch, channels, height, width = x.shape
        out_h, out_w = out.shape[2], out.shape[3]
        span = (out_w - 1) * stride_w + pool_w          # buffer covers every window
        neg_inf = np.float32(-np.inf)
        for plane in prange(batch * channels):
            n = plane // channels
            c = plane - n * channels
            src = x[n, c]
            dst = out[n, c]
            row = np.empty(span, dtype=np.float32)
            first = min(pad_left, span)                   # buffer cells before column 0
            last = min(span, pad_left + width)            # buffer cells up to the last column
            for oy in range(out_h):
                y0 = oy * stride_h - pad_top
                row[:] = neg_inf
                inside = row[first:last]                # slices from 0: no negative indices
                for iy in range(max(y0, 0), min(y0 + pool_h, height)):
                    line = src[iy, first - pad_left:last - pad_left]
                    for b in range(inside.shape[0]):
                        inside[b] = maximum(inside[b], line[b])
                # Strides 1 and 2 as literals: LLVM vectorises their (interleaved) loads.
                if stride_w == 1:
                    window_max(row, dst[oy], pool_w, 1)
                elif stride_w == 2:
                    window_max(row, dst[oy], pool_w, 2)
                else:
                    window_max(row, dst[oy], pool_w, stride_w)

    return max_pool
