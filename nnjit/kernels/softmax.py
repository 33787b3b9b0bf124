"""Row-wise softmax over a (batch, channels) matrix, numerically stable.

Per row: the maximum, then exp(x - max) written to the output while summing, then a scale by
the reciprocal of the sum (NNPACK's order). A row of 4096 floats stays in L1 between the
passes, so memory sees one read of x and one write of out.
"""
import numpy as np
from numba import njit, prange

from nnjit.dispatch.registry import kernel
from nnjit.kernels.intrinsics import maximum
from nnjit.kernels.signatures import destination, none, reads, void, writes
from nnjit.kernels.vecmath import exp_f32


@njit(inline="always")
def row_max(row):
    m = row[0]
    for c in range(1, row.shape[0]):
        m = maximum(m, row[c])
    return m


@kernel("softmax_output", "direct", signatures=(void(reads(2), writes(2)), void(writes(2), none)),
        multiply_adds=True)
def softmax_output(level):
    """out[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]); out None: in place."""

    def softmax(x, out):
        for r in prange(x.shape[0]):
            src = x[r]
            dst = destination(out, src, r)
            m = row_max(src)
            total = np.float32(0.0)
            for c in range(src.shape[0]):
                e = exp_f32(src[c] - m)
                dst[c] = e
                total += e
            scale = np.float32(1.0) / total
            for c in range(dst.shape[0]):
                dst[c] *= scale

    return softmax
