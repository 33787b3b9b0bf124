"""Every registered kernel compiles for every x86 level, runnable here or not, and the code
uses the registers its level promises. Would catch a Numba upgrade that breaks the per-level
targets (shared/design/isa-targets.md)."""
import re

import pytest

import nnjit
from nnjit.dispatch import registry
from nnjit.dispatch.isa import X86_LEVELS

# One entry per distinct builder: a builder registered under several (operation, algorithm)
# names (inference and training forward share one) compiles to the same code.
KERNELS = list({s.build: (s.operation, s.algorithm) for s in registry.specs()}.values())


def registers(asm):
    return {kind for kind in ("xmm", "ymm", "zmm") if re.search(rf"%{kind}\d", asm)}


x86_host_only = pytest.mark.skipif(nnjit.cpu_info().arch != "x86_64", reason="x86-64 host only")


@x86_host_only
@pytest.mark.parametrize("level", [lv.name for lv in X86_LEVELS])
@pytest.mark.parametrize("operation,algorithm", KERNELS)
def test_kernel_registers_match_level(operation, algorithm, level):
    asm = nnjit.inspect_asm(operation, level=level, algorithm=algorithm)
    used = registers(asm)
    fma = bool(re.search(r"\bvfn?m(add|sub)\d{3}[ps]s\b", asm))
    if level in ("generic", "sse4"):
        assert used == {"xmm"}, used
        assert not fma
    elif level in ("avx", "avx2"):
        assert "ymm" in used and "zmm" not in used, used
        assert fma == (level == "avx2" and registry.spec(operation, algorithm).multiply_adds)
    else:
        assert "zmm" in used, used
        assert fma == registry.spec(operation, algorithm).multiply_adds


@x86_host_only
def test_generic_level_has_no_vex_encoded_instructions():
    """SSE-only code: no VEX/EVEX ('v'-prefixed) vector instructions at all."""
    asm = nnjit.inspect_asm("softmax_output", level="generic")
    vex = {m for m in re.findall(r"^\s+(v[a-z0-9]+)\s", asm, re.M) if m != "vzeroupper"}
    assert not vex, sorted(vex)[:10]


# NEON and SVE: the two register files; the levels between differ only in extensions
# (fp16 arithmetic, dot products) that float32 kernels do not use.
def aarch64_cases():
    """(operation, algorithm, level) for NEON and SVE, marked ``cross``."""
    return [pytest.param(operation, algorithm, level, marks=pytest.mark.cross)
            for operation, algorithm in KERNELS for level in ("neon", "sve")]


# Kernels whose vector work is all explicit fixed-width register code (the kernel transform:
# 4 x 4 register transposes), with no loop left for LLVM's scalable vectoriser: at the sve
# level they are NEON code, as fixed-width vectors are on SVE hardware.
FIXED_WIDTH_ONLY = {("convolution_kernel_transform", "implicit_gemm")}


@pytest.mark.parametrize("operation,algorithm,level", aarch64_cases())
def test_aarch64_levels_compile_to_neon_or_sve(operation, algorithm, level):
    """Cross-compiled, never run: AArch64 code uses NEON v-registers (SVE z-registers on the
    sve level), fmla where the kernel multiplies and adds, and no x86 register at all."""
    asm = nnjit.inspect_asm(operation, level=level, algorithm=algorithm, arch="aarch64")
    neon = bool(re.search(r"\bv\d+\.(4s|2s|16b|8b|2d)\b", asm))
    sve = bool(re.search(r"\bz\d+\.[bhsd]\b", asm))
    assert neon or (level == "sve" and sve)
    if level == "sve" and (operation, algorithm) not in FIXED_WIDTH_ONLY:
        assert sve
    assert ("fmla" in asm) == registry.spec(operation, algorithm).multiply_adds
    assert not registers(asm)
