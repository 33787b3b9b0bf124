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


def _padded(x, padding):
    top, right, bottom, left = padding
    return np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))


def _taps(out_h, out_w, kernel_h, kernel_w, stride):
    """(i, j, rows, cols): for each kernel tap, the strided slices of the padded input it
    meets across the output."""
    sh, sw = stride
    for i in range(kernel_h):
        for j in range(kernel_w):
            yield i, j, slice(i, i + sh * (out_h - 1) + 1, sh), slice(j, j + sw * (out_w - 1) + 1, sw)


def convolution_output(x, w, bias, padding, stride, relu=False):
    """Cross-correlation of x (N, C, H, W) with w (K, C, KH, KW), plus bias, then ReLU.
    ``padding`` is (top, right, bottom, left), ``stride`` (sh, sw)."""
    xp = _padded(x, padding)
    k, _, kh, kw = w.shape
    out_h = (xp.shape[2] - kh) // stride[0] + 1
    out_w = (xp.shape[3] - kw) // stride[1] + 1
    out = np.zeros((x.shape[0], k, out_h, out_w))
    for i, j, rows, cols in _taps(out_h, out_w, kh, kw, stride):
        out += np.einsum("nchw,kc->nkhw", xp[:, :, rows, cols], w[:, :, i, j].astype(np.float64))
    if bias is not None:
        out += bias.astype(np.float64)[None, :, None, None]
    return np.maximum(out, 0) if relu else out


def convolution_input_gradient(grad_output, w, input_size, padding, stride):
    """d(loss)/d(x) for convolution_output, given d(loss)/d(output)."""
    top, right, bottom, left = padding
    n, k, out_h, out_w = grad_output.shape
    _, c, kh, kw = w.shape
    h, wd = input_size
    grad = np.zeros((n, c, top + h + bottom, left + wd + right))
    g = grad_output.astype(np.float64)
    for i, j, rows, cols in _taps(out_h, out_w, kh, kw, stride):
        grad[:, :, rows, cols] += np.einsum("nkhw,kc->nchw", g, w[:, :, i, j].astype(np.float64))
    return grad[:, :, top:top + h, left:left + wd]


def convolution_kernel_gradient(x, grad_output, kernel_size, padding, stride):
    """d(loss)/d(w) for convolution_output, summed over the batch."""
    xp = _padded(x, padding)
    n, k, out_h, out_w = grad_output.shape
    kh, kw = kernel_size
    grad = np.zeros((k, x.shape[1], kh, kw))
    g = grad_output.astype(np.float64)
    for i, j, rows, cols in _taps(out_h, out_w, kh, kw, stride):
        grad[:, :, i, j] = np.einsum("nkhw,nchw->kc", g, xp[:, :, rows, cols])
    return grad


def fully_connected_output(x, w, bias=None):
    """x [N, IN] @ w[OUT, IN]^T (+ bias), products and sums in float64 (w may be float16:
    its values are exact in float64)."""
    out = x.astype(np.float64) @ w.astype(np.float64).T
    return out if bias is None else out + bias.astype(np.float64)


def fully_connected_inference(x, w, bias=None):
    """w[OUT, IN] @ x[IN] (+ bias) in float64 (float16 weights taken at their exact value)."""
    out = w.astype(np.float64) @ x.astype(np.float64)
    return out if bias is None else out + bias.astype(np.float64)
