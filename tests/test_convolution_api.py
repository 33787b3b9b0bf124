"""Convolution layers' argument rules: every bad argument is a clear NnjitError raised before
any output is written; output sizes; algorithm choice (no kernel is run here)."""
import numpy as np
import pytest

import nnjit
from nnjit import errors
from nnjit.layers.convolution import output_size

X3 = np.ones((3, 8, 8), np.float32)
X4 = np.ones((2, 3, 8, 8), np.float32)
W = np.ones((4, 3, 3, 3), np.float32)
GRAD = np.ones((2, 4, 6, 6), np.float32)        # output of X4 * W, no padding, stride 1


@pytest.mark.parametrize("call,error,words", [
    (lambda: nnjit.convolution_inference(X4, W), errors.InvalidShape, "3-D"),
    (lambda: nnjit.convolution_output(X3, W), errors.InvalidShape, "4-D"),
    (lambda: nnjit.convolution_output(X4, W[0]), errors.InvalidShape, "w must be 4-D"),
    (lambda: nnjit.convolution_output(X4.astype(np.float64), W), errors.InvalidType, "float32"),
    (lambda: nnjit.convolution_output(X4, W.astype(np.float16)), errors.InvalidType, "float32"),
    (lambda: nnjit.convolution_output(X4[:0], W), errors.InvalidBatchSize, "batch"),
    (lambda: nnjit.convolution_output(X4[:, :0], W[:, :0]), errors.InvalidInputChannels,
     "input channels"),
    (lambda: nnjit.convolution_output(X4, W[:0]), errors.InvalidOutputChannels, "output"),
    (lambda: nnjit.convolution_output(X4[:, :, :0], W), errors.InvalidInputSize, "height"),
    (lambda: nnjit.convolution_output(X4, W[:, :, :0]), errors.InvalidKernelSize, "kernel"),
    (lambda: nnjit.convolution_output(X4, W[:, :2]), errors.InvalidShape, "expects 2"),
    (lambda: nnjit.convolution_output(X4, W, np.ones(5, np.float32)), errors.InvalidShape,
     "bias"),
    (lambda: nnjit.convolution_output(X4, W, np.ones((4, 1), np.float32)), errors.InvalidShape,
     "bias"),
    (lambda: nnjit.convolution_output(X4, W, stride=0), errors.InvalidOutputSubsampling,
     "stride"),
    (lambda: nnjit.convolution_output(X4, W, stride=(1, 2, 3)), errors.InvalidShape, "pair"),
    (lambda: nnjit.convolution_output(X4, W, padding=-1), errors.InvalidInputPadding, ">= 0"),
    (lambda: nnjit.convolution_output(X4, W, padding=(1, 2, 3)), errors.InvalidShape, "top"),
    (lambda: nnjit.convolution_output(X4[:, :, :2, :2], W), errors.InvalidInputSize, "empty"),
    (lambda: nnjit.convolution_output(X4, W, activation="sigmoid"), errors.InvalidActivation,
     "activation"),
    (lambda: nnjit.convolution_output(X4, W, algorithm="winograd"), errors.InvalidAlgorithm,
     "one of"),
    (lambda: nnjit.convolution_output(X4, W, algorithm="direct"), errors.UnsupportedAlgorithm,
     "3x3"),
    (lambda: nnjit.convolution_output(X4, W, algorithm="wt8x8"), errors.UnsupportedAlgorithm,
     "not built yet"),
    (lambda: nnjit.convolution_input_gradient(GRAD, W, (8, 9)), errors.InvalidShape,
     "grad_output is 6x6"),
    (lambda: nnjit.convolution_input_gradient(GRAD, W[:3], (8, 8)), errors.InvalidShape,
     "output channels"),
    (lambda: nnjit.convolution_input_gradient(GRAD, W, (8, 8), stride=2), errors.InvalidShape,
     "3x3 output"),
    (lambda: nnjit.convolution_input_gradient(GRAD, W, 0), errors.InvalidInputSize,
     "input_size"),
    (lambda: nnjit.convolution_input_gradient(GRAD[:0], W, (8, 8)), errors.InvalidBatchSize,
     "batch"),
    (lambda: nnjit.convolution_kernel_gradient(X4, GRAD, (3, 4)), errors.InvalidShape,
     "grad_output is 6x6"),
    (lambda: nnjit.convolution_kernel_gradient(X4[:1], GRAD, (3, 3)), errors.InvalidShape,
     "batch"),
    (lambda: nnjit.convolution_kernel_gradient(X4, GRAD, (0, 3)), errors.InvalidKernelSize,
     "kernel_size"),
    (lambda: nnjit.convolution_kernel_gradient(X4, GRAD, 3, algorithm="direct"),
     errors.UnsupportedAlgorithm, "supported"),
    (lambda: nnjit.transform_kernel(W[0]), errors.InvalidShape, "w must be 4-D"),
    (lambda: nnjit.transform_kernel(W.astype(np.float64)), errors.InvalidType, "float32"),
    (lambda: nnjit.transform_kernel(W.tolist()), errors.InvalidType, "numpy.ndarray"),
    (lambda: nnjit.transform_kernel(W[:0]), errors.InvalidOutputChannels, "output channels"),
    (lambda: nnjit.transform_kernel(W, algorithm="direct"), errors.UnsupportedAlgorithm,
     "direct never has one"),
    (lambda: nnjit.transform_kernel(W, algorithm="wt8x8"), errors.UnsupportedAlgorithm,
     "built for: implicit_gemm"),
    (lambda: nnjit.transform_kernel(W, algorithm="winograd"), errors.InvalidAlgorithm,
     "one of"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("out,error", [
    (np.full((2, 4, 6, 6), 7.0, np.float64), errors.InvalidType),
    (np.full((2, 4, 6, 7), 7.0, np.float32), errors.InvalidOutput),
    (np.full((2, 4, 6, 12), 7.0, np.float32)[..., ::2], errors.InvalidOutput),
])
def test_bad_out_is_left_untouched(out, error):
    before = out.copy()
    with pytest.raises(error):
        nnjit.convolution_output(X4, W, out=out)
    np.testing.assert_array_equal(out, before)


def test_out_may_not_overlap_an_input():
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(errors.InvalidOutput, match="overlaps x"):
        nnjit.convolution_output(x, np.ones((3, 3, 1, 1), np.float32), out=x)


@pytest.mark.parametrize("size,kernel,padding,stride,expected", [
    ((224, 224), (11, 11), (2, 2, 2, 2), (4, 4), (55, 55)),
    ((231, 231), (11, 11), (0, 0, 0, 0), (4, 4), (56, 56)),
    ((224, 224), (7, 7), (3, 3, 3, 3), (2, 2), (112, 112)),
    ((56, 56), (1, 1), (0, 0, 0, 0), (2, 2), (28, 28)),
    ((5, 5), (3, 3), (4, 0, 4, 0), (1, 1), (11, 3)),        # padding beyond the kernel
    ((9, 10), (2, 3), (0, 1, 0, 1), (3, 2), (3, 5)),
])
def test_output_size(size, kernel, padding, stride, expected):
    assert output_size(size, kernel, padding, stride) == expected


def test_torch_output_sizes_agree():
    torch = pytest.importorskip("torch")
    for size, kernel, pad, stride in [(13, 3, 1, 1), (27, 5, 2, 1), (224, 7, 3, 2), (56, 3, 1, 2)]:
        got = output_size((size, size), (kernel, kernel), (pad,) * 4, (stride, stride))
        y = torch.nn.functional.conv2d(torch.zeros(1, 1, size, size),
                                       torch.zeros(1, 1, kernel, kernel), padding=pad,
                                       stride=stride)
        assert got == tuple(y.shape[2:])
