"""The one registry of kernels: the dispatcher, the tests and the benchmarks all read it.

A kernel is registered once, as a *builder*: a function of the ISA level that returns the
Python function to compile (closing over the level's tile sizes, which Numba then treats as
compile-time constants). The registry compiles a builder's function for a level on first
use, for the signatures the kernel declares, through that level's Numba target, and keeps
the result per (operation, algorithm, level); compiled code persists on disk between
processes (nnjit.dispatch.cache).
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from nnjit.dispatch.isa import IsaLevel

# Kernel modules register themselves on import; importing is deferred to first use.
KERNEL_MODULES = (
    "nnjit.kernels.relu",
    "nnjit.kernels.softmax",
    "nnjit.kernels.pooling",
    "nnjit.kernels.gemm",
    "nnjit.kernels.fully_connected",
    "nnjit.kernels.conv_gradients",
    "nnjit.kernels.conv_forward",
)

# fastmath flags for every kernel: reassociation and contraction (so reductions vectorise
# and multiply-adds fuse) but not 'nnan'/'ninf', which would let LLVM drop the -inf and NaN
# handling that pooling and softmax rely on.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


@dataclass(frozen=True)
class KernelSpec:
    operation: str                          # the public operation, e.g. "relu_output"
    algorithm: str                          # e.g. "direct", "implicit_gemm"
    build: Callable[[IsaLevel], Callable]   # level -> Python function to compile
    signatures: tuple                       # Numba signatures compiled for every level
    parallel: bool = True
    description: str = ""
    multiply_adds: bool = False             # has a*b+c the avx2/avx512 code must fuse (FMA)
    # workspace(level, *args) -> float32 elements of scratch the kernel needs for these
    # arguments, a function of the level, the thread count in effect and the arguments'
    # shapes and scalar values only (layers remember it per those); such a kernel takes a
    # trailing 1-D float32 workspace argument, which callers take from workspace_buffer()
    # (reused per thread: no page faults per call).
    workspace: Callable | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.operation, self.algorithm

    @property
    def options(self) -> dict:
        return {"parallel": self.parallel, "fastmath": set(FASTMATH), "nopython": True,
                "boundscheck": False}


_specs: dict[tuple[str, str], KernelSpec] = {}
_variants: dict[tuple[str, str, str, str], object] = {}
_compile_seconds: dict[tuple[str, str, str, str], float] = {}
# Assembly of variants that worker processes compiled (warmup(processes=...)): a variant
# loaded from the disk cache carries none, and inspect_asm would compile it again.
_assembly: dict[tuple[str, str, str, str], str] = {}
_lock = threading.RLock()
_loaded = False


def kernel(operation: str, algorithm: str, *, signatures, parallel=True, description="",
           multiply_adds=False, workspace=None):
    """Register a kernel builder (used as a decorator in nnjit/kernels)."""
    if not isinstance(signatures, (tuple, list)):
        signatures = (signatures,)

    def register(build):
        spec = KernelSpec(operation, algorithm, build, tuple(signatures), parallel,
                          description or (build.__doc__ or "").strip().split("\n")[0],
                          multiply_adds, workspace)
        with _lock:
            if spec.key in _specs and _specs[spec.key].build is not build:
                raise RuntimeError(f"kernel {spec.key} registered twice")
            _specs[spec.key] = spec
        return build

    return register


def with_globals(function, **extra):
    """``function`` with names added to its globals, for builders that hand a kernel
    level-specific helpers (intrinsics for the level's vector width, a generated micro-
    kernel). Not closure cells: Numba's disk-cache key pickles closure cells, and such
    helpers pickle differently in every process (a cache miss each time); globals are not in
    the key, and the variant name and the closure's constants already fix them."""
    import types as pytypes

    made = pytypes.FunctionType(function.__code__, dict(function.__globals__, **extra),
                                function.__name__, function.__defaults__, function.__closure__)
    made.__qualname__ = function.__qualname__
    made.__doc__ = function.__doc__
    made.__module__ = function.__module__
    return made


def helper(function, **options):
    """A kernel's helper (micro-kernel, packer, epilogue) as a Numba function that is never
    inlined and runs without reference counting: helpers take the kernel's arrays borrowed
    and allocate nothing, and with NRT each call increfs and decrefs its array arguments
    (atomic adds: a tenth of a small pack's time, and contended between threads that share
    the workspace). Each level compiles its own twin."""
    from numba import njit

    return njit(inline="never", _nrt=False, **options)(function)


def parallel_stage(function):
    """A parallel part that several kernels share (prange loops, allocations): a Numba
    function with the kernels' own options, re-jitted for each calling level like a
    helper, and compiled once per level for all of its callers."""
    from numba import njit

    return njit(parallel=True, fastmath=set(FASTMATH), boundscheck=False)(function)


def _load() -> None:
    global _loaded
    if not _loaded:
        with _lock:
            for module in KERNEL_MODULES:
                importlib.import_module(module)
            _loaded = True


def specs() -> tuple[KernelSpec, ...]:
    """Every registered kernel, in registration order."""
    _load()
    return tuple(_specs.values())


def spec(operation: str, algorithm: str) -> KernelSpec:
    _load()
    try:
        return _specs[operation, algorithm]
    except KeyError:
        from nnjit.errors import UnsupportedAlgorithm

        known = sorted(a for (op, a) in _specs if op == operation)
        raise UnsupportedAlgorithm(
            f"no kernel for operation {operation!r} with algorithm {algorithm!r}; "
            f"registered: {known or 'none'}") from None


def operations() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.operation for s in specs()))


def variant(operation: str, algorithm: str, level: IsaLevel):
    """The compiled kernel for (operation, algorithm, level); compiled (or loaded from the
    disk cache) on first use, exactly once even when several threads ask together. A builder
    registered under several names (inference and training forward share one) compiles once
    per level."""
    key = (operation, algorithm, level.arch, level.name)
    found = _variants.get(key)
    if found is not None:
        return found
    with _lock:
        found = _variants.get(key)
        if found is None:
            kernel_spec = spec(operation, algorithm)
            twin = next((_variants[k] for k in _variants if k[2:] == key[2:] and
                         _specs[k[:2]].build is kernel_spec.build and
                         _specs[k[:2]].signatures == kernel_spec.signatures), None)
            started = time.perf_counter()
            found = twin or _compile(kernel_spec, level, use_disk_cache=True)
            _variants[key] = found
            _compile_seconds[key] = time.perf_counter() - started
    return found


def _compile(kernel_spec: KernelSpec, level: IsaLevel, use_disk_cache: bool):
    from nnjit.dispatch.cache import KernelCache, cache_enabled
    from nnjit.dispatch.policy import start_thread_pool
    from nnjit.dispatch.targets import target_for

    start_thread_pool()      # compiling a prange kernel starts it: keep the OpenMP settings
    py_func = kernel_spec.build(level)
    options = kernel_spec.options
    dispatcher = target_for(level).jit(py_func, **options)
    if use_disk_cache and cache_enabled():
        build = kernel_spec.build
        name = f"{build.__module__.rsplit('.', 1)[-1]}.{build.__name__}-{level.arch}-{level.name}"
        dispatcher._cache = KernelCache(py_func, name, options)
    for signature in kernel_spec.signatures:
        dispatcher.compile(signature)
    dispatcher.disable_compile()     # a call with other types is a bug, not a new compile
    return dispatcher


_workspaces = threading.local()


WORKSPACE_ALIGNMENT = 64    # bytes: a cache line, and an AVX-512 vector


def workspace_buffer(floats: int):
    """A float32 scratch buffer of at least ``floats`` elements, reused by this thread,
    starting on a cache line: kernels lay packed panels and transposed rows out in whole
    lines from its start, and at NumPy's 16-byte alignment each vector load of them
    straddled two lines (mobilenet.pw14's x^T rows: 2-3% of the layer)."""
    floats = max(floats, 1)
    buffer = getattr(_workspaces, "buffer", None)
    if buffer is None or buffer.shape[0] < floats:
        buffer = _workspaces.buffer = aligned_empty(floats)
    return buffer[:floats]


def aligned_empty(floats: int):
    """An uninitialised 1-D float32 array starting on a cache line (WORKSPACE_ALIGNMENT)."""
    import numpy as np

    raw = np.empty(floats + WORKSPACE_ALIGNMENT // 4, dtype=np.float32)
    start = -raw.ctypes.data % WORKSPACE_ALIGNMENT // 4
    return raw[start:start + floats]


def compiled_variants() -> dict:
    """{(operation, algorithm, arch, level): seconds it took to compile or load}."""
    return dict(_compile_seconds)


def clear() -> None:
    """Forget compiled variants (they recompile, or reload from disk, on next use)."""
    with _lock:
        _variants.clear()
        _compile_seconds.clear()
        _assembly.clear()


def inspect_asm(operation: str, level=None, algorithm: str | None = None, *,
                arch: str | None = None) -> str:
    """Assembly of a kernel variant. ``level`` is a name or IsaLevel (default: in effect);
    levels the host cannot run compile too (never called), for checking code generation,
    and so do other architectures' levels (``arch="aarch64"`` on an x86-64 host)."""
    from nnjit.dispatch.isa import level_named
    from nnjit.dispatch.policy import get_isa

    if level is None:
        level = get_isa() if arch is None else level_named("generic", arch)
    elif not isinstance(level, IsaLevel):
        level = level_named(level, arch)
    if algorithm is None:
        algorithm = next(s.algorithm for s in specs() if s.operation == operation) \
            if operation in operations() else "?"
    from nnjit.dispatch.isa import host_arch

    dispatcher = None
    if level.arch == host_arch():
        dispatcher = variant(operation, algorithm, level)
        if sum(dispatcher.stats.cache_hits.values()):
            dispatcher = None           # loaded from the disk cache: it carries no assembly
            kept = _assembly.get((operation, algorithm, level.arch, level.name))
            if kept is not None:
                return kept
    if dispatcher is None:              # compile afresh, uncached, and never call it
        dispatcher = _compile(spec(operation, algorithm), level, use_disk_cache=False)
    return "\n".join(dispatcher.inspect_asm(sig) for sig in dispatcher.signatures)


def warmup(operations=None, levels=None, *, processes: int = 1, progress: bool = True) -> int:
    """Compile (or load from the disk cache) kernels ahead of their first call.

    ``operations``: names (default: all); ``levels``: names or IsaLevels (default: the level
    in effect). ``processes`` > 1: compile in that many worker processes first, into the
    disk cache, then load here. Numba compiles on one core: every kernel at every level
    took 470 s in one process, and loads in 2 s. Without the disk cache (NNJIT_CACHE=0)
    everything compiles here. Returns how many variants are ready."""
    from nnjit.dispatch.isa import level_named
    from nnjit.dispatch.policy import get_isa

    wanted = None if operations is None else {operations} if isinstance(operations, str) \
        else set(operations)
    chosen = [get_isa()] if levels is None else [
        lv if isinstance(lv, IsaLevel) else level_named(lv)
        for lv in ([levels] if isinstance(levels, (str, IsaLevel)) else levels)]
    todo = [(s, lv) for s in specs() if wanted is None or s.operation in wanted for lv in chosen]
    if wanted:
        unknown = wanted - {s.operation for s in specs()}
        if unknown:
            from nnjit.errors import InvalidArgument

            raise InvalidArgument(f"warmup(operations=...): unknown {sorted(unknown)}; "
                                  f"known: {list(globals()['operations']())}")
    from nnjit.layers.checks import positive_int

    if positive_int("processes", processes) > 1:
        _compile_in_processes(todo, processes, progress)
    for done, (s, lv) in enumerate(todo, 1):
        variant(s.operation, s.algorithm, lv)
        if progress:
            _progress(done, len(todo), f"{s.operation}/{s.algorithm}@{lv.name}")
    return len(todo)


def _compile_in_processes(todo, processes: int, progress: bool) -> None:
    """Fill the disk cache with the variants of ``todo`` not yet compiled here, in fresh
    (spawned) processes: one job per builder and level (inference and training forward
    share one), the convolutions (25-60 s a level) first so that the short ones fill in."""
    import multiprocessing

    from nnjit.dispatch.cache import cache_enabled
    from nnjit.dispatch.isa import host_arch

    if not cache_enabled():
        return
    groups: dict[tuple, list] = {}      # builder and level -> the todo keys it serves
    for s, lv in todo:
        key = (s.operation, s.algorithm, lv.arch, lv.name)
        if lv.arch == host_arch() and key not in _variants:
            groups.setdefault((s.build, s.signatures, lv.arch, lv.name), []).append(key)
    jobs = sorted((keys[0] for keys in groups.values()),
                  key=lambda key: not key[0].startswith("convolution"))
    if len(jobs) < 2:
        return
    served = {keys[0]: keys for keys in groups.values()}
    with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
        for done, (job, assembly) in enumerate(pool.imap_unordered(_compile_job, jobs), 1):
            if assembly is not None:
                _assembly.update(dict.fromkeys(served[job], assembly))
            if progress:
                _progress(done, len(jobs), f"compiled in {processes} processes")


def _compile_job(key):
    """A worker's job: compile one variant into the disk cache; (key, its assembly), or
    (key, None) where it came from the cache or failed (the calling process then compiles
    it again, and raises there)."""
    from nnjit.dispatch.isa import level_named

    operation, algorithm, arch, level_name = key
    try:
        compiled = variant(operation, algorithm, level_named(level_name, arch))
    except Exception:           # noqa: BLE001 (raised again where it is compiled again)
        return key, None
    if sum(compiled.stats.cache_hits.values()):
        return key, None
    return key, "\n".join(compiled.inspect_asm(sig) for sig in compiled.signatures)


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<48}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
