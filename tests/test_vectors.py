"""The masked vector loads and store the im2col packer relies on: lanes outside [lo, hi) (or
past n) give zeros and leave memory as it was, for every vector width the levels use; and
the lane sums the dot-product kernels end with."""
import numpy as np
import pytest
from numba import njit

from nnjit.kernels.vectors import vector_ops


@pytest.fixture(scope="module", params=[4, 8, 16])
def width_ops(request):
    width = request.param
    ops = vector_ops(width)
    load, load_even = ops["vload_lanes"], ops["vload_even_lanes"]
    store, store_lanes, plain_load = ops["vstore"], ops["vstore_lanes"], ops["vload"]

    @njit
    def masked_load(x, out, index, lo, hi, stride):
        if stride == 1:
            store(out, 0, load(x, index, lo, hi))
        else:
            store(out, 0, load_even(x, index, lo, hi))

    @njit
    def masked_store(x, out, index, n):
        store_lanes(out, index, plain_load(x, 0), n)
    return width, masked_load, masked_store


def _lane_cases(width, size):
    # (index, lo, hi): lanes before the array, past it, empty and inverted ranges
    return [(0, 0, width), (-3, 3, width), (size - width + 2, 0, width - 2), (5, 2, 2),
            (5, 4, 1), (size - 5, -7, 5), (2, -100, 100 if size - 2 >= width else 1)]


@pytest.mark.parametrize("stride", [1, 2])
def test_masked_loads_read_only_their_lanes(width_ops, stride):
    width, masked_load, _ = width_ops
    x = np.arange(1, 4 * width + 1, dtype=np.float32)
    out = np.empty(width, np.float32)
    for index, lo, hi in _lane_cases(width, x.size):
        # keep every enabled lane inside x
        hi = min(hi, (x.size - 1 - index) // stride + 1)
        lo = max(lo, (-index + stride - 1) // stride)
        masked_load(x, out, index, lo, hi, stride)
        want = np.array([x[index + stride * i] if lo <= i < hi else 0 for i in range(width)],
                        np.float32)
        np.testing.assert_array_equal(out, want, err_msg=f"{(index, lo, hi, stride)}")


def test_masked_store_writes_only_its_lanes(width_ops):
    width, _, masked_store = width_ops
    x = np.arange(1, width + 1, dtype=np.float32)
    for n in range(0, width + 1):
        out = np.full(3 * width, -1, np.float32)
        masked_store(x, out, width, n)
        want = np.full(3 * width, -1, np.float32)
        want[width:width + n] = x[:n]
        np.testing.assert_array_equal(out, want, err_msg=f"n={n}")


def test_lane_sums(width_ops, rng):
    """vsum: one vector's lanes; vsum4: four vectors' sums as one 4-lane vector, in order.
    Vector i holds (i + 1) times distinct powers of two (integers below 2**24, so every sum
    is exact): a lane dropped, counted twice or added into another vector's sum shows."""
    width = width_ops[0]
    ops, quad = vector_ops(width), vector_ops(4)
    vload, vsum, vsum4, qstore = ops["vload"], ops["vsum"], ops["vsum4"], quad["vstore"]

    @njit
    def sums(x, out):
        for i in range(4):
            out[i] = vsum(vload(x, i * width))
        qstore(out, 4, vsum4(vload(x, 0), vload(x, width), vload(x, 2 * width),
                             vload(x, 3 * width)))

    x = np.concatenate([(i + 1) * 2.0 ** rng.permutation(width) for i in range(4)])
    x = x.astype(np.float32)
    out = np.empty(8, np.float32)
    sums(x, out)
    want = x.astype(np.float64).reshape(4, width).sum(axis=1)
    np.testing.assert_array_equal(out[:4], want)
    np.testing.assert_array_equal(out[4:], want)
