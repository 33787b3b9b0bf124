"""float64 oracles for every operation: the tests' ground truth (NNPACK's src/ref).

Plain NumPy, written for clarity rather than speed; each mirrors NNPACK's reference: products
and sums in float64, the same border and sign-bit rules.
"""
import numpy as np


def relu_output(x, negative_slope):
    x = x.astype(np.float64)
    return np.where(np.signbit(x), x * negative_slope, x)


def relu_input_gradient(grad_output, x, negative_slope):
    grad = grad_output.astype(np.float64)
    return np.where(np.signbit(x), grad * negative_slope, grad)


def softmax_output(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def max_pooling_output(x, pool, stride, padding, out_size):
    """``padding`` is (top, right, bottom, left); cells outside the input never win."""
    (ph, pw), (sh, sw), (top, _, _, left), (oh, ow) = pool, stride, padding, out_size
    n, c, h, w = x.shape
    out = np.full((n, c, oh, ow), -np.inf)
    for oy in range(oh):
        y0, y1 = max(oy * sh - top, 0), min(oy * sh - top + ph, h)
        for ox in range(ow):
            x0, x1 = max(ox * sw - left, 0), min(ox * sw - left + pw, w)
            if y0 < y1 and x0 < x1:
                out[:, :, oy, ox] = x[:, :, y0:y1, x0:x1].max(axis=(2, 3))
    return out


def max_relative_error(reference, output) -> float:
    """NNPACK's metric: max over elements of |ref - out| / max(FLT_MIN, |ref|). Elements
    equal to the reference (infinities included) count 0; a NaN where the reference has a
    number counts as infinite error."""
    reference = np.asarray(reference, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if reference.shape != output.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {output.shape}")
    same = (reference == output) | (np.isnan(reference) & np.isnan(output))
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(reference - output) / np.maximum(np.finfo(np.float32).tiny,
                                                        np.abs(reference))
    error = np.where(same, 0.0, np.where(np.isnan(error), np.inf, error))
    return float(error.max()) if error.size else 0.0
