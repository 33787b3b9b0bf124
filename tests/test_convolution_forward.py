"""Forward convolution (convolution_inference, convolution_output) through the public layers:
NNPACK's smoke cases (reference/nnpack.md 3.5) at every level the host runs, strided and
asymmetrically padded cases, NNPACK's direct 1x1 cases, and model layers at the best level,
against the float64 oracle. Inputs U(-0.1, 1.0) as NNPACK's; identity and ReLU.

Both algorithms compute directly (no transform), so NNPACK's direct-computation limit 1e-5
applies everywhere (its looser limits are for FFT/Winograd), except VGG-A's model layers at
1e-4 (3.5: long reductions over large images).
"""
import itertools

import numpy as np
import pytest
from conftest import max_relative_error, uniform

import nnjit
from nnjit.dispatch.isa import level_named
from nnjit.kernels import reference
from nnjit.kernels.conv_band import banded
from nnjit.kernels.conv_dot import dot_tile, dotted, row_tiled, row_vectors
from nnjit.kernels.conv_forward import panel_lanes, panel_widths, tail_panels
from nnjit.kernels.conv_lanes import lanes_plan, lanes_tile, long_tile, over_channels
from nnjit.kernels.gemm import blocking, tile_shape

TOLERANCE = 1e-5
BEST = nnjit.cpu_info().runnable[-1].name


def pads4(padding):
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[1], padding[0], padding[1])
    return tuple(padding)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def expected(x4, w, bias, padding, stride):
    """float64 oracle, before the activation."""
    return reference.convolution_output(x4, w, bias, pads4(padding), pair(stride))


def check(rng, operation, batch, channels, out_channels, size, kernel, padding=0, stride=1,
          algorithm="auto", tolerance=TOLERANCE, low=-0.1, reuse=False):
    """Run `operation` with identity and ReLU (each against the oracle) on fresh U(low, 1)
    data; the outputs are pre-filled with NaN so an unwritten element fails. ``reuse``:
    with the kernel as given and transformed (nnjit.transform_kernel), NNPACK's precompute
    and reuse; the explanation returned is the last call's."""
    shape = (batch, channels) + pair(size)
    x = uniform(rng, shape, low, 1.0)
    w = uniform(rng, (out_channels, channels) + pair(kernel), low, 1.0)
    bias = uniform(rng, (out_channels,), low, 1.0)
    ref = expected(x, w, bias, padding, stride)
    layer = getattr(nnjit, operation)
    kernels = [w, nnjit.transform_kernel(w)] if reuse else [w]
    for activation, w in itertools.product(("identity", "relu"), kernels):
        want = np.maximum(ref, 0) if activation == "relu" else ref
        if operation == "convolution_inference":
            assert batch == 1
            want = want[0]
            out = np.full(want.shape, np.nan, np.float32)
            got = layer(x[0], w, bias, padding=padding, stride=stride, algorithm=algorithm,
                        activation=activation, out=out)
        else:
            out = np.full(want.shape, np.nan, np.float32)
            got = layer(x, w, bias, padding=padding, stride=stride, algorithm=algorithm,
                        activation=activation, out=out)
        assert got is out
        if low >= -0.1:
            # NNPACK's metric with each element relative to the magnitude of its terms
            # (|b| + sum |x w|; on NNPACK's U(0, 1) data that is |ref| itself): where this
            # data's terms cancel (an output hundreds of times smaller than they are),
            # their float32 rounding is no kernel's error. A NaN (unwritten) fails.
            magnitude = expected(np.abs(x), np.abs(kernels[0]), np.abs(bias), padding, stride)
            if operation == "convolution_inference":
                magnitude = magnitude[0]
            error = np.max(np.abs(want - out) / np.maximum(magnitude, np.finfo(np.float32).tiny))
        else:   # signed data: outputs near zero cancel; error relative to the largest
            error = np.abs(want - out).max() / np.abs(ref).max()
            assert np.isfinite(out).all()
        assert error < tolerance, (activation, error)
    return nnjit.explain()


INF, OUT = "convolution_inference", "convolution_output"


@pytest.fixture
def best():
    """The best level the host runs (where batched and model-sized cases run: every level
    compiles its own kernels, which dominates this file's time)."""
    with nnjit.max_isa(BEST):
        yield BEST


# ------------------------------------------------------------------ NNPACK smoke cases
# (batch 1, one channel in and out, 3x3 kernel unless noted; the FT8x8 sizes)
SMOKE = [("single_tile", 8, 3), ("input_subtile", 4, 3), ("multi_tile", 13, 3),
         ("non_square_kernel", 8, (2, 3)), ("non_square_image", (9, 10), 3)]


@pytest.mark.parametrize("case,size,kernel", SMOKE)
def test_smoke_inference(level, rng, case, size, kernel):
    for _ in range(3):
        decision = check(rng, INF, 1, 1, 1, size, kernel)
    assert decision.algorithm == "implicit_gemm"
    assert decision.level.name == level
    decision = check(rng, INF, 1, 1, 1, size, kernel, reuse=True)
    assert decision.algorithm == "implicit_gemm_reuse" and decision.level.name == level


@pytest.mark.parametrize("case,size,kernel", SMOKE)
def test_smoke_output(best, rng, case, size, kernel):
    for _ in range(3):
        decision = check(rng, OUT, 1, 1, 1, size, kernel)
    assert decision.algorithm == "implicit_gemm" and decision.operation == OUT


def test_smoke_few_channels(level, rng):
    for channels in range(2, 6):
        check(rng, INF, 1, channels, 1, 8, 3)
        check(rng, INF, 1, 1, channels, 8, 3)


def test_smoke_small_batch(best, rng):
    for batch in range(2, 6):
        check(rng, OUT, batch, 1, 1, 8, 3)
        check(rng, OUT, batch, 2, 3, 8, 3, 1)


def test_smoke_implicit_padding(level, rng):
    """Every (top, right, bottom, left) with each side < the 5x5 kernel, 8x8 image."""
    x = uniform(rng, (1, 2, 8, 8), -0.1, 1.0)
    w = uniform(rng, (3, 2, 5, 5), -0.1, 1.0)
    bias = uniform(rng, (3,), -0.1, 1.0)
    for padding in itertools.product(range(5), repeat=4):
        ref = expected(x, w, bias, padding, 1)[0]
        out = nnjit.convolution_inference(x[0], w, bias, padding=padding)
        assert max_relative_error(ref, out) < TOLERANCE, padding


# ------------------------------------------------------------- strides, wide padding
STRIDED = [(3, 1), (3, 0), (1, 0), ((2, 3), (0, 1, 2, 0)), (7, 3), (3, (4, 0, 1, 6))]


@pytest.mark.parametrize("stride", [2, 3, (2, 1), (1, 3)])
def test_strided_and_padded(level, rng, stride):
    for kernel, padding in STRIDED:
        check(rng, INF, 1, 5, 7, (17, 20), kernel, padding, stride, reuse=True)


@pytest.mark.parametrize("stride", [2, 3, (2, 1)])
def test_strided_and_padded_batch(best, rng, stride):
    for kernel, padding in STRIDED:
        check(rng, OUT, 3, 5, 7, (17, 20), kernel, padding, stride)


def test_padding_larger_than_kernel(level, rng):
    """Output rows and columns made of padding only: bias (and ReLU) alone."""
    for padding, stride in [((5, 4, 3, 6), 1), ((6, 0, 7, 2), 2), (4, (3, 2))]:
        check(rng, INF, 1, 3, 4, (6, 7), 3, padding, stride, low=-1.0, reuse=True)


def test_relu_applies_after_bias(level, rng):
    """Signed data (about half the outputs negative) so ReLU visibly clips."""
    check(rng, INF, 1, 6, 13, 11, 3, 1, 1, low=-1.0)


def test_edge_tiles(level, rng):
    """Output channels and pixels around the level's tile (MR channels x NR pixels), and a
    reduction longer than one KC slice (the later slices add to the output)."""
    mr, nr = tile_shape(level_named(level))
    for k in (mr - 1, mr, mr + 1, 3 * mr + 2):
        for side in (1, 5, 7):
            check(rng, INF, 1, 3, k, (side, -(-nr // side) + 1), 3, 1)
    check(rng, INF, 1, 90, mr + 3, 9, 3, 1)        # R = 810 > KC


def test_panels_running_across_images(level, rng):
    """Batches whose images are not a whole number of NR-pixel panels: panels run on from
    one image into the next (into several when an image is smaller than a panel), their
    tiles written image by image, with a reduction longer than one KC slice."""
    mr, nr = tile_shape(level_named(level))
    for batch, size in ((3, (3, nr // 3 + 1)), (5, 2), (2, (5, nr // 5 + 2))):
        check(rng, OUT, batch, 2, mr + 1, size, 3, 1)
    check(rng, OUT, 3, 90, mr, (3, nr // 3 + 1), 3, 1)     # R = 810 > KC
    check(rng, OUT, 4, 3, mr + 2, 7, 1, 0, 2)              # 1x1 stride 2: 16 pixels


def test_image_tail_panels(level, rng):
    """Images whose last P % NR pixels go to one or two narrower panels (one vector, half a
    vector): every pattern of the level's table, through both packers, one image and a
    batch."""
    lv = level_named(level)
    mr, nr = tile_shape(lv)
    table = tail_panels(panel_widths(lv), lv.vector_floats)
    first = {}
    for r, tails in enumerate(table):
        first.setdefault(tails, r)
    assert len(first) >= 2
    for r in first.values():
        size = (1, nr + r)
        check(rng, INF, 1, 3, mr + 1, size, 1, algorithm="direct")
        check(rng, INF, 1, 3, mr + 1, size, 3, padding=1)
        check(rng, OUT, 2, 3, mr + 1, size, 1, algorithm="direct")


def lanes(level, kernel, channels, out_channels, stride=1):
    """Whether this layer runs with output channels in the lanes at ``level``."""
    mr, nr = tile_shape(level_named(level))
    kc, mc, nc = blocking(mr, nr)
    lnr = lanes_tile(level_named(level))[1]
    return over_channels(*pair(kernel), *pair(stride), channels, out_channels, lnr, mc * kc,
                         nc * kc)


def test_channels_split_between_threads(best, rng):
    """More output channels than pixels: threads split W's rows and each packs every pixel
    panel; W's rows go in blocks when its KC slice would fill L2 (1300 rows). Every thread
    count, 1x1 direct and 3x3 through im2col (K not a whole number of the channel-lanes
    panels, which that path declines)."""
    import numba

    k = 3 * lanes_tile(level_named(best))[1] + 4
    assert not lanes(best, 3, 20, k)
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            check(rng, INF, 1, 40, 1300, 5, 1, algorithm="direct")
            check(rng, INF, 1, 20, k, (3, 4), 3, padding=1)
    finally:
        nnjit.set_num_threads(before)


def test_band_path(best, rng):
    """Stride-1 layers on zero-bordered bands (B read through an offset table, the KW - 1
    padded columns of each row dropped): W small (runs of rows split between threads), W
    large (its rows split between threads), several KC slices, asymmetric padding, a
    batch; and a layer that `banded` sends to the packer instead. Every thread count."""
    import numba

    mr, nr = tile_shape(level_named(best))
    kc, mc, _ = blocking(mr, nr)

    def bands(stride, kernel, side, channels, out_channels, pointwise=False):
        return banded(stride, stride, kernel, kernel, side, side, channels, out_channels, kc,
                      mr, nr, mc * kc, pointwise)
    assert bands(1, 3, 14, 256, 256) and bands(1, 3, 56, 64, 64)
    assert not bands(1, 3, 13, 384, 256)            # 169 of 224 lanes
    assert not bands(1, 3, 56, 256, 256)            # W read per few rows
    assert not bands(2, 3, 56, 64, 64) and not bands(1, 1, 9, 8, 8, pointwise=True)
    # the cases below, K short of the channel-lanes panels: bands (small W; large W, whole
    # image; a batch), then the packer
    odd = 3 * lanes_tile(level_named(best))[1] + 4
    assert bands(1, 3, 30, 8, 20) and banded(1, 1, 2, 5, 10, 40, 5, mr + 1, kc, mr, nr,
                                             mc * kc, False)
    assert bands(1, 3, 14, 200, odd) and not bands(1, 3, 10, 30, 600)
    assert not any(lanes(best, kernel, c, k) for kernel, c, k in
                   ((3, 8, 20), ((2, 5), 5, mr + 1), (3, 200, odd), (3, 30, odd)))
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            check(rng, INF, 1, 8, 20, (30, 33), 3, 1)
            check(rng, INF, 1, 200, odd, 14, 3, 1)
            check(rng, OUT, 2, 5, mr + 1, (9, 40), (2, 5), (0, 3, 4, 1))
            check(rng, INF, 1, 30, odd, 10, 3, 1)
    finally:
        nnjit.set_num_threads(before)


def test_channel_lanes_path(level, rng):
    """Output channels in the lanes (nnjit.kernels.conv_lanes): W^T panels transposed per
    call, pixels broadcast from zero-bordered planes or, unpadded, from the image itself;
    a last channel panel partly past K; output rows narrower than MR, MR + 1 wide, and split
    into unequal tiles; at strides 1 and 2, rows of whole long tiles and long tiles with a
    rest, and a stride-3 row as long; strides, asymmetric and oversized padding, non-square
    kernels, a batch, an image larger than the output needs; 1x1 stride-1 layers of long
    reductions or no more channels out than in, both algorithms, and their declines. Where
    the registers hold two rows' tiles, rows pair up: 13 = 7 + 6 over an odd count of rows,
    rests of 5 and 6 pixels after long tiles, at strides 1 and 2; a rest of 3 does not."""
    from nnjit.kernels.conv_lanes import row_span

    mr, nr = lanes_tile(level_named(level))
    long = long_tile(level_named(level))
    pairs = long >= 2 * mr
    assert [row_span(9, ow, s, long, mr) for ow, s in ((13, 1), (2 * long + 5, 1), (6, 2),
                                                      (long + 3, 2), (2 * long, 1))] == (
        [2, 2, 2, 1, 1] if pairs else [1] * 5)
    cases = [  # batch, C, K, size, kernel, padding, stride
        (1, 3, nr, (7, 2 * long + 5), 3, 1, 1),     # OW = 2 LONG + 5
        (2, 4, 2 * nr, (8, 2 * long + 7), 3, 0, 2),  # in place, OW = LONG + 3
        (1, 3, 4 * nr + 5, (9, 4 * long - 1), 3, 1, 2),  # OW = 2 LONG
        (1, 2, nr, (5, 3 * long + 10), 3, 1, 3),    # OW = LONG + 4, runtime stride
        (1, 3, nr, (20, 23), 7, 3, 2),
        (2, 5, 4 * nr + 3, (9, 13), 3, 1, 1),
        (3, 4, 2 * nr, (11, 17), (3, 5), 0, (1, 2)),
        (1, 6, nr, (12, 9), 3, (0, 3, 4, 1), 2),
        (1, 2, nr, 4, 3, 4, 1),                     # padding larger than the kernel
        (1, 3, nr, (5, mr + 1), 3, 1, 1),
        (2, 3, nr, (6, 2 * mr + 3), (2, 2), 0, 1),  # in place: OW = 2 MR + 2
        (1, 4, nr, 10, 3, 0, 3),                    # in place, rows past the output's
        (2, 5, nr, (9, 12), 1, 0, 2),               # 1x1 stride 2, in place
        (1, 5, nr, (9, 12), 1, 1, (2, 3)),          # 1x1 strided and padded
        (2, 256, nr, (9, 2 * long + 3), 1, 0, 1),  # 1x1 stride 1: C >= 256
        (1, 40, nr, (6, long + 5), 1, 1, 1),        # K <= C, padded
    ]
    for batch, c, k, size, kernel, padding, stride in cases:
        assert lanes(level, kernel, c, k, stride), (batch, c, k, size)
        assert kernel != 1 or not dots(level, batch, c, size, padding, stride)
        for algorithm in ("auto", "implicit_gemm") if (kernel, stride) == (1, 1) else ("auto",):
            check(rng, OUT if batch > 1 else INF, batch, c, k, size, kernel, padding, stride,
                  algorithm=algorithm, reuse=algorithm == "auto")
    assert not lanes(level, 1, nr, 2 * nr) and not lanes(level, 1, 2 * nr, 4 * nr)


def test_channel_lanes_threads_and_groups(best, rng):
    """The channel-lanes path at every thread count, in both unit orders (image-major where
    all of W^T fits half of L2, shared; else panel-major, each thread transposing the
    panels its units meet, a thread's run starting inside a panel too), and with images in
    groups whose planes fit a quarter of L3, in both orders."""
    import numba

    lv = level_named(best)
    mr, nr = lanes_tile(lv)
    kc, mc, nc = blocking(*tile_shape(lv))

    def past_a_group(c, size):
        """A batch one image past a group of padded images within a quarter of L3."""
        return max(2, nc * kc // 4 // (c * (size + 2) ** 2) + 1)

    n = past_a_group(64, 128)
    big = (n, 64, nr, 128, 3, 1, 1)
    plan = lanes_plan(n, 64, 128, 128, nr, 3, 3, 128, 128, 1, 1, 1, 1, nr, mc * kc, nc * kc,
                      False)
    assert plan[0] > 0 and plan[2] < n                      # shared W^T, groups
    n = past_a_group(640, 40)
    private = (n, 640, 2 * nr, 40, 3, 1, 1)
    plan = lanes_plan(n, 640, 40, 40, 2 * nr, 3, 3, 40, 40, 1, 1, 1, 1, nr, mc * kc, nc * kc,
                      False)
    assert plan[1] > 0 and plan[2] < n                      # private panels, groups
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            check(rng, OUT, 3, 8, 2 * nr, 9, 3, 1, 1, reuse=True)   # W^T in L2: image-major
            check(rng, INF, 1, 400, 3 * nr, 6, 3, 1, 1, reuse=True)  # panel-major
            assert 2 * 3 * nr * 400 * 9 > mc * kc
        check(rng, OUT, *big)
        check(rng, OUT, *private)
    finally:
        nnjit.set_num_threads(before)


# ------------------------------------------------- 1x1, few pixels: dot products

def dots(level, batch, channels, side, padding=0, stride=1):
    """Whether this 1x1 layer runs as dot products (nnjit.kernels.conv_dot) at ``level``."""
    lv = level_named(level)
    mr, nr = tile_shape(lv)
    kc, mc, _ = blocking(mr, nr)
    oh, ow = (out_side(s, 1, p, st) for s, p, st in
              zip(pair(side), pads2(padding), pair(stride)))
    vector = lv.vector_floats
    lanes = panel_lanes(oh * ow, nr, tail_panels(panel_widths(lv), vector), vector)
    return dotted(1, 1, batch * oh * ow, batch * lanes, channels, mc * kc)


def out_side(size, kernel, pads, stride):
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def pads2(padding):
    top, right, bottom, left = pads4(padding)
    return (top, bottom), (left, right)


def test_dot_product_path(level, rng):
    """1x1 layers of few pixels as dot products of W's rows with x^T's: a channel panel
    partly past K and one pixel group short of J (every short count), C not a whole number
    of vectors, a batch, stride and padding (x^T gathered), both algorithms. The cases that
    the rule sends elsewhere at narrower levels still check out there."""
    mr, j = dot_tile(level_named(level))
    cases = [  # batch, C, K, size, padding, stride
        (1, 400, 3 * mr + 2, 7, 0, 1),          # 49 pixels
        (1, 515, mr - 1, 1, 0, 1),              # one pixel
        (2, 1000, mr + 1, (3, 5), 0, 1),        # 15 pixels an image
        (1, 800, 2, (4, 6), 0, 1),              # 24
        (1, 1000, mr, (5, 6), (1, 0, 0, 1), 1),     # padded: 42 pixels
        (1, 512, 9, 9, 1, 2),                   # stride 2, padded: 36
        (2, 700, 4, (5, 9), 0, (1, 2)),
    ]
    for batch, c, k, size, padding, stride in cases:
        if level == BEST:
            assert dots(level, batch, c, size, padding, stride), (batch, c, size)
        for algorithm in ("auto", "implicit_gemm"):
            check(rng, OUT if batch > 1 else INF, batch, c, k, size, 1, padding, stride,
                  algorithm=algorithm)
    assert dots(level, 1, 515, 1)
    # whole pixel panels, few channels: the pixel-lanes GEMM
    assert not dots(level, 1, 512, 8) and not dots(level, 1, 40, 7)


def test_row_tiles(level, rng):
    """Images of V whole vectors and one pixel (V = 1 .. row_vectors: 17, 33 and 49 pixels
    at AVX-512) in row tiles: C not a whole number of vectors (the lanes' scalar tail and
    the last pixel's masked one), a channel panel partly past K, a batch. Padded or strided,
    or one pixel more or fewer, the image goes to the dot tiles."""
    lv = level_named(level)
    width, mr = lv.vector_floats, dot_tile(lv)[0]
    assert row_vectors(lv) >= 1
    for v in range(1, row_vectors(lv) + 1):
        pixels = v * width + 1
        size = 7 if pixels == 49 else (1, pixels)
        assert row_tiled(lv, pixels) and not row_tiled(lv, pixels - 1)
        assert not row_tiled(lv, pixels + 1)
        for batch in (1, 2):
            if level == BEST:
                assert dots(level, batch, 515, size), (v, batch)
            check(rng, OUT if batch > 1 else INF, batch, 515, 2 * mr + 1, size, 1)
    assert not row_tiled(lv, 1) and not row_tiled(lv, (row_vectors(lv) + 1) * width + 1)


def test_dot_product_threads(best, rng):
    """The dot-product path at every thread count: tasks split (channel panel, image,
    pixel group) tiles, runs starting inside a panel and inside an image."""
    import numba

    assert dots(best, 3, 1000, (3, 5)) and dots(best, 1, 1024, 7)
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            check(rng, OUT, 3, 1000, 13, (3, 5), 1)
            check(rng, INF, 1, 1024, 50, 7, 1)
    finally:
        nnjit.set_num_threads(before)


# ------------------------------------------------------------------- direct (1x1)

def direct_cases(level):
    """NNPACK's DIRECT_1x1 cases with our tile (MR output channels, NR pixels): channel
    tile and subtiles, multi-tiles in both channel counts, odd image sizes; and a reduction
    longer than KC."""
    mr, nr = tile_shape(level_named(level))
    return [(mr, mr, 8), (1, 1, 8), (mr - 1, 3, 8), (3 * mr, mr, 8), (mr, 5 * mr, 8),
            (5 * mr, 3 * mr, 8), (mr + 1, mr + 1, (3, 7)), (mr + 1, mr + 1, (7, 5)),
            (mr + 1, mr + 1, (1, 1)), (700, mr + 1, (4, 8))]


def test_direct_1x1(level, rng):
    for channels, out_channels, size in direct_cases(level):
        decision = check(rng, INF, 1, channels, out_channels, size, 1, algorithm="direct")
        assert decision.algorithm == "direct"
        check(rng, INF, 1, channels, out_channels, size, 1, algorithm="implicit_gemm")
    assert nnjit.explain(nnjit.convolution_inference, np.ones((2, 3, 3), np.float32),
                         np.ones((4, 2, 1, 1), np.float32)).algorithm == "direct"


def test_direct_1x1_batch(best, rng):
    for channels, out_channels, size in direct_cases(best):
        decision = check(rng, OUT, 3, channels, out_channels, size, 1)
        assert decision.algorithm == "direct"


def test_direct_1x1_with_padding(level, rng):
    """A padded 1x1 stride-1 convolution is direct-capable (the layer picks direct for it):
    the border is bias only."""
    for padding in (1, (0, 2, 1, 0)):
        decision = check(rng, INF, 1, 9, 8, (5, 6), 1, padding)
        assert decision.algorithm == "direct"


def test_explain_reports_algorithm(best, rng):
    decision = check(rng, OUT, 3, 4, 9, 10, 3, 1, 2)
    assert decision.algorithm == "implicit_gemm"
    assert "implicit GEMM" in decision.algorithm_reason
    decision = check(rng, OUT, 3, 4, 9, 10, 1)
    assert decision.algorithm == "direct" and "1x1" in decision.algorithm_reason
    planned = nnjit.explain(nnjit.convolution_output, np.ones((1, 4, 9, 9), np.float32),
                            np.ones((5, 4, 3, 3), np.float32), stride=2)
    assert planned.algorithm == "implicit_gemm" and planned.level.name == BEST


def test_thread_counts_agree(best, rng):
    """Any thread count gives the same result (each thread owns an equal run of tiles)."""
    import numba

    x = uniform(rng, (1, 16, 9, 9), -0.1, 1.0)
    w = uniform(rng, (20, 16, 3, 3), -0.1, 1.0)
    ref = expected(x, w, None, 1, 1)[0]
    before = nnjit.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            nnjit.set_num_threads(threads)
            out = nnjit.convolution_inference(x[0], w, padding=1)
            assert max_relative_error(ref, out) < TOLERANCE, threads
    finally:
        nnjit.set_num_threads(before)


# ----------------------------------------------------------------------- model layers
# (C_in, C_out, image side, kernel, padding, stride); inference at batch 1 and the output
# layer at batch 2 (NNPACK: 64-128), best level.
MODEL_LAYERS = {
    "alexnet.conv1": (3, 64, 224, 11, 2, 4), "alexnet.conv2": (64, 192, 27, 5, 2, 1),
    "alexnet.conv3": (192, 384, 13, 3, 1, 1), "alexnet.conv4": (384, 256, 13, 3, 1, 1),
    "alexnet.conv5": (256, 256, 13, 3, 1, 1),
    "overfeat.conv1": (3, 96, 231, 11, 0, 4), "overfeat.conv2": (96, 256, 24, 5, 0, 1),
    "overfeat.conv3": (256, 512, 12, 3, 1, 1), "overfeat.conv4": (512, 1024, 12, 3, 1, 1),
    "overfeat.conv5": (1024, 1024, 12, 3, 1, 1),
    "vgg.conv1": (3, 64, 224, 3, 1, 1), "vgg.conv2": (64, 128, 112, 3, 1, 1),
    "vgg.conv3": (128, 256, 56, 3, 1, 1), "vgg.conv4": (256, 256, 56, 3, 1, 1),
    "vgg.conv5": (256, 512, 28, 3, 1, 1), "vgg.conv6": (512, 512, 28, 3, 1, 1),
    "vgg.conv8": (512, 512, 14, 3, 1, 1),
    "resnet.conv1": (3, 64, 224, 7, 3, 2), "resnet18.l2.3x3s2": (64, 128, 56, 3, 1, 2),
    "resnet18.l2.1x1s2": (64, 128, 56, 1, 0, 2), "resnet50.l1.1x1a": (256, 64, 56, 1, 0, 1),
    "resnet50.l3.1x1a": (1024, 256, 14, 1, 0, 1), "mobilenet.pw14": (1024, 1024, 7, 1, 0, 1),
}
# float64 oracle over a second or more each: deselect with -m "not slow"
SLOW = {"overfeat.conv4", "overfeat.conv5", "vgg.conv2", "vgg.conv3", "vgg.conv4",
        "vgg.conv5", "vgg.conv6"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW
                                  else n for n in MODEL_LAYERS])
def test_model_layers(best, rng, name):
    channels, out_channels, side, kernel, padding, stride = MODEL_LAYERS[name]
    tolerance = 1e-4 if name.startswith("vgg") else TOLERANCE
    decision = check(rng, INF, 1, channels, out_channels, side, kernel, padding, stride,
                     tolerance=tolerance, reuse=True)
    assert decision.algorithm == "implicit_gemm_reuse"
    computed = nnjit.explain(INF, np.empty((channels, side, side), np.float32),
                             np.empty((out_channels, channels, kernel, kernel), np.float32),
                             padding=padding, stride=stride)
    assert computed.algorithm == ("direct" if kernel == 1 and stride == 1 else "implicit_gemm")
    if name in ("alexnet.conv2", "resnet18.l2.3x3s2", "resnet50.l3.1x1a"):
        check(rng, OUT, 2, channels, out_channels, side, kernel, padding, stride,
              tolerance=tolerance)


# ----------------------------------------------------------------- transformed kernels

def test_transformed_kernel_is_a_copy_made_once(best, rng):
    """A transformed kernel keeps what w was when it was made; it serves both forward
    layers, batched; it reports what it is."""
    x = uniform(rng, (2, 6, 9, 9), -0.1, 1.0)
    w = uniform(rng, (10, 6, 3, 3), -0.1, 1.0)
    bias = uniform(rng, (10,), -0.1, 1.0)
    ref = expected(x, w, bias, 1, 1)
    transformed = nnjit.transform_kernel(w)
    w[:] = 0
    assert max_relative_error(ref, nnjit.convolution_output(x, transformed, bias, padding=1)) \
        < TOLERANCE
    assert max_relative_error(ref[1], nnjit.convolution_inference(
        x[1], transformed, bias, padding=1, algorithm="implicit_gemm")) < TOLERANCE
    assert transformed.shape == (10, 6, 3, 3) and transformed.algorithm == "implicit_gemm"
    assert transformed.level.name == best and transformed.nbytes >= 10 * 6 * 9 * 4
    assert "implicit_gemm" in repr(transformed)


def test_transformed_kernel_errors_write_nothing(best, rng):
    """A transformed kernel is checked as w is (channels, bias, algorithm); it serves the
    forward layers only, and only at levels that read its layout."""
    x = uniform(rng, (1, 4, 8, 8), -0.1, 1.0)
    transformed = nnjit.transform_kernel(uniform(rng, (5, 4, 3, 3), -0.1, 1.0))
    out = np.full((1, 5, 6, 6), 7.0, np.float32)
    bad = [
        (lambda: nnjit.convolution_output(x[:, :3], transformed, out=out),
         nnjit.InvalidShape, "expects 4"),
        (lambda: nnjit.convolution_output(x, transformed, np.ones(4, np.float32), out=out),
         nnjit.InvalidShape, "bias"),
        (lambda: nnjit.convolution_output(x, transformed, algorithm="direct", out=out),
         nnjit.UnsupportedAlgorithm, "transformed for 'implicit_gemm'"),
        (lambda: nnjit.convolution_input_gradient(out, transformed, (8, 8)),
         nnjit.InvalidType, "forward"),
    ]
    from nnjit.kernels.conv_forward import transform_layout
    other = [lv for lv in nnjit.cpu_info().runnable
             if transform_layout(lv) != transform_layout(level_named(best))]
    if other:
        def elsewhere():
            with nnjit.max_isa(other[-1].name):
                nnjit.convolution_output(x, transformed, out=out)
        bad.append((elsewhere, nnjit.UnsupportedTransformStrategy, "transform it again"))
    for call, error, words in bad:
        with pytest.raises(error, match=words):
            call()
        assert (out == 7.0).all()
