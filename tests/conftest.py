import os
import tempfile

import numpy as np
import pytest

# Tests compile into their own cache folder, so a stale user cache can never hide a bug;
# the cache itself is tested in test_cache.py. Set before nnjit compiles anything.
os.environ.setdefault("NNJIT_CACHE_DIR", tempfile.mkdtemp(prefix="nnjit-test-cache-"))
os.environ.pop("NNJIT_MAX_ISA", None)

import nnjit  # noqa: E402
from nnjit.kernels.reference import max_relative_error  # noqa: E402,F401

RUNNABLE = [level.name for level in nnjit.cpu_info().runnable]


@pytest.fixture(params=RUNNABLE)
def level(request):
    """Run the test body at each ISA level the host runs."""
    with nnjit.max_isa(request.param):
        assert nnjit.get_isa().name == request.param
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


def uniform(rng, shape, low, high):
    return rng.uniform(low, high, size=shape).astype(np.float32)
