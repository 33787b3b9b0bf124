"""ReLU with a negative slope (leaky ReLU), forward and input gradient.

NNPACK's rule: an element whose sign bit is set is multiplied by the slope (so -0.0 maps to
-0.0 * slope), any other passes through. Both kernels stream once over memory, in chunks that
threads take whole. Each compiles twice: with a separate output, and in place (the output
argument None; see nnjit/kernels/signatures.py).
"""
from numba import prange

from nnjit.dispatch.registry import kernel
from nnjit.kernels.intrinsics import f32_bits
from nnjit.kernels.signatures import destination, f32, none, reads, void, writes

# Elements per parallel chunk: 64 KiB of float32, large enough to amortise the loop
# set-up, small enough to split 1 MB tensors across threads.
CHUNK = 16384


@kernel("relu_output", "direct", signatures=(void(reads(1), writes(1), f32),
                                             void(writes(1), none, f32)))
def relu_output(level):
    """out = x where x's sign bit is clear, else x * slope; out None: in place."""

    def relu(x, out, slope):
        n = x.shape[0]
        for chunk in prange((n + CHUNK - 1) // CHUNK):
            # Slices indexed from 0: LLVM then knows no index is negative.
            part = slice(chunk * CHUNK, (chunk + 1) * CHUNK)
            src = x[part]
            dst = destination(out, src, part)
            for i in range(src.shape[0]):
                v = src[i]
                dst[i] = v * slope if f32_bits(v) < 0 else v

    return relu


@kernel("relu_input_gradient", "direct",
        signatures=(void(reads(1), reads(1), writes(1), f32),
                    void(writes(1), reads(1), none, f32)))
def relu_input_gradient(level):
    """grad_input = grad_output where x's sign bit is clear, else grad_output * slope;
    grad_input None: written over grad_output."""

    def relu_grad(grad_output, x, grad_input, slope):
        n = x.shape[0]
        for chunk in prange((n + CHUNK - 1) // CHUNK):
            part = slice(chunk * CHUNK, (chunk + 1) * CHUNK)
            g, v = grad_output[part], x[part]
            dst = destination(grad_input, g, part)
            for i in range(v.shape[0]):
                dst[i] = g[i] * slope if f32_bits(v[i]) < 0 else g[i]

    return relu_grad
