"""Fully connected layers: NNPACK's nnp_fully_connected_output (a batch) and
nnp_fully_connected_inference / _f16f32 (one vector), plus an optional bias."""
from __future__ import annotations

import numpy as np

from nnjit import errors
from nnjit.dispatch import policy
from nnjit.layers import checks
from nnjit.layers.plan import decide, layer, static

_NO_BIAS = np.zeros(1, np.float32)
_NO_BIAS.flags.writeable = False
def _weights(w, *, half_ok: bool) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        raise errors.InvalidType(f"w must be a numpy.ndarray of float32, got {type(w).__name__}")
    if w.dtype == np.float16:
        if not half_ok:
            raise errors.InvalidType(
                "w must have dtype float32, got float16 (float16 weights are accepted only by "
                "fully_connected_inference; use w.astype(numpy.float32))")
        if w.ndim != 2:
            raise errors.InvalidShape(f"w must be 2-D (output channels, input channels), "
                                      f"got shape {w.shape}")
        return np.ascontiguousarray(w)
    if w.dtype != np.float32 and half_ok:
        raise errors.InvalidType(f"w must have dtype float32 or float16, got {w.dtype} (nnjit "
                                 f"never casts silently; use w.astype(numpy.float32))")
    return checks.array("w", w, 2, what=" (output channels, input channels)")


def _check(x, w, bias, in_axis: int):
    """Sizes (NNPACK's order: batch, input channels, output channels), then agreement."""
    if in_axis == 1 and x.shape[0] == 0:
        raise errors.InvalidBatchSize(f"x has zero batch rows (shape {x.shape})")
    if x.shape[in_axis] == 0:
        raise errors.InvalidInputChannels(f"x has zero input channels (shape {x.shape})")
    if w.shape[0] == 0:
        raise errors.InvalidOutputChannels(f"w has zero output channels (shape {w.shape})")
    if w.shape[1] != x.shape[in_axis]:
        raise errors.InvalidShape(f"w {w.shape} must have one column per input channel of x "
                                  f"{x.shape}: w.shape[1] must be {x.shape[in_axis]}")
    if bias is None:
        return None
    bias = checks.array("bias", bias, 1, what=" (output channels)")
    if bias.shape[0] != w.shape[0]:
        raise errors.InvalidShape(f"bias must have one value per output channel: length "
                                  f"{w.shape[0]}, got shape {bias.shape}")
    return bias


def _inputs(x, w, bias):
    inputs = {"x": x, "w": w}
    if bias is not None:
        inputs["bias"] = bias
    return inputs


@layer
def fully_connected_output(x, w, bias=None, *, out=None):
    """``x @ w.T (+ bias)`` for a batch: x (batch, in) float32, w (out, in) float32, bias
    (out,) float32 or None. Returns (or fills ``out``, which must not overlap the inputs)
    the (batch, out) float32 result.

    Batches of at least half a GEMM tile run on the GEMM kernel; smaller ones on the GEMV
    kernel (every block of weight rows meets each batch row in turn)."""
    x = checks.array("x", x, 2, what=" (batch, input channels)")
    w = _weights(w, half_ok=False)
    bias = _check(x, w, bias, 1)
    out = checks.output("out", out, (x.shape[0], w.shape[0]), _inputs(x, w, bias))
    level = policy.effective_level()
    key = (x.shape, w.shape, None if bias is None else bias.shape)
    algorithm, why, arguments = _output_decision(*key, level[0])
    # (gemm: the registry appends the kernel's per-thread workspace: packed x^T, tile blocks)
    return decide("fully_connected_output", algorithm, why, arguments,
                  (x, w, _NO_BIAS if bias is None else bias, bias is not None, out), out, key,
                  level)


@static
def _output_decision(x_shape, w_shape, bias_shape, level):
    """(algorithm, why, described arguments) of a batch of x_shape at this level."""
    from nnjit.kernels.fully_connected import output_tiles

    n, nr = x_shape[0], output_tiles(level)[1]
    arguments = dict(x=x_shape, w=w_shape, bias="none" if bias_shape is None else bias_shape)
    if n * 2 < nr:
        return ("gemv", f"batch {n} < half the GEMM tile's {nr} batch rows: blocks of weight "
                        f"rows reused from L2 for each batch row", arguments)
    return ("gemm", f"batch {n} >= half the GEMM tile's {nr} batch rows: register-blocked "
                    f"tiles, packed x^T, weights read once", arguments)


@layer
def fully_connected_inference(x, w, bias=None, *, out=None):
    """``w @ x (+ bias)`` for one input vector: x (in,) float32; w (out, in) float32, or
    float16 (IEEE half, widened to float32 inside the kernel: NNPACK's f16f32); bias
    (out,) float32 or None. Returns (or fills ``out``) the (out,) float32 result."""
    x = checks.array("x", x, 1, what=" (input channels)")
    w = _weights(w, half_ok=True)
    bias = _check(x, w, bias, 0)
    (k,), m = x.shape, w.shape[0]
    out = checks.output("out", out, (m,), _inputs(x, w, bias))
    half = w.dtype == np.float16
    algorithm, why, arguments = _inference_decision(x.shape, w.shape, half,
                                                    None if bias is None else bias.shape)
    return decide("fully_connected_inference", algorithm, why, arguments,
                  (x.reshape(1, k), w.view(np.uint16) if half else w,
                   _NO_BIAS if bias is None else bias, bias is not None, out.reshape(1, m)), out)


@static
def _inference_decision(x_shape, w_shape, half, bias_shape):
    """(algorithm, why, described arguments) of one vector against w_shape weights."""
    arguments = dict(x=x_shape, w=f"{w_shape} {'float16' if half else 'float32'}",
                     bias="none" if bias_shape is None else bias_shape)
    if half:
        return ("gemv_f16", "float16 weights: half the bytes read, widened in registers",
                arguments)
    return "gemv", "float32 weights: fused dot products over blocks of weight rows", arguments
