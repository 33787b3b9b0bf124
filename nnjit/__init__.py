"""nnjit: NNPACK's neural-network layers as Numba kernels, compiled per CPU ISA level and
dispatched at run time (ncnn's idea). Importing nnjit compiles nothing; each kernel is
compiled for the level in effect on first use and cached on disk.

    >>> import numpy as np, nnjit
    >>> x = np.random.rand(2, 3, 8, 8).astype(np.float32)
    >>> nnjit.max_pooling_output(x, 2).shape
    (2, 3, 4, 4)
"""
from nnjit.dispatch.cpu import CpuInfo, cpu_info, cpu_supports
from nnjit.dispatch.isa import IsaLevel
from nnjit.dispatch.policy import (get_isa, get_num_threads, isa_levels, max_isa, set_max_isa,
                                   set_num_threads)
from nnjit.dispatch.registry import inspect_asm, warmup
from nnjit.errors import *  # noqa: F401,F403  (the exception hierarchy is public)
from nnjit.errors import NnjitError
from nnjit.layers.activations import relu_input_gradient, relu_output, softmax_output
from nnjit.layers.convolution import (TransformedKernel, convolution_inference,
                                      convolution_input_gradient, convolution_kernel_gradient,
                                      convolution_output, transform_kernel)
from nnjit.layers.fully_connected import fully_connected_inference, fully_connected_output
from nnjit.layers.plan import Decision, explain
from nnjit.layers.pooling import max_pooling_output

__version__ = "0.1.0"

__all__ = [
    "CpuInfo", "Decision", "IsaLevel", "NnjitError", "TransformedKernel",
    "convolution_inference",
    "convolution_input_gradient", "convolution_kernel_gradient", "convolution_output",
    "cpu_info", "cpu_supports", "explain",
    "fully_connected_inference", "fully_connected_output",
    "get_isa", "get_num_threads", "inspect_asm", "isa_levels", "max_isa",
    "max_pooling_output", "relu_input_gradient", "relu_output", "set_max_isa",
    "set_num_threads", "softmax_output", "transform_kernel", "warmup",
]
