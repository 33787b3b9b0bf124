"""Which ISA level is in effect, and how many threads kernels use.

The level in effect is the host's best runnable level, capped by (innermost wins) a
``max_isa()`` context, ``set_max_isa()``, or the NNJIT_MAX_ISA environment variable (read
at the first call). A cap is clamped to what the host runs, never raised above it (oneDNN's
ONEDNN_MAX_CPU_ISA semantics); an unknown name is an error that lists the valid ones.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading

from nnjit.dispatch.cpu import cpu_info
from nnjit.dispatch.isa import IsaLevel, level_named

_api_cap: str | None = None
_context_cap: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nnjit_max_isa", default=None)
_lock = threading.Lock()


def _checked_name(name: str) -> str:
    return level_named(name).name        # raises InvalidIsaLevel for unknown names


def set_max_isa(name: str | None) -> None:
    """Cap the ISA level for every later call in this process (None removes the cap)."""
    global _api_cap
    checked = None if name is None else _checked_name(name)
    with _lock:
        _api_cap = checked


@contextlib.contextmanager
def max_isa(name: str):
    """Cap the ISA level inside a ``with`` block (this thread / async context only)."""
    token = _context_cap.set(_checked_name(name))
    try:
        yield get_isa()
    finally:
        _context_cap.reset(token)


_environment: tuple[str | None, str] | None = None


def _environment_cap() -> tuple[str | None, str]:
    """NNJIT_MAX_ISA's level and its source, read at the first call (as oneDNN reads
    ONEDNN_MAX_CPU_ISA): os.environ's lookup took 1 us warm, 5-10 us right after a large
    kernel, on every call. An unknown name raises at every call until the process ends."""
    global _environment
    if _environment is None:
        env = os.environ.get("NNJIT_MAX_ISA", "").strip()
        _environment = (_checked_name(env), f"NNJIT_MAX_ISA={env}") if env else (None, "")
    return _environment


def effective_level() -> tuple[IsaLevel, str]:
    """The level calls run at now, and why."""
    info = cpu_info()
    best = info.best_level
    cap, source = _context_cap.get(), "max_isa() context"
    if cap is None:
        cap, source = _api_cap, "set_max_isa()"
    if cap is None:
        cap, source = _environment or _environment_cap()
    if cap is None:
        return best, f"host's best runnable level ({info.llvm_cpu_name})"
    capped = level_named(cap)
    if capped.rank >= best.rank:
        why = f"cap {capped.name!r} from {source}, clamped to the host's best"
        return best, why if capped.rank > best.rank else f"capped by {source}"
    return capped, f"capped by {source}"


def get_isa() -> IsaLevel:
    """The ISA level in effect for calls made now."""
    return effective_level()[0]


def isa_levels() -> tuple[IsaLevel, ...]:
    """Every level of the host's architecture, least capable first (runnable or not)."""
    from nnjit.dispatch.isa import levels

    return levels()


_num_threads: int | None = None


def set_num_threads(n: int) -> None:
    """Threads every later kernel launch uses (1 .. Numba's NUMBA_NUM_THREADS)."""
    import numba

    from nnjit.errors import InvalidArgument

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise InvalidArgument(f"set_num_threads(n={n!r}): n must be an int in 1.."
                              f"{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS)")
    global _num_threads
    _num_threads = n


def get_num_threads() -> int:
    if _num_threads:
        return _num_threads
    import numba

    return numba.config.NUMBA_NUM_THREADS


_pool_started = False
_launch_count = None        # reads this thread's Numba launch count, once the pool is up


def start_thread_pool() -> None:
    """Start Numba's thread pool (once), leaving the calling thread's OpenMP settings as
    they were. Numba's OpenMP layer starts with omp_set_num_threads(NUMBA_NUM_THREADS) and
    nested parallelism on whichever OpenMP runtime is loaded globally, which is PyTorch's
    once torch is imported: a torch.set_num_threads(1) (or OMP_NUM_THREADS=1) made before
    nnjit's first call silently became every core for torch (measured: its conv2d went
    from one core to two after one nnjit call)."""
    global _pool_started, _launch_count
    if _pool_started:
        return
    import ctypes

    import numba

    with _lock:
        if _pool_started:
            return
        omp = ctypes.CDLL(None) if os.name == "posix" else None
        saved = None
        if omp is not None and hasattr(omp, "omp_get_max_threads"):
            saved = omp.omp_get_max_threads(), omp.omp_get_max_active_levels()
        numba.get_num_threads()                 # starts the pool
        if saved is not None:
            omp.omp_set_num_threads(saved[0])
            omp.omp_set_max_active_levels(saved[1])
        # numba.get_num_threads() takes Numba's two start-up locks on every call (1.3 us
        # of each layer call's 10); with the pool up, its layer's own getter is the answer
        from numba.np.ufunc import parallel
        _launch_count = getattr(parallel, "_get_num_threads", None) or numba.get_num_threads
        _pool_started = True


def apply_num_threads() -> int:
    """Make this thread's Numba launches use the configured count (Numba's is per thread)."""
    if not _pool_started:
        start_thread_pool()
    n = get_num_threads()
    if _launch_count() != n:
        import numba

        numba.set_num_threads(n)
    return n
