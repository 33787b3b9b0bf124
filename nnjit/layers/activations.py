"""ReLU (leaky), its input gradient, and softmax: NNPACK's semantics, any batch."""
from __future__ import annotations

import numpy as np

from nnjit import errors
from nnjit.layers import checks
from nnjit.layers.plan import decide, layer

_ELEMENTWISE = "one streaming pass (the only algorithm)"


def _nonempty(name: str, x: np.ndarray) -> None:
    if x.ndim >= 1 and x.shape[0] == 0:
        raise errors.InvalidBatchSize(f"{name} has a zero-sized first (batch) axis, shape {x.shape}")
    if x.size == 0:
        raise errors.InvalidChannels(f"{name} is empty, shape {x.shape}")


def _in_place_view(name: str, x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or not x.flags.writeable:
        raise errors.InvalidOutput(f"in place (out is {name}) needs {name} to be a writeable, "
                                   f"C-contiguous array")
    return x


@layer
def relu_output(x, negative_slope=0.0, *, out=None):
    """Leaky ReLU: ``x`` where its sign bit is clear, else ``x * negative_slope``.

    ``x``: float32 array of any shape. In place when ``out is x``. Returns the output."""
    in_place = out is x and out is not None
    x = _in_place_view("x", x) if in_place else x
    x = checks.array("x", x)
    slope = checks.slope("negative_slope", negative_slope)
    _nonempty("x", x)
    out = checks.output("out", out, x.shape, {"x": x}, in_place_ok=("x",))
    flat_out = None if in_place else out.reshape(-1)
    return decide("relu_output", "direct", _ELEMENTWISE,
                  dict(x=x.shape, negative_slope=float(slope), in_place=in_place),
                  (x.reshape(-1), flat_out, slope), out)


@layer
def relu_input_gradient(grad_output, x, negative_slope=0.0, *, out=None):
    """Gradient of leaky ReLU: ``grad_output`` where ``x``'s sign bit is clear, else
    ``grad_output * negative_slope``. ``out`` may be ``grad_output`` (in place)."""
    in_place = out is grad_output and out is not None
    grad_output = _in_place_view("grad_output", grad_output) if in_place else grad_output
    grad_output = checks.array("grad_output", grad_output)
    x = checks.array("x", x)
    if x.shape != grad_output.shape:
        raise errors.InvalidShape(f"grad_output {grad_output.shape} and x {x.shape} must have "
                                  "the same shape")
    slope = checks.slope("negative_slope", negative_slope)
    _nonempty("x", x)
    out = checks.output("out", out, x.shape, {"grad_output": grad_output, "x": x},
                        in_place_ok=("grad_output",))
    flat_out = None if in_place else out.reshape(-1)
    return decide("relu_input_gradient", "direct", _ELEMENTWISE,
                  dict(grad_output=x.shape, negative_slope=float(slope), in_place=in_place),
                  (grad_output.reshape(-1), x.reshape(-1), flat_out, slope), out)


@layer
def softmax_output(x, *, out=None):
    """Row-wise softmax of a 2-D (batch, channels) array, numerically stable (the row
    maximum is subtracted first). In place when ``out is x``."""
    in_place = out is x and out is not None
    x = _in_place_view("x", x) if in_place else x
    x = checks.array("x", x, 2, what=" (batch, channels)")
    checks.nonempty("x", x.shape, {0: ("batch", errors.InvalidBatchSize),
                             1: ("channels", errors.InvalidChannels)})
    out = checks.output("out", out, x.shape, {"x": x}, in_place_ok=("x",))
    return decide("softmax_output", "direct", "max, exp-sum, scale per row (the only algorithm)",
                  dict(x=x.shape, in_place=in_place), (x, None if in_place else out), out)
