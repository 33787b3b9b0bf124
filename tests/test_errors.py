"""Every error class: raised before any output is written, naming the argument and rule."""
import numpy as np
import pytest

import nnjit
from nnjit import errors

X4 = np.ones((1, 2, 6, 6), dtype=np.float32)


def sentinel_out(shape):
    return np.full(shape, 7.0, dtype=np.float32)


def test_hierarchy():
    assert issubclass(errors.InvalidArgument, ValueError)
    assert issubclass(errors.InvalidType, TypeError)
    for cls in (errors.InvalidBatchSize, errors.InvalidChannels, errors.InvalidInputSize,
                errors.InvalidInputPadding, errors.InvalidPoolingSize, errors.InvalidPoolingStride,
                errors.InvalidActivationParameters, errors.InvalidOutput, errors.InvalidShape,
                errors.InvalidIsaLevel, errors.UnsupportedAlgorithm):
        assert issubclass(cls, nnjit.NnjitError) and issubclass(cls, ValueError)
    assert errors.InvalidPoolingStride.status == 15 and errors.UnsupportedAlgorithm.status == 26


@pytest.mark.parametrize("call,error,words", [
    (lambda: nnjit.relu_output([1.0, -1.0]), errors.InvalidType, "numpy.ndarray"),
    (lambda: nnjit.relu_output(np.ones(3)), errors.InvalidType, "float32"),
    (lambda: nnjit.relu_output(np.ones(3, np.float16)), errors.InvalidType, "never casts"),
    (lambda: nnjit.relu_output(np.ones((0, 3), np.float32)), errors.InvalidBatchSize, "batch"),
    (lambda: nnjit.relu_output(np.ones((3, 0), np.float32)), errors.InvalidChannels, "empty"),
    (lambda: nnjit.relu_output(np.ones(3, np.float32), float("nan")),
     errors.InvalidActivationParameters, "negative_slope"),
    (lambda: nnjit.relu_output(np.ones(3, np.float32), "0.1"), errors.InvalidType,
     "negative_slope"),
    (lambda: nnjit.relu_input_gradient(np.ones(3, np.float32), np.ones(4, np.float32)),
     errors.InvalidShape, "same shape"),
    (lambda: nnjit.softmax_output(np.ones(3, np.float32)), errors.InvalidShape, "2-D"),
    (lambda: nnjit.softmax_output(np.ones((0, 3), np.float32)), errors.InvalidBatchSize, "batch"),
    (lambda: nnjit.softmax_output(np.ones((3, 0), np.float32)), errors.InvalidChannels,
     "channels"),
    (lambda: nnjit.max_pooling_output(np.ones((2, 6, 6), np.float32), 2), errors.InvalidShape,
     "4-D"),
    (lambda: nnjit.max_pooling_output(np.ones((0, 1, 4, 4), np.float32), 2),
     errors.InvalidBatchSize, "batch"),
    (lambda: nnjit.max_pooling_output(np.ones((1, 0, 4, 4), np.float32), 2),
     errors.InvalidChannels, "channels"),
    (lambda: nnjit.max_pooling_output(np.ones((1, 1, 0, 4), np.float32), 2),
     errors.InvalidInputSize, "height"),
    (lambda: nnjit.max_pooling_output(X4, 0), errors.InvalidPoolingSize, "pool_size"),
    (lambda: nnjit.max_pooling_output(X4, (2, 2, 2)), errors.InvalidShape, "pair"),
    (lambda: nnjit.max_pooling_output(X4, 2, 0), errors.InvalidPoolingStride, "stride"),
    (lambda: nnjit.max_pooling_output(X4, 2, 3), errors.InvalidPoolingStride, "exceed"),
    (lambda: nnjit.max_pooling_output(X4, 2, 2, 2), errors.InvalidInputPadding, "smaller"),
    (lambda: nnjit.max_pooling_output(X4, 2, 2, (0, 0, 0, -1)), errors.InvalidInputPadding,
     ">= 0"),
    (lambda: nnjit.max_pooling_output(X4, 2, 2, (1, 1, 1)), errors.InvalidShape, "top, right"),
    (lambda: nnjit.max_pooling_output(X4, 2.0), errors.InvalidType, "int"),
    (lambda: nnjit.max_pooling_output(X4, 2, ceil_mode=1), errors.InvalidType, "bool"),
    (lambda: nnjit.max_pooling_output(np.ones((1, 1, 2, 2), np.float32), 3, 1, ceil_mode=False),
     errors.InvalidInputSize, "floor mode"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("out,error,words", [
    (np.full((1, 2, 3, 3), 7.0, np.float64), errors.InvalidType, "float32"),
    (sentinel_out((1, 2, 3, 4)), errors.InvalidOutput, "shape"),
    (sentinel_out((1, 2, 3, 6))[:, :, :, ::2], errors.InvalidOutput, "C-contiguous"),
    ([[0.0]], errors.InvalidType, "ndarray"),
])
def test_bad_out_is_rejected_and_left_untouched(out, error, words):
    before = np.array(out, copy=True)
    with pytest.raises(error, match=words):
        nnjit.max_pooling_output(X4, 2, out=out)
    np.testing.assert_array_equal(np.asarray(out), before)


def test_read_only_out():
    out = sentinel_out((4,))
    out.flags.writeable = False
    with pytest.raises(errors.InvalidOutput, match="writeable"):
        nnjit.relu_output(np.ones(4, np.float32), out=out)


def test_out_overlapping_input_is_rejected_unless_identical():
    buffer = np.arange(10, dtype=np.float32)
    with pytest.raises(errors.InvalidOutput, match="overlaps x"):
        nnjit.relu_output(buffer[:8], out=buffer[2:])
    np.testing.assert_array_equal(buffer, np.arange(10))


def test_in_place_needs_contiguous_writeable_input():
    x = np.ones((4, 4), np.float32)[:, ::2]
    with pytest.raises(errors.InvalidOutput, match="in place"):
        nnjit.relu_output(x, out=x)


def test_errors_happen_before_output_is_written():
    out = sentinel_out((2, 3))
    with pytest.raises(errors.InvalidActivationParameters):
        nnjit.relu_output(np.ones((2, 3), np.float32), float("inf"), out=out)
    assert (out == 7.0).all()


def test_read_only_inputs_are_accepted():
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    x.flags.writeable = False
    np.testing.assert_array_equal(nnjit.relu_output(x), np.maximum(x, 0))
    np.testing.assert_array_equal(nnjit.relu_input_gradient(x, x), np.where(x > 0, x, 0))
    assert nnjit.softmax_output(x.reshape(2, 12)).shape == (2, 12)
    assert nnjit.max_pooling_output(x, 2).shape == (1, 2, 2, 2)


@pytest.mark.parametrize("valid,invalid,error,words", [
    (dict(padding=1), dict(padding=True), errors.InvalidType, "padding must be an int"),
    (dict(padding=1), dict(padding=1.0), errors.InvalidType, "padding must be an int"),
    (dict(stride=(1, 1)), dict(stride=(1, True)), errors.InvalidType, r"stride\[1\]"),
    (dict(padding=(1, 1)), dict(padding=[1.0, 1]), errors.InvalidType, "padding"),
    (dict(padding=(1, 0, 1, 0)), dict(padding=(1, 0, 1, -1)), errors.InvalidInputPadding, ">= 0"),
])
def test_a_remembered_decision_never_admits_an_equal_but_invalid_setting(valid, invalid, error,
                                                                         words):
    """Layer calls reuse the decision made for the same sizes and settings; settings that
    compare and hash equal to a valid one (True == 1 == 1.0) are still rejected, every time."""
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    base = dict(padding=1, stride=1)
    for _ in range(2):
        nnjit.convolution_output(x, w, **{**base, **valid})
        with pytest.raises(error, match=words):
            nnjit.convolution_output(x, w, **{**base, **invalid})


def test_errors_are_raised_again_after_a_valid_call_of_the_same_shape():
    """A decision is remembered only when it succeeds: a bad call raises on every attempt,
    and a good one of the same sizes still runs (and gives the same result each time)."""
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    for _ in range(2):
        with pytest.raises(errors.InvalidShape, match="bias"):
            nnjit.convolution_output(x, w, np.ones(4, np.float32))
        with pytest.raises(errors.InvalidAlgorithm):
            nnjit.convolution_output(x, w, algorithm="fft")
        out = nnjit.convolution_output(x, w, np.ones(3, np.float32))
        assert np.all(out[:, :, 1:-1, 1:-1] == 2 * 9 + 1)
    with pytest.raises(errors.InvalidType, match="ceil_mode"):
        nnjit.max_pooling_output(x, 2, ceil_mode=1)
    assert nnjit.max_pooling_output(x, 2, ceil_mode=True).shape == (1, 2, 3, 3)
    with pytest.raises(errors.InvalidType, match="ceil_mode"):
        nnjit.max_pooling_output(x, 2, ceil_mode=1)
