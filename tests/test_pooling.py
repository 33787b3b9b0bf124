"""Max pooling: NNPACK's smoke families for 2x2/2, 3x3/2, 1x2 and 2x1 windows and its model
layers (tolerance 1e-7), ceil (NNPACK) and floor output sizes, at every level."""
import itertools

import numpy as np
import pytest
from conftest import max_relative_error, uniform

import nnjit
from nnjit.kernels import reference
from nnjit.layers.pooling import pooled_size

TOLERANCE = 1e-7
WINDOWS = {"2x2s2": ((2, 2), (2, 2)), "3x3s2": ((3, 3), (2, 2)),
           "1x2s12": ((1, 2), (1, 2)), "2x1s21": ((2, 1), (2, 1))}


def check(x, pool, stride, padding=(0, 0, 0, 0), ceil_mode=True):
    out = nnjit.max_pooling_output(x, pool, stride, padding, ceil_mode=ceil_mode)
    n, c, h, w = x.shape
    size = (pooled_size(h, padding[0], padding[2], pool[0], stride[0], ceil_mode, "h"),
            pooled_size(w, padding[3], padding[1], pool[1], stride[1], ceil_mode, "w"))
    expected = reference.max_pooling_output(x, pool, stride, padding, size)
    assert out.shape == expected.shape
    assert max_relative_error(expected, out) < TOLERANCE


def smoke_shapes(name):
    (ph, pw), _ = WINDOWS[name]
    single = [(ph, pw)]
    horizontal = [(ph, w) for w in range(4, 51, 2)]
    vertical = [(h, pw) for h in range(4, 51, 2)]
    large = [(128 + (name == "3x3s2"), 128 + (name == "3x3s2"))]
    indivisible = [{"2x2s2": (5, 5), "3x3s2": (6, 6), "1x2s12": (1, 5), "2x1s21": (5, 1)}[name]]
    return single + horizontal + vertical + large + indivisible


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_pooling_smoke(level, rng, name):
    pool, stride = WINDOWS[name]
    for h, w in smoke_shapes(name):
        check(uniform(rng, (1, 1, h, w), 0, 1), pool, stride)


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_pooling_implicit_padding(level, rng, name):
    """Every padding smaller than the window, input shrunk so the padded size stays 24x24."""
    pool, stride = WINDOWS[name]
    for top, right, bottom, left in itertools.product(range(pool[0]), range(pool[1]),
                                                      range(pool[0]), range(pool[1])):
        x = uniform(rng, (1, 1, 24 - top - bottom, 24 - left - right), 0, 1)
        check(x, pool, stride, (top, right, bottom, left))


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_pooling_small_batch_and_few_channels(level, rng, name):
    pool, stride = WINDOWS[name]
    for n in range(2, 6):
        check(uniform(rng, (n, 1, 12, 12), 0, 1), pool, stride)
    for c in range(2, 6):
        check(uniform(rng, (1, c, 12, 12), 0, 1), pool, stride)


# NNPACK's model layers (channels, side), all 2x2/2; batch reduced to 2 for CI time.
MODEL_LAYERS = {"overfeat.pool1": (96, 48), "overfeat.pool3": (1024, 12), "vgg.pool1": (64, 224),
                "vgg.pool3": (256, 56), "vgg.pool5": (512, 14)}


@pytest.mark.parametrize("layer", sorted(MODEL_LAYERS))
def test_pooling_model_layers(level, rng, layer):
    channels, side = MODEL_LAYERS[layer]
    check(uniform(rng, (2, channels, side, side), 0, 1), (2, 2), (2, 2))


@pytest.mark.parametrize("pool,stride,padding", [((3, 3), (2, 2), (1, 1, 1, 1)),
                                                 ((3, 3), (1, 1), (1, 1, 1, 1)),
                                                 ((5, 3), (3, 2), (2, 0, 1, 1)),
                                                 ((7, 7), (7, 7), (0, 0, 0, 0))])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_pooling_general_windows_both_modes(level, rng, pool, stride, padding, ceil_mode):
    check(uniform(rng, (2, 3, 23, 30), -1, 1), pool, stride, padding, ceil_mode)


def test_ceil_mode_window_larger_than_image():
    """NNPACK: a 3x3/2 window over a 2x2 image is legal and gives one output."""
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(nnjit.max_pooling_output(x, 3, 2), [[[[3.0]]]])


def test_floor_mode_matches_torch_sizes():
    x = np.zeros((1, 1, 7, 9), dtype=np.float32)
    assert nnjit.max_pooling_output(x, 2, ceil_mode=False).shape == (1, 1, 3, 4)
    assert nnjit.max_pooling_output(x, 2).shape == (1, 1, 4, 5)


def test_pooling_matches_torch_when_available(rng):
    torch = pytest.importorskip("torch")
    x = uniform(rng, (2, 8, 33, 31), -1, 1)
    for pool, stride, pad in [(2, 2, 0), (3, 2, 1), (3, 1, 1)]:
        expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), pool, stride, pad).numpy()
        np.testing.assert_array_equal(
            nnjit.max_pooling_output(x, pool, stride, pad, ceil_mode=False), expected)
