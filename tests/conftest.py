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

# Sessions of at least this many tests (the whole suite has about 1170) compile first.
WARMUP_MIN_TESTS = 200


def pytest_collection_finish(session):
    """Compile every registered kernel at every runnable level before a large session's
    tests, in one process per core (at most 4), into this session's cache: Numba compiles
    on one core, and compiling was 470 of the suite's 840 s on two. The tests then load
    the variants (2 s for all 75; inspect_asm gets the workers' assembly) and compile only
    what else they build. A run of a few tests compiles just what it calls."""
    cores = min(os.cpu_count() or 1, 4)
    if (cores > 1 and len(session.items) >= WARMUP_MIN_TESTS
            and not session.config.option.collectonly):
        nnjit.warmup(levels=RUNNABLE, processes=cores, progress=False)


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
