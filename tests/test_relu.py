"""ReLU forward and input gradient: NNPACK's ReLU layer configs (slope 0.2, tolerance 1e-7),
out of place and in place, at every level the host runs."""
import numpy as np
import pytest
from conftest import max_relative_error, uniform

import nnjit
from nnjit.kernels import reference

# NNPACK's ReLU layers (channels, image side); batch reduced from 64-128 to 2 for CI time.
MODEL_LAYERS = {
    "alexnet.conv1": (64, 55), "alexnet.conv2": (192, 27), "alexnet.conv3": (384, 13),
    "overfeat.conv1": (96, 56), "overfeat.conv4": (1024, 12), "vgg.conv1": (64, 224),
    "vgg.conv5": (512, 28), "fc6": (4096, 1), "fc8": (1000, 1),
}
SLOPE = 0.2
TOLERANCE = 1e-7


@pytest.mark.parametrize("layer", sorted(MODEL_LAYERS))
def test_relu_output_model_layers(level, rng, layer):
    channels, side = MODEL_LAYERS[layer]
    x = uniform(rng, (2, channels, side, side), -1, 1)
    expected = reference.relu_output(x, SLOPE)
    out = nnjit.relu_output(x, SLOPE)
    assert max_relative_error(expected, out) < TOLERANCE
    in_place = x.copy()
    assert nnjit.relu_output(in_place, SLOPE, out=in_place) is in_place
    assert max_relative_error(expected, in_place) < TOLERANCE


@pytest.mark.parametrize("layer", sorted(MODEL_LAYERS))
def test_relu_input_gradient_model_layers(level, rng, layer):
    channels, side = MODEL_LAYERS[layer]
    x = uniform(rng, (2, channels, side, side), -1, 1)
    grad = uniform(rng, x.shape, -1, 1)
    expected = reference.relu_input_gradient(grad, x, SLOPE)
    assert max_relative_error(expected, nnjit.relu_input_gradient(grad, x, SLOPE)) < TOLERANCE
    assert nnjit.relu_input_gradient(grad, x, SLOPE, out=grad) is grad
    assert max_relative_error(expected, grad) < TOLERANCE


@pytest.mark.parametrize("size", [1, 7, 16, 16383, 16384, 16385, 100_003])
def test_relu_sizes_around_chunks_and_vectors(level, rng, size):
    x = uniform(rng, (size,), -1, 1)
    out = np.full_like(x, np.nan)
    nnjit.relu_output(x, SLOPE, out=out)
    assert max_relative_error(reference.relu_output(x, SLOPE), out) < TOLERANCE


def test_relu_sign_bit_rule(level):
    """-0.0 counts as negative (NNPACK): forward gives -0.0 * slope, the gradient is scaled."""
    x = np.array([-0.0, 0.0, -1.0, 2.0, np.inf, -np.inf], dtype=np.float32)
    out = nnjit.relu_output(x, 0.5)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(x))
    np.testing.assert_array_equal(out, [-0.0, 0.0, -0.5, 2.0, np.inf, -np.inf])
    grad = nnjit.relu_input_gradient(np.ones_like(x), x, 0.5)
    np.testing.assert_array_equal(grad, [0.5, 1.0, 0.5, 1.0, 1.0, 0.5])


def test_relu_default_slope_and_any_shape(rng):
    x = uniform(rng, (3, 1, 5, 2, 7), -1, 1)
    out = nnjit.relu_output(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, np.where(x > 0, x, x * np.float32(0)))


def test_relu_non_contiguous_input_is_read_correctly(rng):
    x = uniform(rng, (8, 10), -1, 1)[:, ::2]
    np.testing.assert_array_equal(nnjit.relu_output(x, 0.25),
                                  reference.relu_output(x, 0.25).astype(np.float32))
