"""Convolution input and kernel gradients through the public layers: NNPACK's smoke cases
(at every level the host runs), strided and asymmetrically padded cases, and model layers
of AlexNet, OverFeat and VGG-A at batch 2 (best level), against the float64 references.

Inputs ~ U(0, 1) as NNPACK's gradient tests. Metric: NNPACK's (max over elements of
|ref - got| / max(FLT_MIN, |ref|), median over iterations). Tolerances: the tightest NNPACK
lists for the case (over ft8x8 / ft16x16 / wt8x8), and never looser than DIRECT: these are
direct float32 sums, not transforms."""
import itertools

import numpy as np
import pytest
from conftest import max_relative_error, uniform

import nnjit
from nnjit.kernels import reference

DIRECT = 1e-5

# NNPACK's smoke tolerances (reference/nnpack.md 3.5), tightest over algorithms.
INPUT_GRADIENT_TOLERANCE = {
    "single_tile": 1e-3, "input_subtile": 1e-3, "multi_tile": 1e-2, "implicit_padding": 1e-1,
    "small_batch": 1e-3, "few_input_channels": 1e-2, "few_output_channels": 1e-5,
    "non_square_kernel": 1e-5, "non_square_image": 1e-5,
}
KERNEL_GRADIENT_TOLERANCE = {
    "single_tile": 1e-5, "input_subtile": 1e-5, "multi_tile": 1e-5, "implicit_padding": 5e-2,
    "small_batch": 1e-5, "few_input_channels": 1e-5, "few_output_channels": 1e-5,
    "non_square_kernel": 1e-5, "non_square_image": 1e-5,
}

# NNPACK's smoke cases: (batch, C, K, input size, kernel size); igrad and kgrad sizes differ
# where NNPACK's do (the FT8 sizes).
SMOKE = {
    "single_tile": ((1, 1, 1, (6, 6), (3, 3)), (1, 1, 1, (8, 8), (3, 3))),
    "input_subtile": ((1, 1, 1, (4, 4), (3, 3)), (1, 1, 1, (4, 4), (3, 3))),
    "multi_tile": ((1, 1, 1, (11, 11), (3, 3)), (1, 1, 1, (13, 13), (3, 3))),
    "non_square_kernel": ((1, 1, 1, (8, 8), (2, 3)), (1, 1, 1, (8, 8), (2, 3))),
    "non_square_image": ((1, 1, 1, (9, 10), (3, 3)), (1, 1, 1, (9, 10), (3, 3))),
}
ITERATIONS = 3


def _pads(padding):
    """(top, right, bottom, left) from an int, a pair or a 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return padding[0], padding[1], padding[0], padding[1]
    return tuple(padding)


def _out_size(size, kernel, padding, stride):
    top, right, bottom, left = _pads(padding)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    return (top + size[0] + bottom - kernel[0]) // sh + 1, \
        (left + size[1] + right - kernel[1]) // sw + 1


def _strides(stride):
    return (stride, stride) if isinstance(stride, int) else tuple(stride)


def input_gradient_error(rng, n, c, k, size, kernel, padding=0, stride=1, iterations=1):
    errors = []
    for _ in range(iterations):
        w = uniform(rng, (k, c, *kernel), 0, 1)
        grad_output = uniform(rng, (n, k, *_out_size(size, kernel, padding, stride)), 0, 1)
        out = np.full((n, c, *size), np.nan, np.float32)     # unwritten elements fail
        got = nnjit.convolution_input_gradient(grad_output, w, size, padding=padding,
                                               stride=stride, out=out)
        assert got is out
        expected = reference.convolution_input_gradient(grad_output, w, size, _pads(padding),
                                                        _strides(stride))
        errors.append(max_relative_error(expected, got))
    return float(np.median(errors))


def kernel_gradient_error(rng, n, c, k, size, kernel, padding=0, stride=1, iterations=1):
    errors = []
    for _ in range(iterations):
        x = uniform(rng, (n, c, *size), 0, 1)
        grad_output = uniform(rng, (n, k, *_out_size(size, kernel, padding, stride)), 0, 1)
        out = np.full((k, c, *kernel), np.nan, np.float32)
        got = nnjit.convolution_kernel_gradient(x, grad_output, kernel, padding=padding,
                                                stride=stride, out=out)
        assert got is out
        expected = reference.convolution_kernel_gradient(x, grad_output, kernel,
                                                         _pads(padding), _strides(stride))
        errors.append(max_relative_error(expected, got))
    return float(np.median(errors))


def _tolerance(table, case):
    return min(table[case], DIRECT)


@pytest.fixture
def one_thread():
    """The smoke cases are tiny: on one thread a call takes tens of microseconds, while on
    a busy 2-core host each parallel launch can wait milliseconds for a descheduled worker.
    The split into tasks does not depend on the thread count (test_threads_agree), and the
    model layers run on all threads."""
    before = nnjit.get_num_threads()
    nnjit.set_num_threads(1)
    yield
    nnjit.set_num_threads(before)


# ------------------------------------------------------------------- smoke, every level
@pytest.mark.parametrize("case", sorted(SMOKE))
def test_smoke(level, one_thread, rng, case):
    igrad, kgrad = SMOKE[case]
    assert input_gradient_error(rng, *igrad, iterations=ITERATIONS) < \
        _tolerance(INPUT_GRADIENT_TOLERANCE, case)
    assert kernel_gradient_error(rng, *kgrad, iterations=ITERATIONS) < \
        _tolerance(KERNEL_GRADIENT_TOLERANCE, case)


def test_smoke_batch_and_channels(level, one_thread, rng):
    """small_batch (N = 2..5), few_input_channels and few_output_channels (2..5)."""
    for n in range(2, 6):
        assert input_gradient_error(rng, n, 1, 1, (6, 6), (3, 3), iterations=ITERATIONS) < \
            _tolerance(INPUT_GRADIENT_TOLERANCE, "small_batch")
        assert kernel_gradient_error(rng, n, 1, 1, (8, 8), (3, 3), iterations=ITERATIONS) < \
            _tolerance(KERNEL_GRADIENT_TOLERANCE, "small_batch")
    for channels in range(2, 6):
        assert input_gradient_error(rng, 1, channels, 1, (6, 6), (3, 3)) < \
            _tolerance(INPUT_GRADIENT_TOLERANCE, "few_input_channels")
        assert kernel_gradient_error(rng, 1, channels, 1, (8, 8), (3, 3)) < \
            _tolerance(KERNEL_GRADIENT_TOLERANCE, "few_input_channels")
        assert input_gradient_error(rng, 1, 1, channels, (6, 6), (3, 3)) < \
            _tolerance(INPUT_GRADIENT_TOLERANCE, "few_output_channels")
        assert kernel_gradient_error(rng, 1, 1, channels, (8, 8), (3, 3)) < \
            _tolerance(KERNEL_GRADIENT_TOLERANCE, "few_output_channels")


def test_smoke_implicit_padding(level, one_thread, rng):
    """Every (top, right, bottom, left) with each side < the 5x5 kernel, on an 8x8 image."""
    worst_input = worst_kernel = 0.0
    for padding in itertools.product(range(5), repeat=4):
        worst_input = max(worst_input, input_gradient_error(rng, 1, 1, 1, (8, 8), (5, 5),
                                                            padding))
        worst_kernel = max(worst_kernel, kernel_gradient_error(rng, 1, 1, 1, (8, 8), (5, 5),
                                                               padding))
    assert worst_input < _tolerance(INPUT_GRADIENT_TOLERANCE, "implicit_padding")
    assert worst_kernel < _tolerance(KERNEL_GRADIENT_TOLERANCE, "implicit_padding")


# Strides and padding NNPACK's training functions do not take: (N, C, K, size, kernel,
# padding (top, right, bottom, left), stride).
STRIDED = [
    (2, 3, 5, (11, 12), (3, 3), (1, 1, 1, 1), 2),
    (2, 4, 3, (13, 11), (5, 4), (2, 1, 0, 2), 3),
    (3, 5, 6, (8, 9), (3, 3), (1, 0, 1, 0), (2, 1)),
    (2, 5, 7, (10, 10), (1, 1), (0, 0, 0, 0), 3),          # stride > kernel: pixels no tap meets
    (2, 7, 8, (16, 17), (3, 3), (2, 0, 1, 3), (2, 3)),
    (1, 3, 4, (7, 7), (3, 3), (4, 5, 2, 6), 1),            # padding larger than the kernel
    (2, 3, 4, (7, 9), (2, 3), (6, 2, 5, 7), (2, 2)),
    (2, 9, 10, (23, 23), (7, 7), (3, 3, 3, 3), 2),          # ResNet's stem, small
    (1, 20, 40, (15, 15), (3, 3), (1, 1, 1, 1), 1),         # more than one tile of each
    # phases of unequal sizes, several pixel groups a task
    (2, 3, 8, (301, 299), (3, 3), (1, 1, 1, 1), 2),
]


@pytest.mark.parametrize("case", range(len(STRIDED)))
def test_strides_and_asymmetric_padding(level, one_thread, rng, case):
    n, c, k, size, kernel, padding, stride = STRIDED[case]
    assert input_gradient_error(rng, n, c, k, size, kernel, padding, stride) < DIRECT
    assert kernel_gradient_error(rng, n, c, k, size, kernel, padding, stride) < DIRECT


# ------------------------------------------------------------- model layers, best level
# (C, K, image side, kernel, padding, stride), reference/nnpack.md 3.4; batch 2.
MODEL_LAYERS = {
    "alexnet.conv1": (3, 64, 224, 11, 2, 4),
    "alexnet.conv2": (64, 192, 27, 5, 2, 1),
    "alexnet.conv3": (192, 384, 13, 3, 1, 1),
    "alexnet.conv5": (256, 256, 13, 3, 1, 1),
    "overfeat.conv1": (3, 96, 231, 11, 0, 4),
    "overfeat.conv2": (96, 256, 24, 5, 0, 1),
    "overfeat.conv3": (256, 512, 12, 3, 1, 1),
    "vgg.conv1": (3, 64, 224, 3, 1, 1),
    "vgg.conv8": (512, 512, 14, 3, 1, 1),
}
# Kernel gradient: NNPACK's ft8x8 limit is 1e-6 for these layers, 1e-5 for the rest.
KERNEL_GRADIENT_1E6 = {"alexnet.conv2", "alexnet.conv3", "alexnet.conv5", "overfeat.conv2",
                       "overfeat.conv3", "vgg.conv8"}


@pytest.mark.parametrize("layer", sorted(MODEL_LAYERS))
def test_model_layers(rng, layer):
    c, k, side, kernel, padding, stride = MODEL_LAYERS[layer]
    shape = (2, c, k, (side, side), (kernel, kernel), padding, stride)
    assert input_gradient_error(rng, *shape) < DIRECT
    limit = 1e-6 if layer in KERNEL_GRADIENT_1E6 else DIRECT
    assert kernel_gradient_error(rng, *shape) < limit


# ------------------------------------------- stride 1: the forward channel-lanes path
def flipped(level, c, k, size, kernel, padding, stride=1, deep_pairs=None):
    """Whether this input gradient runs as conv_lanes' correlation with the flipped kernel
    (paired rows at a deep reduction: as on this host, unless ``deep_pairs`` says)."""
    from nnjit.dispatch.isa import level_named
    from nnjit.kernels.conv_gradients import flipped_lanes, paired_rows_deep
    from nnjit.kernels.conv_lanes import lanes_tile, long_tile
    from nnjit.kernels.gemm import blocking, tile_shape

    lv = level_named(level)
    kc, mc, nc = blocking(*tile_shape(lv))
    top, _, _, left = _pads(padding)
    mr, nr = lanes_tile(lv)
    if deep_pairs is None:
        deep_pairs = paired_rows_deep()
    return flipped_lanes(*_strides(stride), top, left, *kernel, k, c, *size, mr, long_tile(lv),
                         nr, mc * kc, nc * kc, deep_pairs)


def test_input_gradient_flipped_lanes(level, rng):
    """Stride-1 input gradients on the forward path's channel lanes: padding 0 to KH - 1
    (the correlation's own padding KH - 1 down to 0), asymmetric, bottom and right padding
    past the kernel (grad_output rows that meet no input, never read), a non-square kernel,
    a last channel panel partly past C, a batch, a 1x1 kernel, and (where the registers
    hold two rows' tiles) rows that pair up, an odd count of them, and (on Intel hosts) with
    a deep reduction; every thread count. Top or left padding past the kernel, a stride,
    too few channels, a 1x1 kernel with more channels out than in, rows that waste tile
    lanes or pair up only into narrow tiles, rows of at most two tiles with a deep
    reduction, or (elsewhere) paired rows with one take the phase GEMMs instead."""
    import numba

    from nnjit.dispatch.isa import level_named
    from nnjit.kernels.conv_gradients import DEEP_REDUCTION
    from nnjit.kernels.conv_lanes import lanes_tile, long_tile

    mr, nr = lanes_tile(level_named(level))
    deep = -(-DEEP_REDUCTION // 9)          # grad_output channels: R = 9 * deep
    pairs = long_tile(level_named(level)) >= 2 * mr
    cases = [  # batch, C, K, size, kernel, padding
        (2, nr, 6, (7, 2 * mr), (3, 3), 1),
        (1, 4 * nr + 3, 5, (6, mr), (3, 3), 0),
        (1, nr, 3, (5, mr), (3, 3), 2),
        (1, 2 * nr, 4, (8, 3 * mr), (5, 3), (0, 2, 4, 1)),
        (3, nr, 2, (6, mr), (3, 3), (1, 4, 5, 0)),      # bottom and right past the kernel
        (1, nr, 2 * nr, (5, 2 * mr), (1, 1), 0),        # 1x1: no more channels out than in
    ]
    if pairs:   # 2 x (7 + 6) and 2 x (6 + 6) pixel tiles
        cases += [(2, nr, deep - 1, (9, 2 * mr - 1), (3, 3), 1),
                  (1, nr, 5, (6, 2 * mr - 2), (3, 3), 1)]
        # a deep reduction: on the lanes where the host's rule says, else the phase GEMMs
        assert flipped(level, nr, deep, (9, 2 * mr - 1), (3, 3), 1, deep_pairs=True)
        assert not flipped(level, nr, deep, (9, 2 * mr - 1), (3, 3), 1, deep_pairs=False)
        assert input_gradient_error(rng, 2, nr, deep, (9, 2 * mr - 1), (3, 3), 1) < DIRECT
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            for n, c, k, size, kernel, padding in cases:
                assert flipped(level, c, k, size, kernel, padding), (c, k, size, padding)
                assert input_gradient_error(rng, n, c, k, size, kernel, padding) < DIRECT
    finally:
        nnjit.set_num_threads(before)
    for c, size, padding, stride in [(nr, (7, mr), (3, 0, 0, 0), 1),
                                     (nr, (7, mr), (0, 0, 0, 3), 1),
                                     (nr, (7, mr), 1, 2), (nr - 1, (7, mr), 1, 1),
                                     (nr, (7, mr + 1), 1, 1)]:     # 2 tiles, half idle; pairs of 4 + 4
        assert not flipped(level, c, 4, size, (3, 3), padding, stride)
        assert input_gradient_error(rng, 1, c, 4, size, (3, 3), padding, stride) < DIRECT
    assert not flipped(level, 4 * nr, 2 * nr, (5, 2 * mr), (1, 1), 0)   # 1x1, 64 -> 128
    assert input_gradient_error(rng, 1, 4 * nr, 2 * nr, (5, 2 * mr), (1, 1), 0) < DIRECT
    assert flipped(level, nr, deep - 1, (4, 2 * mr), (3, 3), 1)
    assert flipped(level, nr, deep, (4, 3 * mr), (3, 3), 1)        # three tiles a row
    assert not flipped(level, nr, deep, (4, 2 * mr), (3, 3), 1)
    assert input_gradient_error(rng, 1, nr, deep, (4, 2 * mr), (3, 3), 1) < DIRECT


# ---------------------------------------------------------------------------- the API
def test_explain_reports_implicit_gemm(rng):
    go = uniform(rng, (2, 4, 6, 6), 0, 1)
    w = uniform(rng, (4, 3, 3, 3), 0, 1)
    x = uniform(rng, (2, 3, 8, 8), 0, 1)
    decision = nnjit.explain(nnjit.convolution_input_gradient, go, w, (8, 8))
    assert decision.algorithm == "implicit_gemm"
    assert decision.operation == "convolution_input_gradient"
    nnjit.convolution_kernel_gradient(x, go, (3, 3))
    decision = nnjit.explain()
    assert decision.algorithm == "implicit_gemm"
    assert decision.operation == "convolution_kernel_gradient"
    assert "implicit_gemm" in str(decision)


def test_explicit_algorithm_and_output_overwritten(rng):
    """algorithm="implicit_gemm" by name; out's previous contents never leak in (the kernel
    gradient overwrites, it does not accumulate)."""
    x = uniform(rng, (3, 4, 9, 9), 0, 1)
    go = uniform(rng, (3, 5, 9, 9), 0, 1)
    w = uniform(rng, (5, 4, 3, 3), 0, 1)
    gw = np.full((5, 4, 3, 3), 7.0, np.float32)
    for _ in range(2):
        nnjit.convolution_kernel_gradient(x, go, (3, 3), padding=1, algorithm="implicit_gemm",
                                          out=gw)
        expected = reference.convolution_kernel_gradient(x, go, (3, 3), (1, 1, 1, 1), (1, 1))
        assert max_relative_error(expected, gw) < DIRECT
    gi = np.full(x.shape, 7.0, np.float32)
    nnjit.convolution_input_gradient(go, w, (9, 9), padding=1, algorithm="implicit_gemm",
                                     out=gi)
    expected = reference.convolution_input_gradient(go, w, (9, 9), (1, 1, 1, 1), (1, 1))
    assert max_relative_error(expected, gi) < DIRECT


def test_threads_agree(rng):
    """One thread and two give the same result (tasks are a fixed split, not the threads)."""
    x = uniform(rng, (4, 16, 14, 14), 0, 1)
    go = uniform(rng, (4, 32, 14, 14), 0, 1)
    w = uniform(rng, (32, 16, 3, 3), 0, 1)
    results = []
    before = nnjit.get_num_threads()
    try:
        for threads in (1, 2):
            nnjit.set_num_threads(threads)
            results.append((nnjit.convolution_input_gradient(go, w, (14, 14), padding=1),
                            nnjit.convolution_kernel_gradient(x, go, (3, 3), padding=1)))
    finally:
        nnjit.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
