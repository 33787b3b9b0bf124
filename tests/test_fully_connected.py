"""Fully connected output (batch) and inference (one vector, float32 or float16 weights):
NNPACK's FC smoke cases around the kernel tiles, the AlexNet / OverFeat / VGG-A fc layers
with NNPACK's tolerances, bias, and every argument error, at every level the host runs.

NNPACK's harness: inputs U(0, 1), outputs pre-filled with NaN, the max relative error checked
on every iteration (100 in the smoke tests, reduced to 3 here; model batches 128/64 reduced
to 4 and 32)."""
import numpy as np
import pytest
from conftest import RUNNABLE, max_relative_error, uniform

import nnjit
from nnjit import errors
from nnjit.dispatch.isa import level_named
from nnjit.kernels import reference
from nnjit.kernels.fully_connected import ROWS, TASKS, _task_grid, output_tiles
from nnjit.kernels.gemm import blocking

TOLERANCE = 1e-5
ITERATIONS = 3


def _output(x, w, bias=None):
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    assert nnjit.fully_connected_output(x, w, bias, out=out) is out
    return out


def _smoke(rng, n, k, m, bias=False):
    for _ in range(ITERATIONS):
        x, w = uniform(rng, (n, k), 0, 1), uniform(rng, (m, k), 0, 1)
        b = uniform(rng, (m,), 0, 1) if bias else None
        err = max_relative_error(reference.fully_connected_output(x, w, b), _output(x, w, b))
        assert err < TOLERANCE, (n, k, m, err)


def _tiles(level):
    """(MR output channels, NR batch rows) of the FC GEMM at this level: NNPACK's
    MRxNR_4x24 cases become batch multiples of NR and channel multiples of MR."""
    mr, nr, _ = output_tiles(level_named(level))
    return mr, nr


# NNPACK's FC output smoke cases (its batch tile is our NR, its channel tile our MR).
def test_single_input_channel(level, rng):
    mr, nr = _tiles(level)
    _smoke(rng, nr, 1, mr)


def test_few_and_many_input_channels(level, rng):
    mr, nr = _tiles(level)
    _smoke(rng, nr, 13, mr)
    _smoke(rng, nr, 1024, mr)          # more than one KC slice at every level


def test_batch_subblocks_and_remainders(level, rng):
    mr, nr = _tiles(level)
    for n in sorted({1, 2, nr // 2 - 1, nr // 2, nr - 1} - {0}):   # gemv and a partial panel
        _smoke(rng, n, 37, mr + 1)
    _smoke(rng, 3 * nr, 37, mr)                                    # small batch size
    for n in (3 * nr + 1, 3 * nr + nr // 2, 4 * nr - 1):           # batch remainder
        _smoke(rng, n, 37, mr)
    _smoke(rng, 1024, 1, mr)                                       # large batch size


def test_output_channel_subblocks_and_remainders(level, rng):
    mr, nr = _tiles(level)
    for m in range(1, mr):                                         # output channel subblock
        _smoke(rng, nr, 19, m)
    _smoke(rng, nr, 19, 3 * mr)                                    # few output channels
    for m in (3 * mr + 1, 4 * mr - 1):                             # output channel remainder
        _smoke(rng, nr, 19, m)
    _smoke(rng, nr, 19, 1200)                                      # many output channels
    _smoke(rng, nr + 3, 300, 1201, bias=True)      # several tasks, ragged last MR group


def test_large_batch_split_into_batch_groups(level, rng):
    """A batch much larger than the channel count: tasks split the batch (each streams w,
    not all of x^T), the last group ragged."""
    mr, nr = _tiles(level)
    m, n = 2 * mr + 1, 40 * nr + 3
    _, blocks, groups, _ = _task_grid(m, -(-n // nr), mr, nr, 64, blocking(mr, nr)[1])
    assert groups > 1 and blocks * groups <= 2 * TASKS
    _smoke(rng, n, 29, m, bias=True)


def test_task_grid_moves_the_fewest_floats():
    # fc6 at batch 64: the weights dominate, so channel blocks only; a batch of 3136
    # against 256 channels: batch groups only.
    assert _task_grid(4096, 2, 6, 32, 214, 1182)[1:3] == (16, 1)
    assert _task_grid(256, 98, 6, 32, 214, 1182)[1:3] == (1, 16)


def test_algorithm_choice(level, rng):
    mr, nr = _tiles(level)
    w = uniform(rng, (10, 7), 0, 1)
    small = nnjit.explain(nnjit.fully_connected_output, uniform(rng, (1, 7), 0, 1), w)
    large = nnjit.explain(nnjit.fully_connected_output, uniform(rng, (nr, 7), 0, 1), w)
    assert (small.algorithm, large.algorithm) == ("gemv", "gemm")
    assert small.level.name == level
    half = nnjit.explain("fully_connected_inference", uniform(rng, (7,), 0, 1),
                         w.astype(np.float16))
    assert (half.operation, half.algorithm) == ("fully_connected_inference", "gemv_f16")


def test_inference_sizes_around_rows_and_vectors(level, rng):
    """Output channels around the GEMV block of ROWS rows, input channels around the
    vector width (scalar tails), float32 and float16 weights, with and without bias."""
    width = level_named(level).vector_floats
    for m in (1, ROWS - 1, ROWS, ROWS + 1, 3 * ROWS + 5):
        for k in (1, width - 1, width, 2 * width + 3, 100):
            x, w = uniform(rng, (k,), 0, 1), uniform(rng, (m, k), 0, 1)
            b = uniform(rng, (m,), 0, 1) if m % 2 else None
            for weights in (w, w.astype(np.float16)):
                out = np.full(m, np.nan, np.float32)
                assert nnjit.fully_connected_inference(x, weights, b, out=out) is out
                expected = reference.fully_connected_inference(x, weights, b)
                assert max_relative_error(expected, out) < TOLERANCE, (m, k, weights.dtype)


def test_half_weights_special_values(level):
    """IEEE half: subnormals, the largest normal, zeros, infinities and NaN widen exactly
    (the integer path of levels without F16C included). (The sign of a zero does not
    survive a sum that starts at +0.)"""
    bits = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF,
                     0x3555, 0xF000, 0x7C00, 0xFC00, 0x7E00, 0x0200, 0x5640, 0x1234,
                     0xABCD], np.uint16)
    w = bits.view(np.float16).reshape(-1, 1)
    out = nnjit.fully_connected_inference(np.ones(1, np.float32), w)
    np.testing.assert_array_equal(out, w[:, 0].astype(np.float32))
    # across a whole vector too (the vector conversion, not the scalar tail)
    x = np.zeros(64, np.float32)
    x[5] = 1
    wide = np.zeros((len(bits), 64), np.float16)
    wide[:, 5] = w[:, 0]
    np.testing.assert_array_equal(nnjit.fully_connected_inference(x, wide)[:10],
                                  w[:10, 0].astype(np.float32))


# --------------------------------------------------------------------------- models
# NNPACK's model layers (input channels, output channels); tolerances from its
# fully-connected-output and -inference tests (inference fc6 2e-5, all others 1e-5).
MODEL_LAYERS = {
    "alexnet.fc6": (12544, 4096), "alexnet.fc7": (4096, 4096), "alexnet.fc8": (4096, 1000),
    "overfeat.fc6": (36864, 3072), "overfeat.fc7": (3072, 4096), "overfeat.fc8": (4096, 1000),
    "vgg.fc6": (25088, 4096), "vgg.fc7": (4096, 4096), "vgg.fc8": (4096, 1000),
}


def _reference_chunked(x, w, bias=None):
    """float64 x @ w.T in blocks of weight rows (a whole float64 copy of fc6 is 0.9 GB)."""
    out = np.empty((x.shape[0], w.shape[0]))
    x64 = x.astype(np.float64)
    for o in range(0, w.shape[0], 512):
        out[:, o:o + 512] = reference.fully_connected_output(x64, w[o:o + 512],
                                                             None if bias is None
                                                             else bias[o:o + 512])
    return out


@pytest.mark.parametrize("layer", sorted(MODEL_LAYERS))
def test_model_layers(rng, layer):
    """Output at batch 4 (the GEMV path where a GEMM tile is wider) and 32 (the GEMM
    path), inference with float32 and float16 weights, at every level the host runs; the
    levels loop inside the test so that each layer's weights are generated once."""
    k, m = MODEL_LAYERS[layer]
    w = rng.random((m, k), dtype=np.float32)
    w16 = w.astype(np.float16)
    bias = rng.random(m, dtype=np.float32)
    x = rng.random((32, k), dtype=np.float32)
    expected = _reference_chunked(x, w, bias)
    expected16 = _reference_chunked(x[:1], w16)[0]
    inference_tolerance = 2e-5 if layer.endswith("fc6") else 1e-5
    for level in RUNNABLE:
        with nnjit.max_isa(level):
            for n in (4, 32):
                err = max_relative_error(expected[:n], _output(x[:n], w, bias))
                assert err < TOLERANCE, (level, n, err)
            out = np.full(m, np.nan, np.float32)
            nnjit.fully_connected_inference(x[0], w, bias, out=out)
            err = max_relative_error(expected[0], out)
            assert err < inference_tolerance, (level, "f32", err)
            nnjit.fully_connected_inference(x[0], w16, out=out)
            err = max_relative_error(expected16, out)
            assert err < inference_tolerance, (level, "f16", err)


# --------------------------------------------------------------------------- errors
def _untouched(call, error, out):
    before = out.copy()
    with pytest.raises(error) as info:
        call()
    np.testing.assert_array_equal(out, before)
    return str(info.value)


def test_output_argument_errors(rng):
    x, w, b = uniform(rng, (3, 5), 0, 1), uniform(rng, (4, 5), 0, 1), uniform(rng, (4,), 0, 1)
    out = np.full((3, 4), 7, np.float32)
    fc = nnjit.fully_connected_output
    cases = [
        (lambda: fc(x[0], w, out=out), errors.InvalidShape, "x must be 2-D"),
        (lambda: fc(x, w[0], out=out), errors.InvalidShape, "w must be 2-D"),
        (lambda: fc(x, w[:, :4], out=out), errors.InvalidShape, "w.shape[1] must be 5"),
        (lambda: fc(x, w, b[:3], out=out), errors.InvalidShape, "bias must have one value"),
        (lambda: fc(x, w, b[None], out=out), errors.InvalidShape, "bias must be 1-D"),
        (lambda: fc(x[:0], w, out=out), errors.InvalidBatchSize, "zero batch"),
        (lambda: fc(x[:, :0], w[:, :0], out=out), errors.InvalidInputChannels,
         "zero input channels"),
        (lambda: fc(x, w[:0], out=out), errors.InvalidOutputChannels, "zero output channels"),
        (lambda: fc(x.astype(np.float64), w, out=out), errors.InvalidType, "x must have dtype"),
        (lambda: fc(x, w.astype(np.float64), out=out), errors.InvalidType, "w must have dtype"),
        (lambda: fc(x, w.astype(np.float16), out=out), errors.InvalidType,
         "only by fully_connected_inference"),
        (lambda: fc(x, w, b.astype(np.float64), out=out), errors.InvalidType, "bias must have"),
        (lambda: fc(x.tolist(), w, out=out), errors.InvalidType, "x must be a numpy.ndarray"),
        (lambda: fc(x, w, out=out[:, :3]), errors.InvalidOutput, "out must have shape"),
        (lambda: fc(x, w, out=out.T.copy()), errors.InvalidOutput, "out must have shape"),
        (lambda: fc(x, w, out=out.astype(np.float64)), errors.InvalidType, "out must have"),
    ]
    for call, error, words in cases:
        assert words in _untouched(call, error, out)
    strided = np.full((3, 8), 7, np.float32)[:, ::2]
    with pytest.raises(errors.InvalidOutput, match="C-contiguous"):
        fc(x, w, out=strided)
    aliased = np.zeros(64, np.float32)
    with pytest.raises(errors.InvalidOutput, match="overlaps x"):
        fc(aliased[:15].reshape(3, 5), w, out=aliased[:12].reshape(3, 4))


def test_inference_argument_errors(rng):
    x, w, b = uniform(rng, (5,), 0, 1), uniform(rng, (4, 5), 0, 1), uniform(rng, (4,), 0, 1)
    out = np.full(4, 7, np.float32)
    fc = nnjit.fully_connected_inference
    cases = [
        (lambda: fc(x[None], w, out=out), errors.InvalidShape, "x must be 1-D"),
        (lambda: fc(x, w[0], out=out), errors.InvalidShape, "w must be 2-D"),
        (lambda: fc(x, w.astype(np.float16)[0], out=out), errors.InvalidShape, "w must be 2-D"),
        (lambda: fc(x[:4], w, out=out), errors.InvalidShape, "w.shape[1] must be 4"),
        (lambda: fc(x, w, b[:2], out=out), errors.InvalidShape, "bias must have one value"),
        (lambda: fc(x[:0], w[:, :0], out=out), errors.InvalidInputChannels, "zero input"),
        (lambda: fc(x, w[:0], out=out), errors.InvalidOutputChannels, "zero output"),
        (lambda: fc(x.astype(np.float64), w, out=out), errors.InvalidType, "x must have dtype"),
        (lambda: fc(x.astype(np.float16), w, out=out), errors.InvalidType, "x must have dtype"),
        (lambda: fc(x, w.astype(np.float64), out=out), errors.InvalidType,
         "float32 or float16"),
        (lambda: fc(x, w, b.astype(np.float16), out=out), errors.InvalidType, "bias must have"),
        (lambda: fc(x, w, out=out[:3]), errors.InvalidOutput, "out must have shape"),
        (lambda: fc(x, w, out=out[None]), errors.InvalidOutput, "out must have shape"),
        (lambda: fc(x, w, out=out.astype(np.float16)), errors.InvalidType, "out must have"),
    ]
    for call, error, words in cases:
        assert words in _untouched(call, error, out)


def test_inputs_are_not_modified_and_views_are_read_correctly(rng):
    x = uniform(rng, (6, 40), 0, 1)[:, ::2]           # non-contiguous views
    w = uniform(rng, (9, 20), 0, 1)
    w_view = np.asfortranarray(w)
    x_before, w_before = x.copy(), w.copy()
    expected = reference.fully_connected_output(x, w)
    assert max_relative_error(expected, nnjit.fully_connected_output(x, w_view)) < TOLERANCE
    assert max_relative_error(expected[0], nnjit.fully_connected_inference(x[0], w_view)) \
        < TOLERANCE
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, w_before)
    ro = w.copy()
    ro.flags.writeable = False
    assert max_relative_error(expected, nnjit.fully_connected_output(x, ro)) < TOLERANCE
