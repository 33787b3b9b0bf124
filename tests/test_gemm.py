"""The packed GEMM against float64 np.matmul, at every level the host runs.

NNPACK's metric (its fully-connected tests): max over elements of
|ref - out| / max(FLT_MIN, |ref|), inputs U(0, 1), tolerance 1e-5. The shapes cover
M, N, K of 1, sizes off every multiple of MR, NR (4..64) and KC, more than one K slice,
accumulation and B given transposed.
"""
import numpy as np
import pytest

from nnjit.dispatch.cpu import cpu_info
from nnjit.kernels.gemm import blocking, gemm, gemm_tile

FLT_MIN = np.finfo(np.float32).tiny
TOLERANCE = 1e-5

LEVELS = [level.name for level in cpu_info().runnable]

SHAPES = [  # (M, N, K)
    (1, 1, 1),
    (1, 37, 1),
    (1, 1, 300),
    (1, 200, 77),          # batch-1 fully connected
    (5, 1, 64),
    (7, 9, 3),
    (13, 33, 17),
    (33, 65, 129),
    (64, 64, 64),
    (97, 131, 600),        # more than one K slice for every level's KC
    (130, 70, 1100),
]


def relative_error(ref, out):
    return float(np.max(np.abs(ref - out) / np.maximum(FLT_MIN, np.abs(ref))))


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20160101)


def _check(level, m, n, k, rng, *, trans_b=False, accumulate=False):
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((n, k) if trans_b else (k, n), dtype=np.float32)
    ref = a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    out = None
    if accumulate:
        out = rng.random((m, n), dtype=np.float32)
        ref = ref + out
        out = out.copy()
    got = gemm(a, b, out, level=level, trans_b=trans_b, accumulate=accumulate)
    assert got.shape == (m, n) and got.dtype == np.float32
    err = relative_error(ref, got)
    assert err < TOLERANCE, (level, m, n, k, trans_b, accumulate, err)


@pytest.mark.parametrize("level", LEVELS)
def test_gemm(level, rng):
    for m, n, k in SHAPES:
        _check(level, m, n, k, rng)
    for m, n, k in SHAPES[::2]:
        _check(level, m, n, k, rng, trans_b=True)
        _check(level, m, n, k, rng, accumulate=True)
    _check(level, 97, 131, 600, rng, trans_b=True, accumulate=True)


def test_blocking_and_tiles():
    from nnjit.dispatch.isa import level_named

    for name in LEVELS:
        level = level_named(name)
        mr, nr = gemm_tile(level)
        assert nr % level.vector_floats == 0
        kc, mc, nc = blocking(mr, nr)
        assert kc % 2 == 0 and mc % mr == 0 and nc % nr == 0


def test_edge_cases(rng):
    level = LEVELS[-1]
    # K == 0: the product is zero (and accumulation leaves out unchanged).
    a = np.zeros((3, 0), np.float32)
    b = np.zeros((0, 4), np.float32)
    assert np.all(gemm(a, b, level=level) == 0)
    out = np.ones((3, 4), np.float32)
    assert np.all(gemm(a, b, out, level=level, accumulate=True) == 1)
    # Output views into a larger buffer are not written outside their rows.
    a = rng.random((10, 20), dtype=np.float32)
    b = rng.random((20, 7), dtype=np.float32)
    buffer = np.full((12, 7), -1.0, np.float32)
    gemm(a, b, buffer[1:11], level=level)
    assert np.all(buffer[0] == -1) and np.all(buffer[11] == -1)
    assert relative_error(a.astype(np.float64) @ b, buffer[1:11]) < TOLERANCE
    # Read-only inputs are accepted.
    a.flags.writeable = b.flags.writeable = False
    assert relative_error(a.astype(np.float64) @ b, gemm(a, b, level=level)) < TOLERANCE
    # A workspace too small for the product: the kernel allocates its own.
    from nnjit.dispatch import registry
    from nnjit.dispatch.isa import level_named

    c = np.empty((10, 7), np.float32)
    registry.variant("gemm", "packed", level_named(level))(
        a, b, c, False, False, np.empty(0, np.float32))
    assert relative_error(a.astype(np.float64) @ b, c) < TOLERANCE


def test_invalid_arguments():
    from nnjit.errors import InvalidArgument

    a = np.ones((2, 3), np.float32)
    with pytest.raises(InvalidArgument):
        gemm(a, np.ones((4, 2), np.float32))
    with pytest.raises(InvalidArgument):
        gemm(a, np.ones((3, 2), np.float32), np.empty((2, 3), np.float32))
    with pytest.raises(InvalidArgument):
        gemm(a, np.ones((3, 2), np.float32), accumulate=True)


def test_micro_kernel_assembly():
    """The host's best level: the hottest loop (the micro-kernel's k loop) keeps C in
    registers (no stores), fuses multiply-adds where the level has FMA, and uses the level's
    vector registers (zmm on avx512, no ymm/zmm on 128-bit levels)."""
    import re

    from nnjit.dispatch import registry

    level = cpu_info().runnable[-1]
    asm = registry.inspect_asm("gemm", level, "packed")
    lines = asm.splitlines()
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.match(r"^\.LBB\S+:$", line)}
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"\s+j\w+\s+(\.LBB\S+)$", line)
        if m and labels.get(m.group(1), i) < i:
            loops.append(lines[labels[m.group(1)]:i + 1])
    arithmetic = re.compile(r"\b(vfmadd\d+ps|v?mulps)\b")
    body = max(loops, key=lambda lp: sum(bool(arithmetic.search(x)) for x in lp))
    text = "\n".join(body)
    mr, nr = gemm_tile(level)
    assert len(arithmetic.findall(text)) % (mr * nr // level.vector_floats) == 0
    assert not re.search(r"^\s+v?mov\w*\s+%[xyz]mm\d+, [^%]*\(", text, re.M), text  # no stores
    if level.fma:
        assert "vfmadd" in text
    reg = {128: "xmm", 256: "ymm", 512: "zmm"}.get(level.vector_bits)
    if reg:
        assert f"%{reg}" in text
    if level.vector_bits == 128:
        assert "%ymm" not in asm and "%zmm" not in asm
