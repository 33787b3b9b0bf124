"""Max pooling over NCHW data with NNPACK's output size and border rules."""
from __future__ import annotations

from nnjit import errors
from nnjit.layers import checks
from nnjit.layers.plan import decide, layer, setting, static


def pooled_size(size: int, pad_before: int, pad_after: int, window: int, stride: int,
                ceil_mode: bool, axis: str) -> int:
    """Output length along one axis. Ceil mode is NNPACK's rule (windows that start in the
    padding still count, cells outside the input are ignored); floor mode is PyTorch's."""
    span = pad_before + size + pad_after - window
    if ceil_mode:
        return -(-max(span, 0) // stride) + 1
    if span < 0:
        raise errors.InvalidInputSize(
            f"padded input {axis} {pad_before + size + pad_after} is smaller than the pooling "
            f"window {window}: floor mode has no output")
    return span // stride + 1


@layer
def max_pooling_output(x, pool_size, stride=None, padding=0, *, ceil_mode=True, out=None):
    """Max pooling of ``x`` (N, C, H, W), float32.

    ``pool_size``, ``stride`` (default ``pool_size``): int or (h, w). ``padding``: int,
    (pad_h, pad_w) or NNPACK's (top, right, bottom, left); each side must be smaller than the
    window along its axis, and the stride no larger than the window (NNPACK's rules). Padded
    cells never win. ``ceil_mode=True`` is NNPACK's output size; False gives floor mode."""
    x = checks.array("x", x, 4, what=" (N, C, H, W)")
    shape, scalars, described = _decision(x.shape, setting(pool_size), setting(stride),
                                          setting(padding), ceil_mode)
    out = checks.output("out", out, shape, {"x": x})
    return decide("max_pooling_output", "direct",
                  "separable row-buffer max (the only algorithm)", described,
                  (x, out) + scalars, out)


@static
def _decision(x_shape, pool_size, stride, padding, ceil_mode):
    """(output shape, kernel scalars, described arguments) of pooling a batch of x_shape."""
    pool_h, pool_w = checks.pair("pool_size", pool_size, errors.InvalidPoolingSize)
    stride_h, stride_w = checks.pair("stride", (pool_h, pool_w) if stride is None else stride,
                                     errors.InvalidPoolingStride)
    top, right, bottom, left = checks.padding("padding", padding)
    checks.nonempty("x", x_shape, {0: ("batch", errors.InvalidBatchSize),
                                   1: ("channels", errors.InvalidChannels),
                                   2: ("height", errors.InvalidInputSize),
                                   3: ("width", errors.InvalidInputSize)})
    if stride_h > pool_h or stride_w > pool_w:
        raise errors.InvalidPoolingStride(
            f"stride ({stride_h}, {stride_w}) must not exceed pool_size ({pool_h}, {pool_w})")
    if top >= pool_h or bottom >= pool_h or left >= pool_w or right >= pool_w:
        raise errors.InvalidInputPadding(
            f"padding (top={top}, right={right}, bottom={bottom}, left={left}) must be smaller "
            f"than pool_size ({pool_h}, {pool_w}) on each side")
    if not isinstance(ceil_mode, bool):
        raise errors.InvalidType(f"ceil_mode must be a bool, got {ceil_mode!r}")
    batch, channels, height, width = x_shape
    out_h = pooled_size(height, top, bottom, pool_h, stride_h, ceil_mode, "height")
    out_w = pooled_size(width, left, right, pool_w, stride_w, ceil_mode, "width")
    return ((batch, channels, out_h, out_w),
            (pool_h, pool_w, stride_h, stride_w, top, left),
            dict(x=x_shape, pool=(pool_h, pool_w), stride=(stride_h, stride_w),
                 padding=(top, right, bottom, left), ceil_mode=ceil_mode))
