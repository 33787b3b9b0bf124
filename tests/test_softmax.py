"""Softmax: NNPACK's imagenet and smoke configurations (tolerance 1e-5), in place and out."""
import numpy as np
import pytest
from conftest import max_relative_error, uniform

import nnjit
from nnjit.kernels import reference

TOLERANCE = 1e-5


@pytest.mark.parametrize("batch", [1, 2, 16, 64, 128, 256])
def test_softmax_imagenet(level, rng, batch):
    x = uniform(rng, (batch, 1000), -1, 1)
    expected = reference.softmax_output(x)
    assert max_relative_error(expected, nnjit.softmax_output(x)) < TOLERANCE
    assert nnjit.softmax_output(x, out=x) is x
    assert max_relative_error(expected, x) < TOLERANCE


@pytest.mark.parametrize("channels", list(range(1, 97, 5)) + list(range(100, 116)))
@pytest.mark.parametrize("batch", [2, 5])
def test_softmax_smoke(level, rng, batch, channels):
    x = uniform(rng, (batch, channels), -1, 1)
    out = np.full_like(x, np.nan)
    nnjit.softmax_output(x, out=out)
    assert max_relative_error(reference.softmax_output(x), out) < TOLERANCE


def test_softmax_wide_range_is_stable_and_accurate(level, rng):
    """Large logits would overflow a naive exp; tiny probabilities must still be accurate
    (including results in float32's subnormal range)."""
    x = uniform(rng, (4, 300), -120, 120)
    x[0, :] = np.linspace(-95, 0, 300, dtype=np.float32)   # exps reach subnormals
    x[1, 0] = 1e30
    out = nnjit.softmax_output(x)
    expected = reference.softmax_output(x)
    normal = np.abs(expected) >= np.finfo(np.float32).tiny
    assert max_relative_error(expected[normal], out[normal]) < TOLERANCE
    # subnormal results: absolute error within a few subnormal steps
    assert np.max(np.abs(expected[~normal] - out[~normal])) < 1e-44 * 8
    assert out[1, 0] == 1.0


def test_softmax_nan_propagates_to_its_row_only(level):
    x = np.zeros((2, 33), dtype=np.float32)
    x[0, 17] = np.nan
    out = nnjit.softmax_output(x)
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], 1 / 33, rtol=1e-6)


def test_vectorised_exp_over_float32_range():
    """exp_f32 against float64 exp: 2 ulp where the result is normal, exact 0 and inf
    beyond the range, NaN in, NaN out."""
    from numba import njit

    from nnjit.kernels.vecmath import exp_f32

    @njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = exp_f32(x[i])

    x = np.concatenate([np.linspace(-110, 95, 200_001, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)])
    out = np.empty_like(x)
    apply(x, out)
    with np.errstate(over="ignore"):
        expected = np.exp(x.astype(np.float64))
    normal = (expected >= np.finfo(np.float32).tiny) & (expected <= np.finfo(np.float32).max)
    assert max_relative_error(expected[normal], out[normal]) < 2.5e-7
    assert (out[expected > np.finfo(np.float32).max] == np.inf).all()
    assert (out[expected < 1e-46] == 0).all()
    assert np.isnan(out[-5]) and out[-4] == np.inf and out[-3] == 0 and out[-2] == out[-1] == 1
