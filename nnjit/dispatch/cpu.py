"""Host CPU detection, computed once: ncnn's cpu_support_* surface in Python.

A feature counts only when py-cpuinfo's flags and LLVM's host feature list agree, so a VM
that advertises a feature its hypervisor does not enable never gets a level that would
crash. Cache sizes come from Linux sysfs (with how many logical cores share each cache),
falling back to py-cpuinfo's figures.
"""
from __future__ import annotations

import functools
import glob
import os
import threading
from dataclasses import dataclass, field

from nnjit.dispatch.isa import IsaLevel, host_arch, levels

# py-cpuinfo spells some features differently from LLVM (LLVM spelling -> cpuinfo flag).
_CPUINFO_SPELLING = {
    "sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "lzcnt": "abm", "bmi": "bmi1",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "neon": "asimd",
    "fullfp16": "asimdhp", "dotprod": "asimddp",
}
# The names cpu_supports() answers to (public spelling -> LLVM spelling).
_PUBLIC_NAMES = {
    "sse2": "sse2", "sse3": "sse3", "ssse3": "ssse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2",
    "popcnt": "popcnt", "avx": "avx", "fma": "fma", "f16c": "f16c", "avx2": "avx2",
    "bmi1": "bmi", "bmi2": "bmi2", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16",
    "asimd": "neon", "neon": "neon", "asimdhp": "fullfp16", "asimddp": "dotprod", "sve": "sve",
}


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    vendor: str
    brand: str
    llvm_cpu_name: str
    llvm_features: str              # LLVM's host feature string (+name / -name)
    flags: frozenset[str]           # py-cpuinfo's flags, as reported
    features: frozenset[str]        # LLVM-spelled features both sources agree on
    disagreements: frozenset[str]   # features only one of the two sources reports
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int
    l1d_shared_by: int              # logical cores sharing one such cache
    l2_shared_by: int
    l3_shared_by: int
    logical_cores: int
    runnable: tuple[IsaLevel, ...] = field(repr=False)   # levels this host runs, in order
    why_not: dict = field(repr=False, compare=False)     # level name -> missing features

    @property
    def best_level(self) -> IsaLevel:
        return self.runnable[-1]


def _llvm_host() -> tuple[str, str, frozenset[str]]:
    import llvmlite.binding as ll

    name = ll.get_host_cpu_name()
    try:
        feature_map = ll.get_host_cpu_features()
    except RuntimeError:       # LLVM cannot tell on this platform
        return name, "", frozenset()
    return name, feature_map.flatten(), frozenset(k for k, on in feature_map.items() if on)


def _cpuinfo_record() -> dict:
    """py-cpuinfo's record. Its public get_cpu_info() spawns a process (about 1 s); on
    Linux its /proc/cpuinfo reader gives the same flags in milliseconds, so try that first."""
    import cpuinfo

    fast = getattr(getattr(cpuinfo, "cpuinfo", None), "_get_cpu_info_from_proc_cpuinfo", None)
    if fast is not None and os.path.exists("/proc/cpuinfo"):
        try:
            record = fast()
            if record.get("flags"):
                return record
        except Exception:        # a private helper: fall back to the public API
            pass
    return cpuinfo.get_cpu_info()


def _sysfs_caches() -> dict[int, tuple[int, int]]:
    """{level: (bytes, logical cores sharing it)} for cpu0's data/unified caches."""
    found = {}
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip().upper()
            scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
            size = int(text.rstrip("KMG")) * scale
            with open(os.path.join(index, "shared_cpu_list")) as f:
                shared = _count_cpu_list(f.read())
        except (OSError, ValueError):
            continue
        found[level] = (size, shared)
    return found


def _count_cpu_list(text: str) -> int:
    count = 0
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            count += int(hi) - int(lo) + 1
        elif part:
            count += 1
    return max(count, 1)


def llvm_spelling(flags) -> frozenset[str]:
    """py-cpuinfo's flags, with LLVM's names added where the two spell a feature apart."""
    return frozenset(flags) | {llvm for llvm, cpu in _CPUINFO_SPELLING.items() if cpu in flags}


def relevant_features(arch: str) -> frozenset[str]:
    """The features nnjit decides anything by: the levels' requirements, cpu_supports()'s."""
    return frozenset().union(*(level.requires for level in levels(arch))) | frozenset(
        _PUBLIC_NAMES.values())


def _runnable(features: frozenset[str], arch: str):
    runnable, why_not = [], {}
    for level in levels(arch):
        missing = sorted(level.requires - features)
        if missing:
            why_not[level.name] = missing
        elif not why_not:          # levels are cumulative: stop at the first gap
            runnable.append(level)
        else:
            why_not[level.name] = [f"needs level {next(iter(why_not))}"]
    return tuple(runnable), why_not


_lock = threading.Lock()


@functools.cache
def _detect() -> CpuInfo:
    arch = host_arch()
    llvm_name, llvm_features, llvm_on = _llvm_host()
    record = _cpuinfo_record()
    flags = frozenset(str(f).lower() for f in record.get("flags", ()))
    # Translate cpuinfo's flags to LLVM spelling, then keep what both report.
    from_cpuinfo = llvm_spelling(flags)
    relevant = relevant_features(arch)
    agreed = frozenset(f for f in relevant if f in llvm_on and f in from_cpuinfo)
    if arch == "x86_64":
        agreed |= {"sse2"}          # part of x86-64 itself
    disagreements = frozenset(f for f in relevant if (f in llvm_on) != (f in from_cpuinfo)
                              and f != "sse2")
    caches = _sysfs_caches()

    def cache(level, key):
        if level in caches:
            return caches[level]
        return int(record.get(key) or 0), 1

    l1, l2, l3 = cache(1, "l1_data_cache_size"), cache(2, "l2_cache_size"), cache(3, "l3_cache_size")
    runnable, why_not = _runnable(agreed, arch)
    return CpuInfo(
        arch=arch,
        vendor=str(record.get("vendor_id_raw", "unknown")),
        brand=str(record.get("brand_raw", "unknown")),
        llvm_cpu_name=llvm_name,
        llvm_features=llvm_features,
        flags=flags,
        features=agreed,
        disagreements=disagreements,
        l1d_bytes=l1[0], l2_bytes=l2[0], l3_bytes=l3[0],
        l1d_shared_by=l1[1], l2_shared_by=l2[1], l3_shared_by=l3[1],
        logical_cores=os.cpu_count() or 1,
        runnable=runnable,
        why_not=why_not,
    )


_detected: CpuInfo | None = None


def cpu_info() -> CpuInfo:
    """The host's CPU record: computed on first call, then shared (thread-safe; every
    layer call reads it, so later calls take no lock)."""
    global _detected
    if _detected is None:
        with _lock:
            _detected = _detect()
    return _detected


def cpu_supports(name: str) -> bool:
    """Whether the host supports a feature (sse4_2, avx, fma, f16c, avx2, avx512f, avx512bw,
    avx512dq, avx512vl, avx512_vnni, avx512_bf16, asimd, asimdhp, asimddp, sve, ...)."""
    key = str(name).strip().lower()
    if key not in _PUBLIC_NAMES:
        from nnjit.errors import InvalidArgument

        raise InvalidArgument(f"cpu_supports(name={name!r}): unknown feature; known: "
                              + ", ".join(sorted(_PUBLIC_NAMES)))
    return _PUBLIC_NAMES[key] in cpu_info().features
