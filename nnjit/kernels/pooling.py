"""Max pooling over (N, C, H, W) planes, any window, stride and padding.

For each output row the window's input rows are first reduced vertically into a row buffer
(contiguous, so it vectorises), padded with -inf on both sides; the horizontal pass then takes
the maximum of each window of the buffer with no bounds checks. Strides 1 and 2 get loops with
a constant stride so LLVM can vectorise the interleaved loads. Cells in padding or beyond the
input are ignored (the buffer starts at -inf), as NNPACK does.
"""
import numpy as np
from numba import prange

from nnjit.dispatch.registry import kernel
from nnjit.kernels.intrinsics import maximum


@kernel("max_pooling_output", "direct",
        signatures="void(float32[:, :, :, ::1], float32[:, :, :, ::1], "
                   "int64, int64, int64, int64, int64, int64)")
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
                for iy in range(max(y0, 0), min(y0 + pool_h, height)):
                    line = src[iy]
                    for b in range(first, last):
                        row[b] = maximum(row[b], line[b - pad_left])
                result = dst[oy]
                if stride_w == 1:
                    for ox in range(out_w):
                        result[ox] = row[ox]
                    for k in range(1, pool_w):
                        for ox in range(out_w):
                            v = row[ox + k]
                            result[ox] = maximum(result[ox], v)
                elif stride_w == 2:
                    for ox in range(out_w):
                        result[ox] = row[2 * ox]
                    for k in range(1, pool_w):
                        for ox in range(out_w):
                            v = row[2 * ox + k]
                            result[ox] = maximum(result[ox], v)
                else:
                    for ox in range(out_w):
                        result[ox] = row[stride_w * ox]
                    for k in range(1, pool_w):
                        for ox in range(out_w):
                            v = row[stride_w * ox + k]
                            result[ox] = maximum(result[ox], v)

    return max_pool
