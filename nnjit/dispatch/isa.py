"""The closed, ordered table of ISA levels nnjit compiles for.

Every kernel is compiled once per level: the level fixes the LLVM cpu name and feature
string (what the code may use), the CPU features a host needs to run that code, and the
vector width from which kernels take their tile sizes. Levels are ordered from least to
most capable within an architecture; a host runs a prefix of its architecture's table.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class IsaLevel:
    name: str                   # the public name: NNJIT_MAX_ISA, set_max_isa(), explain()
    arch: str                   # "x86_64" or "aarch64"
    rank: int                   # position in the arch's table; higher means more capable
    llvm_cpu: str               # LLVM target cpu name
    llvm_features: str          # LLVM feature string added to (or taken from) that cpu
    requires: frozenset[str]    # host features (LLVM spelling) the code may use
    vector_bits: int            # widest vector register the code uses
    fma: bool                   # fused multiply-add available
    description: str

    @property
    def vector_floats(self) -> int:
        """float32 lanes in one vector register."""
        return self.vector_bits // 32

    @property
    def vector_registers(self) -> int:
        """Architectural vector registers: 32 with AVX-512 and on AArch64, else 16."""
        return 32 if self.vector_bits >= 512 or self.arch == "aarch64" else 16

    def __str__(self) -> str:
        return self.name


def _x86(rank, name, cpu, features, requires, bits, fma, description):
    return IsaLevel(name, "x86_64", rank, cpu, features, frozenset(requires.split()),
                    bits, fma, description)


def _arm(rank, name, features, requires, bits, fma, description):
    return IsaLevel(name, "aarch64", rank, "generic", features, frozenset(requires.split()),
                    bits, fma, description)


_SSE4 = "sse3 ssse3 sse4.1 sse4.2 popcnt cx16"
_AVX2 = _SSE4 + " avx avx2 fma f16c bmi bmi2 lzcnt movbe"

# x86-64: psABI levels name the required feature sets exactly (a named cpu such as
# "haswell" would imply more). x86-64-v4 is tuned to prefer 256-bit vectors, so the
# avx512 level turns that preference off to get zmm code (shared/design/isa-targets.md).
X86_LEVELS = (
    _x86(0, "generic", "x86-64", "", "", 128, False, "SSE2 baseline of every x86-64 CPU"),
    _x86(1, "sse4", "x86-64-v2", "", _SSE4, 128, False, "x86-64-v2: SSE4.2, POPCNT"),
    _x86(2, "avx", "x86-64-v2", "+avx", _SSE4 + " avx", 256, False,
         "x86-64-v2 plus 256-bit AVX, no FMA"),
    _x86(3, "avx2", "x86-64-v3", "", _AVX2, 256, True, "x86-64-v3: AVX2, FMA3, F16C"),
    _x86(4, "avx512", "x86-64-v4", "-prefer-256-bit",
         _AVX2 + " avx512f avx512bw avx512cd avx512dq avx512vl", 512, True,
         "x86-64-v4: AVX-512 F/BW/CD/DQ/VL, zmm registers"),
)

AARCH64_LEVELS = (
    _arm(0, "generic", "", "", 128, True, "Armv8-A baseline"),
    _arm(1, "neon", "+neon", "neon", 128, True, "Advanced SIMD (ASIMD)"),
    _arm(2, "neon_fp16", "+neon,+fullfp16", "neon fullfp16", 128, True,
         "ASIMD with half-precision arithmetic"),
    _arm(3, "neon_dotprod", "+neon,+fullfp16,+dotprod", "neon fullfp16 dotprod", 128, True,
         "ASIMD with fp16 and int8 dot product"),
    _arm(4, "sve", "+neon,+fullfp16,+dotprod,+sve", "neon fullfp16 dotprod sve", 128, True,
         "Scalable Vector Extension (z registers; tiles sized for 128-bit)"),
)

LEVELS_BY_ARCH = {"x86_64": X86_LEVELS, "aarch64": AARCH64_LEVELS}


def host_arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return machine


def levels(arch: str | None = None) -> tuple[IsaLevel, ...]:
    """The levels of an architecture (default: the host's), least capable first."""
    arch = arch or host_arch()
    try:
        return LEVELS_BY_ARCH[arch]
    except KeyError:
        # An unknown architecture still gets a level: compile for the host as Numba would.
        return (IsaLevel("generic", arch, 0, "", "", frozenset(), 128, False,
                         "host defaults (no ISA table for this architecture)"),)


def level_named(name: str, arch: str | None = None) -> IsaLevel:
    """Look a level up by name (case-insensitive); unknown names list the valid ones."""
    from nnjit.errors import InvalidIsaLevel

    table = levels(arch)
    wanted = str(name).strip().lower()
    for level in table:
        if level.name == wanted:
            return level
    raise InvalidIsaLevel(
        f"unknown ISA level {name!r}: valid levels for {table[0].arch} are "
        + ", ".join(level.name for level in table))
