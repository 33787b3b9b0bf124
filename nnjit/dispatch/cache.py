"""Where compiled kernels persist between processes, and how their entries are keyed.

Numba's own cache keys an entry by signature, the codegen's cpu name and features, and the
kernel's bytecode. nnjit adds the level, the jit options (Numba issue 6845: variants that
differ only in options collided), a digest of nnjit's own source, because a kernel's
bytecode does not change when a helper it calls does, and the constants a build bakes in
(cache sizes, tuning overrides).
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching

import nnjit


def cache_enabled() -> bool:
    return os.environ.get("NNJIT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """NNJIT_CACHE_DIR, else NUMBA_CACHE_DIR/nnjit, else the user cache folder."""
    if os.environ.get("NNJIT_CACHE_DIR"):
        return Path(os.environ["NNJIT_CACHE_DIR"]).expanduser()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser() / "nnjit"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnjit"


@functools.cache
def source_digest() -> str:
    """A digest of every .py file of the installed nnjit package."""
    root = Path(nnjit.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_constants() -> tuple:
    """What kernels bake in as constants besides their source: the host's cache sizes
    (NNPACK's blocking budgets), its vendor (gemm.gemm_tile's AVX-512
    tile, conv_gradients.paired_rows_deep) and the GEMM
    tuning overrides. A cache folder shared by hosts with other caches or vendors, or a
    run with another NNJIT_GEMM_TILE, must not load kernels built for those (their tiles
    would disagree with the workspace the layer allocates)."""
    from nnjit.dispatch.cpu import cpu_info

    info = cpu_info()
    return (info.l1d_bytes, info.l1d_shared_by, info.l2_bytes, info.l2_shared_by,
            info.l3_bytes, info.vendor, os.environ.get("NNJIT_GEMM_TILE", "").strip(),
            os.environ.get("NNJIT_GEMM_KC", "").strip())


class _Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(cache_dir() / self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file) if os.path.exists(py_file) else None


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class KernelCache(caching.FunctionCache):
    """Numba's function cache with nnjit's folder, file names and index key."""

    _impl_class = _Impl

    def __init__(self, py_func, variant_name: str, options: dict):
        super().__init__(py_func)
        options_text = repr(sorted((name, sorted(value) if isinstance(value, (set, frozenset))
                                    else value) for name, value in options.items()))
        self._variant_key = (variant_name, options_text, source_digest(), build_constants())
        # One index file per variant, so levels never rewrite each other's index.
        self._cache_file = caching.IndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=f"{variant_name}-{self._impl.filename_base}",
            source_stamp=self._impl.locator.get_source_stamp())

    def _index_key(self, sig, codegen):
        return super()._index_key(sig, codegen) + (self._variant_key,)
