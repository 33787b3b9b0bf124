"""Convolution layers: inference (batch 1), training forward, input gradient, kernel gradient.

NCHW data, OIHW kernels, cross-correlation (NNPACK's and PyTorch's convention). Unlike NNPACK,
every operation takes any stride, and padding may be as large as the caller wants. Algorithm
names follow NNPACK; which exist is read from the kernel registry, so ``auto`` picks among
what is built and a request for anything else names what is supported for that shape.
"""
from __future__ import annotations

import functools

import numpy as np

from nnjit import errors
from nnjit.dispatch import registry
from nnjit.layers import checks
from nnjit.layers.plan import decide, layer, setting, static

ALGORITHMS = ("auto", "implicit_gemm", "direct", "wt8x8", "ft8x8", "ft16x16")
ACTIVATIONS = ("identity", "relu")


def output_size(input_size, kernel_size, padding, stride) -> tuple[int, int]:
    """(OH, OW) = floor((pad + size - kernel) / stride) + 1 per axis; an empty output is an
    error."""
    (h, w), (kh, kw), (top, right, bottom, left), (sh, sw) = input_size, kernel_size, padding, stride
    span_h, span_w = top + h + bottom - kh, left + w + right - kw
    if span_h < 0 or span_w < 0:
        raise errors.InvalidInputSize(
            f"padded input {top + h + bottom}x{left + w + right} is smaller than the kernel "
            f"{kh}x{kw}: the output would be empty")
    return span_h // sh + 1, span_w // sw + 1


def _geometry(padding, stride):
    pads = checks.padding("padding", padding)
    strides = checks.pair("stride", stride, errors.InvalidOutputSubsampling)
    return pads, strides


def _channels_match(name, shape, axis, w_shape, w_axis, what):
    if shape[axis] != w_shape[w_axis]:
        raise errors.InvalidShape(f"{name} has {shape[axis]} {what} (shape {shape}) but w "
                                  f"{w_shape} expects {w_shape[w_axis]}")


def _nonempty_kernel(w_shape):
    checks.nonempty("w", w_shape, {0: ("output channels", errors.InvalidOutputChannels),
                                   1: ("input channels", errors.InvalidInputChannels),
                                   2: ("kernel height", errors.InvalidKernelSize),
                                   3: ("kernel width", errors.InvalidKernelSize)})


def _nonempty_image(name, shape):
    checks.nonempty(name, shape, {0: ("batch", errors.InvalidBatchSize),
                                  1: ("input channels", errors.InvalidInputChannels),
                                  2: ("height", errors.InvalidInputSize),
                                  3: ("width", errors.InvalidInputSize)})


@functools.lru_cache(maxsize=None)
def _built(operation: str) -> frozenset:
    """The algorithms registered for an operation (the registry is fixed once loaded)."""
    return frozenset(s.algorithm for s in registry.specs() if s.operation == operation)


def _choose(operation: str, algorithm, kernel_size, stride) -> tuple[str, str]:
    """(algorithm, why): ``auto`` picks direct for 1x1 stride-1 where a direct kernel exists,
    implicit GEMM otherwise; an explicit request must be built and fit the shape."""
    if algorithm not in ALGORITHMS:
        raise errors.InvalidAlgorithm(f"algorithm={algorithm!r}: must be one of {ALGORITHMS}")
    built = _built(operation)
    pointwise = tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1)
    fits = {"implicit_gemm": True, "direct": pointwise}
    supported = sorted(a for a in built if fits.get(a, False))
    if algorithm == "auto":
        if pointwise and "direct" in supported:
            return "direct", "auto: 1x1 kernel, stride 1"
        if "implicit_gemm" in supported:
            return "implicit_gemm", "auto: implicit GEMM serves any kernel and stride"
        raise errors.UnsupportedAlgorithm(f"{operation}: no algorithm is built for this shape")
    if algorithm not in supported:
        raise errors.UnsupportedAlgorithm(
            f"algorithm={algorithm!r} is not supported for {operation} with kernel "
            f"{kernel_size[0]}x{kernel_size[1]} and stride {stride[0]}x{stride[1]}"
            f"{' (not built yet)' if algorithm not in built else ''}; supported: "
            f"{', '.join(supported) or 'none'}")
    return algorithm, "requested"


def _activation(activation) -> bool:
    if activation not in ACTIVATIONS:
        raise errors.InvalidActivation(f"activation={activation!r}: must be one of {ACTIVATIONS}")
    return activation == "relu"


@functools.lru_cache(maxsize=64)
def _no_bias(channels: int) -> np.ndarray:
    """Zeros for a call without a bias (read-only: shared by every such call)."""
    zeros = np.zeros(channels, dtype=np.float32)
    zeros.flags.writeable = False
    return zeros


class TransformedKernel:
    """A convolution kernel transformed once, for every forward call to reuse (NNPACK's
    ``precompute`` and ``reuse`` transform strategies): made by ``transform_kernel``, passed
    as ``w`` to ``convolution_inference`` and ``convolution_output``. It holds its own
    copy of the weights, in the layout of the ISA level it was made at: a call at a level
    whose layout differs (after ``set_max_isa``) raises, and the kernel must be made again.

    ``shape``: the kernel's (K, C, KH, KW); ``algorithm``: the algorithm it serves;
    ``level``: the IsaLevel it was made for; ``nbytes``: the memory it holds."""

    __slots__ = ("shape", "algorithm", "level", "layout", "_panels")

    def __init__(self, shape, algorithm, level, layout, panels):
        self.shape = shape
        self.algorithm = algorithm
        self.level = level
        self.layout = layout        # conv_forward.transform_layout(level)
        # In that layout. Writeable only for the kernel's signature: nothing writes it, and
        # it is not handed out (a transformed kernel stays what it was made from).
        self._panels = panels

    @property
    def nbytes(self) -> int:
        return self._panels.nbytes

    def __repr__(self) -> str:
        return (f"TransformedKernel(shape={self.shape}, algorithm={self.algorithm!r}, "
                f"level={self.level.name!r})")


TRANSFORM = "convolution_kernel_transform"


def transform_kernel(w, *, algorithm="implicit_gemm") -> TransformedKernel:
    """Transform a convolution kernel w (K, C, KH, KW) once, for ``algorithm``, at the ISA
    level in effect; pass the result as ``w`` to convolution_inference or
    convolution_output, which then skip the transform on every call. w itself is not
    kept: changing it later does not change the transformed kernel."""
    w = checks.array("w", w, 4, what=" (K, C, KH, KW)")
    _nonempty_kernel(w.shape)
    transforms = _built(TRANSFORM)
    if algorithm not in transforms:
        if algorithm not in ALGORITHMS:
            raise errors.InvalidAlgorithm(
                f"algorithm={algorithm!r}: must be one of {ALGORITHMS}")
        raise errors.UnsupportedAlgorithm(
            f"algorithm={algorithm!r} has no kernel transform (direct never has one: it "
            f"reads w as it is); kernel transforms are built for: {', '.join(sorted(transforms))}")
    from nnjit.dispatch import policy
    from nnjit.kernels.conv_forward import transform_layout, transformed_shape

    level = policy.get_isa()
    shape = transformed_shape(level, w.shape)
    # on a cache line, as the workspace the panels are otherwise transposed into: at
    # NumPy's 16-byte alignment every vector load of them straddles two lines
    panels = registry.aligned_empty(int(np.prod(shape))).reshape(shape)
    policy.apply_num_threads()
    registry.variant(TRANSFORM, algorithm, level)(w, panels)
    return TransformedKernel(w.shape, algorithm, level, transform_layout(level), panels)


def _reused(w: TransformedKernel, level) -> None:
    """A transformed kernel's layout must be the one the call's level reads."""
    from nnjit.kernels.conv_forward import transform_layout

    if transform_layout(level) != w.layout:
        raise errors.UnsupportedTransformStrategy(
            f"w was transformed at ISA level {w.level.name}, whose layout level "
            f"{level.name} (now in effect) does not read: transform it again with "
            "nnjit.transform_kernel")


@static
def _forward_decision(operation, x_shape, w_shape, bias_shape, padding, stride, algorithm,
                      activation, reuse):
    """(output shape, kernel scalars, algorithm, why, described arguments) of a forward
    call on a batch of x_shape; ``reuse``: the algorithm of the transformed kernel given
    as w, or None."""
    _nonempty_kernel(w_shape)
    _nonempty_image("x", x_shape)
    _channels_match("x", x_shape, 1, w_shape, 1, "input channels")
    pads, strides = _geometry(padding, stride)
    relu = _activation(activation)
    if bias_shape is not None and bias_shape[0] != w_shape[0]:
        raise errors.InvalidShape(f"bias has {bias_shape[0]} elements, w has {w_shape[0]} "
                                  "output channels")
    out_h, out_w = output_size(x_shape[2:], w_shape[2:], pads, strides)
    if reuse is None:
        chosen, why = _choose(operation, algorithm, w_shape[2:], strides)
    elif algorithm in ("auto", reuse):
        chosen, why = f"{reuse}_reuse", f"w is a kernel transformed for {reuse}"
    else:
        raise errors.UnsupportedAlgorithm(
            f"algorithm={algorithm!r}: w is a kernel transformed for {reuse!r}, which only "
            f"algorithm={reuse!r} or 'auto' can use")
    return ((x_shape[0], w_shape[0], out_h, out_w),
            (strides[0], strides[1], pads[0], pads[3], relu), chosen, why,
            dict(x=x_shape, w=w_shape, padding=pads, stride=strides, activation=activation))


def _forward(operation, x, w, bias, padding, stride, algorithm, activation, out, batched):
    x = checks.array("x", x, 4 if batched else 3,
                     what=" (N, C, H, W)" if batched else " (C, H, W)")
    level = None
    if isinstance(w, TransformedKernel):
        from nnjit.dispatch import policy

        level = policy.effective_level()
        _reused(w, level[0])
        reuse, kernel_w, inputs = w.algorithm, w._panels, {"x": x}
    else:
        w = checks.array("w", w, 4, what=" (K, C, KH, KW)")
        reuse, kernel_w, inputs = None, w, {"x": x, "w": w}
    if bias is not None:
        bias = inputs["bias"] = checks.array("bias", bias, 1, what=" (K,)")
    x4 = x if batched else x[None]
    key = (operation, x4.shape, w.shape, None if bias is None else bias.shape,
           setting(padding), setting(stride), algorithm, activation, reuse)
    shape, scalars, chosen, why, described = _forward_decision(*key)
    out = checks.output("out", out, shape if batched else shape[1:], inputs)
    if not batched:
        described = dict(described, x=x.shape)
    return decide(operation, chosen, why, described,
                  (x4, kernel_w, _no_bias(w.shape[0]) if bias is None else bias,
                   out if batched else out[None]) + scalars, out, key, level)


@layer
def convolution_inference(x, w, bias=None, *, padding=0, stride=1, algorithm="auto",
                          activation="identity", out=None):
    """Convolution of one image: x (C, H, W), w (K, C, KH, KW) or a TransformedKernel,
    bias (K,) or None -> (K, OH, OW). ``padding``: int, (pad_h, pad_w) or (top, right,
    bottom, left); ``stride``: int or (sh, sw); ``activation``: "identity" or "relu"
    (after the bias)."""
    return _forward("convolution_inference", x, w, bias, padding, stride, algorithm,
                    activation, out, batched=False)


@layer
def convolution_output(x, w, bias=None, *, padding=0, stride=1, algorithm="auto",
                       activation="identity", out=None):
    """Training-forward convolution: x (N, C, H, W), w (K, C, KH, KW) or a
    TransformedKernel -> (N, K, OH, OW)."""
    return _forward("convolution_output", x, w, bias, padding, stride, algorithm, activation,
                    out, batched=True)


def _gradient_geometry(grad_output_shape, spatial, kernel_size, padding, stride, name):
    pads, strides = _geometry(padding, stride)
    expected = output_size(spatial, kernel_size, pads, strides)
    if tuple(grad_output_shape[2:]) != expected:
        raise errors.InvalidShape(
            f"grad_output is {grad_output_shape[2]}x{grad_output_shape[3]} but {name}, "
            f"padding {pads} and stride {strides} give a {expected[0]}x{expected[1]} output")
    return pads, strides


@static
def _input_gradient_decision(grad_output_shape, w_shape, input_size, padding, stride,
                             algorithm):
    _nonempty_kernel(w_shape)
    checks.nonempty("grad_output", grad_output_shape,
                    {0: ("batch", errors.InvalidBatchSize),
                     1: ("output channels", errors.InvalidOutputChannels)})
    _channels_match("grad_output", grad_output_shape, 1, w_shape, 0, "output channels")
    size = checks.pair("input_size", input_size, errors.InvalidInputSize)
    pads, strides = _gradient_geometry(grad_output_shape, size, w_shape[2:], padding, stride,
                                       f"input_size {size}, kernel {w_shape[2]}x{w_shape[3]}")
    chosen, why = _choose("convolution_input_gradient", algorithm, w_shape[2:], strides)
    return ((grad_output_shape[0], w_shape[1], size[0], size[1]),
            (strides[0], strides[1], pads[0], pads[3]), chosen, why,
            dict(grad_output=grad_output_shape, w=w_shape, input_size=size, padding=pads,
                 stride=strides))


@layer
def convolution_input_gradient(grad_output, w, input_size, *, padding=0, stride=1,
                               algorithm="auto", out=None):
    """Gradient with respect to the input: grad_output (N, K, OH, OW), w (K, C, KH, KW),
    input_size (H, W) -> (N, C, H, W)."""
    return _gradient("convolution_input_gradient", _input_gradient_decision,
                     ("grad_output", grad_output, " (N, K, OH, OW)"), ("w", w, " (K, C, KH, KW)"),
                     input_size, padding, stride, algorithm, out)


@layer
def convolution_kernel_gradient(x, grad_output, kernel_size, *, padding=0, stride=1,
                                algorithm="auto", out=None):
    """Gradient with respect to the kernel, summed over the batch: x (N, C, H, W),
    grad_output (N, K, OH, OW), kernel_size (KH, KW) -> (K, C, KH, KW)."""
    return _gradient("convolution_kernel_gradient", _kernel_gradient_decision,
                     ("x", x, " (N, C, H, W)"), ("grad_output", grad_output, " (N, K, OH, OW)"),
                     kernel_size, padding, stride, algorithm, out)


def _gradient(operation, decision, first, second, size, padding, stride, algorithm, out):
    """A gradient call: its two 4-D arrays (name, array, shape words) checked, the rest
    decided (memoized) from their shapes, the size and the settings."""
    (name_a, a, what_a), (name_b, b, what_b) = first, second
    for name, value in ((name_a, a), (name_b, b)):
        if isinstance(value, TransformedKernel):
            raise errors.InvalidType(
                f"{name} is a TransformedKernel, which only the forward layers "
                "(convolution_inference, convolution_output) take; pass the kernel array")
    a = checks.array(name_a, a, 4, what=what_a)
    b = checks.array(name_b, b, 4, what=what_b)
    key = (a.shape, b.shape, setting(size), setting(padding), setting(stride), algorithm)
    shape, scalars, chosen, why, described = decision(*key)
    out = checks.output("out", out, shape, {name_a: a, name_b: b})
    return decide(operation, chosen, why, described, (a, b, out) + scalars, out, key)


@static
def _kernel_gradient_decision(x_shape, grad_output_shape, kernel_size, padding, stride,
                              algorithm):
    _nonempty_image("x", x_shape)
    checks.nonempty("grad_output", grad_output_shape,
                    {1: ("output channels", errors.InvalidOutputChannels)})
    if x_shape[0] != grad_output_shape[0]:
        raise errors.InvalidShape(f"x has batch {x_shape[0]} but grad_output has "
                                  f"{grad_output_shape[0]}")
    kernel = checks.pair("kernel_size", kernel_size, errors.InvalidKernelSize)
    pads, strides = _gradient_geometry(grad_output_shape, x_shape[2:], kernel, padding, stride,
                                       f"x {x_shape[2]}x{x_shape[3]}, kernel_size {kernel}")
    chosen, why = _choose("convolution_kernel_gradient", algorithm, kernel, strides)
    return ((grad_output_shape[1], x_shape[1], kernel[0], kernel[1]),
            (strides[0], strides[1], pads[0], pads[3]), chosen, why,
            dict(x=x_shape, grad_output=grad_output_shape, kernel_size=kernel, padding=pads,
                 stride=strides))
