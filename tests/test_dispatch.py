"""CPU detection, the ISA level table, the cap (API, context manager, environment), explain,
warmup and threads."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import nnjit
from nnjit.dispatch import registry
from nnjit.dispatch.cpu import cpu_info


def test_cpu_info_is_computed_once_and_consistent():
    info = nnjit.cpu_info()
    assert info is nnjit.cpu_info()
    assert info.runnable and info.runnable[0].name == "generic"
    assert [lv.rank for lv in info.runnable] == list(range(len(info.runnable)))
    for level in info.runnable:
        assert level.requires <= info.features
    assert info.l1d_bytes > 0 and info.l2_bytes > 0 and info.logical_cores >= 1


def test_cpu_info_is_thread_safe():
    results = []
    threads = [threading.Thread(target=lambda: results.append(nnjit.cpu_info())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is results[0] for r in results)


def test_features_need_both_cpuinfo_and_llvm():
    import llvmlite.binding as ll

    llvm = {k for k, on in ll.get_host_cpu_features().items() if on}
    info = cpu_info()
    assert info.features - {"sse2"} <= llvm
    for name in ("sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512dq",
                 "avx512vl", "avx512_vnni", "avx512_bf16", "asimd", "asimdhp", "asimddp", "sve"):
        assert isinstance(nnjit.cpu_supports(name), bool)
    with pytest.raises(nnjit.InvalidArgument, match="unknown feature"):
        nnjit.cpu_supports("avx9000")


def test_public_cpuinfo_agrees_with_fast_path():
    """The /proc/cpuinfo fast path and py-cpuinfo's public (CPUID, ~1 s) path agree on every
    feature nnjit decides anything by."""
    import cpuinfo

    from nnjit.dispatch.cpu import llvm_spelling, relevant_features

    info = cpu_info()
    slow = llvm_spelling({str(f).lower() for f in cpuinfo.get_cpu_info().get("flags", [])})
    fast = llvm_spelling(info.flags)
    relevant = relevant_features(info.arch) - {"sse2"}
    assert {f for f in relevant if f in slow} == {f for f in relevant if f in fast}


def test_level_table_is_ordered_and_closed():
    levels = nnjit.isa_levels()
    assert [lv.rank for lv in levels] == list(range(len(levels)))
    for lower, higher in zip(levels, levels[1:]):
        assert lower.requires <= higher.requires
    if cpu_info().arch == "x86_64":
        assert [lv.name for lv in levels] == ["generic", "sse4", "avx", "avx2", "avx512"]
        assert nnjit.isa_levels()[-1].llvm_features == "-prefer-256-bit"


def test_unknown_level_names_are_errors_that_list_valid_ones():
    with pytest.raises(nnjit.InvalidIsaLevel, match="valid levels .*generic"):
        nnjit.set_max_isa("avx1024")
    with pytest.raises(ValueError):
        with nnjit.max_isa("pentium"):
            pass


def test_set_max_isa_caps_and_takes_effect_on_next_call():
    best = cpu_info().best_level
    x = np.ones((2, 8), dtype=np.float32)
    try:
        nnjit.set_max_isa("generic")
        nnjit.softmax_output(x)
        assert nnjit.explain().level.name == "generic"
        assert "set_max_isa" in nnjit.explain().level_reason
        nnjit.set_max_isa(None)
        nnjit.softmax_output(x)
        assert nnjit.explain().level == best
    finally:
        nnjit.set_max_isa(None)


def test_cap_above_host_clamps_to_host_best():
    best = cpu_info().best_level
    with nnjit.max_isa(nnjit.isa_levels()[-1].name) as level:
        assert level == best


def test_context_manager_nests_and_restores():
    runnable = cpu_info().runnable
    with nnjit.max_isa("generic"):
        assert nnjit.get_isa().name == "generic"
        with nnjit.max_isa(runnable[-1].name):
            assert nnjit.get_isa() == runnable[-1]
        assert nnjit.get_isa().name == "generic"
    assert nnjit.get_isa() == runnable[-1]


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_environment_variable_caps_in_a_new_process():
    lowest = cpu_info().runnable[0].name
    out = run_python("""
        import numpy as np, nnjit
        nnjit.relu_output(np.ones(4, np.float32))
        d = nnjit.explain()
        print(d.level.name, '|', d.level_reason)
    """, NNJIT_MAX_ISA=lowest.upper())
    level, reason = out.split(" | ")
    assert level == lowest and "NNJIT_MAX_ISA" in reason


def test_unknown_environment_value_is_an_error_naming_the_levels():
    env = dict(os.environ, NNJIT_MAX_ISA="avx1024")
    result = subprocess.run([sys.executable, "-c",
                             "import numpy as np, nnjit; nnjit.relu_output(np.ones(4, np.float32))"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "InvalidIsaLevel" in result.stderr and "generic" in result.stderr


def test_explain_without_running_and_after_running(rng=np.random.default_rng(1)):
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    decision = nnjit.explain("max_pooling_output", x, 2)
    assert decision.operation == "max_pooling_output" and decision.algorithm == "direct"
    assert decision.level == nnjit.get_isa()
    assert "pool=(2, 2)" in str(decision)
    nnjit.relu_output(x)
    assert nnjit.explain().operation == "relu_output"
    assert nnjit.explain(nnjit.softmax_output, x[0, 0]).operation == "softmax_output"
    with pytest.raises(nnjit.InvalidArgument, match="not a layer"):
        nnjit.explain("conv9d", x)


def test_explain_is_per_thread():
    x = np.ones(4, np.float32)
    nnjit.relu_output(x)
    seen = []
    t = threading.Thread(target=lambda: seen.append(nnjit.explain()))
    t.start()
    t.join()
    assert seen == [None] and nnjit.explain().operation == "relu_output"


def test_warmup_compiles_requested_variants(capsys):
    lowest = cpu_info().runnable[0]
    count = nnjit.warmup(["relu_output", "softmax_output"], [lowest.name])
    assert count == 2
    compiled = registry.compiled_variants()
    assert ("relu_output", "direct", lowest.arch, lowest.name) in compiled
    assert "2/2" in capsys.readouterr().err
    with pytest.raises(nnjit.InvalidArgument, match="unknown"):
        nnjit.warmup(["conv9d"])
    with pytest.raises(nnjit.InvalidArgument, match="processes must be >= 1"):
        nnjit.warmup(["relu_output"], processes=0)
    with pytest.raises(nnjit.InvalidType, match="processes must be an int"):
        nnjit.warmup(["relu_output"], processes="2")


def test_threads_setting_is_used_and_validated():
    before = nnjit.get_num_threads()
    try:
        nnjit.set_num_threads(1)
        nnjit.relu_output(np.ones(100, np.float32))
        assert nnjit.explain().threads == 1
    finally:
        nnjit.set_num_threads(before)
    for bad in (0, -1, 10_000, 1.5, True):
        with pytest.raises(nnjit.NnjitError):
            nnjit.set_num_threads(bad)



def test_workspace_buffer_starts_on_a_cache_line():
    """Each size, growing or not, gets a buffer of at least that many floats whose first
    float sits on a 64-byte line; a smaller request reuses the same memory."""
    def run():
        seen = []
        for floats in (1, 5, 1000, 123_457, 17, 2_000_001):
            buffer = registry.workspace_buffer(floats)
            assert buffer.dtype == np.float32 and buffer.shape == (floats,)
            assert buffer.ctypes.data % registry.WORKSPACE_ALIGNMENT == 0, floats
            seen.append(buffer)
        assert seen[4].ctypes.data == seen[3].ctypes.data      # 17 floats: reused

    errors = []

    def in_thread():
        try:
            run()
        except AssertionError as error:
            errors.append(error)

    thread = threading.Thread(target=in_thread)     # a fresh thread: its own, empty buffer
    thread.start()
    thread.join()
    assert not errors, errors
    run()


def test_workspace_sizes_are_remembered_per_shape_and_thread_count(monkeypatch):
    """A layer call works its workspace size out once per (kernel, level, thread count,
    argument shapes and scalars), then reuses it; any change of those recomputes it, and
    what it returns is the kernel's own size."""
    from nnjit.layers import plan

    monkeypatch.setattr(plan, "_workspace_sizes", {})
    calls = []

    def size(level, x, w, stride):
        calls.append((x.shape, stride))
        return x.size * stride + w.shape[0]

    level = nnjit.get_isa()
    x, w = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)

    def floats(threads, x=x, stride=1):
        return plan._workspace_floats(size, "op", "alg", level, threads, (x, w, stride))
    assert floats(2) == 6 + 4 and floats(2) == 10 and len(calls) == 1
    assert floats(1) == 10 and len(calls) == 2                  # another thread count
    assert floats(2, stride=3) == 22 and len(calls) == 3        # another scalar
    assert floats(2, x=np.ones((5, 3), np.float32)) == 19 and len(calls) == 4
    assert floats(2, x=np.zeros((2, 3), np.float32)) == 10 and len(calls) == 4  # same shape


def test_first_call_keeps_the_callers_openmp_settings():
    """Numba's OpenMP layer starts by setting the thread count and nesting of the OpenMP
    runtime loaded globally (PyTorch's, in a torch program): nnjit puts them back."""
    out = run_python("""
        import ctypes, numpy as np
        try:
            omp = ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            raise SystemExit(print("no libgomp"))
        omp.omp_set_num_threads(1)
        omp.omp_set_max_active_levels(1)
        import nnjit
        nnjit.relu_output(np.ones(4096, np.float32))
        print(omp.omp_get_max_threads(), omp.omp_get_max_active_levels(),
              nnjit.explain().threads)
    """, NUMBA_THREADING_LAYER="omp", NUMBA_NUM_THREADS="3")
    if out == "no libgomp":
        pytest.skip("no GNU OpenMP runtime to load")
    assert out == "1 1 3"

def test_concurrent_first_calls_compile_once(monkeypatch):
    """Many threads asking for a not-yet-compiled variant get the same compiled object."""
    level = cpu_info().runnable[0]
    # A registry of its own: the variants other tests compiled stay in memory (with their
    # assembly, which test_isa_codegen reads instead of compiling every kernel again).
    monkeypatch.setattr(registry, "_variants", {})
    monkeypatch.setattr(registry, "_compile_seconds", {})
    got = []
    barrier = threading.Barrier(4)

    def ask():
        barrier.wait()
        got.append(registry.variant("max_pooling_output", "direct", level))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(g is got[0] for g in got)


def test_import_compiles_nothing_and_skips_numba():
    out = run_python("""
        import sys, nnjit
        print('numba' in sys.modules)
    """)
    assert out == "False"


def test_command_line_info():
    out = run_python("from nnjit.__main__ import main; main(['info'])")
    assert "level in effect" in out and "ISA levels" in out and "disk cache" in out


def test_warmup_in_processes_fills_the_disk_cache_and_keeps_the_assembly(tmp_path):
    """warmup(processes=2) compiles in worker processes; this process then loads every
    variant from the disk cache (no compile of its own) and shows the assembly the worker
    kept (a variant loaded from disk carries none)."""
    lowest = nnjit.isa_levels()[0].name
    script = f"""
import nnjit
from nnjit.dispatch import registry
count = nnjit.warmup(["relu_output", "softmax_output"], ["{lowest}"], processes=2,
                     progress=False)
variants = [registry.variant(op, "direct", nnjit.isa_levels()[0])
            for op in ("relu_output", "softmax_output")]
loaded = [bool(sum(v.stats.cache_hits.values())) for v in variants]
asm = nnjit.inspect_asm("softmax_output", level="{lowest}")
kept = asm == registry._assembly[("softmax_output", "direct", nnjit.isa_levels()[0].arch,
                                  "{lowest}")]
print(count, all(loaded), kept, "ymm" not in asm and "zmm" not in asm)
"""
    env = dict(os.environ, NNJIT_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True", "True", "True"], result.stdout
