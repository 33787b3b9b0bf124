"""The on-disk cache: a second process loads compiled kernels instead of compiling them;
levels and options never share an entry; NNJIT_CACHE=0 turns it off."""
import json
import os
import subprocess
import sys
import textwrap

import nnjit

PROBE = textwrap.dedent("""
    import json, sys, time, numpy as np
    started = time.perf_counter()
    import nnjit
    from nnjit.dispatch import registry
    levels = sys.argv[1].split(',')
    report = {}
    for name in levels:
        with nnjit.max_isa(name):
            nnjit.softmax_output(np.ones((2, 5), np.float32))
        d = registry.variant('softmax_output', 'direct', nnjit.dispatch.isa.level_named(name))
        report[name] = [sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())]
    report['seconds'] = time.perf_counter() - started
    print(json.dumps(report))
""")


def probe(cache_dir, levels, **env):
    full_env = dict(os.environ, NNJIT_CACHE_DIR=str(cache_dir), **env)
    result = subprocess.run([sys.executable, "-c", PROBE, ",".join(levels)], env=full_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_second_process_loads_from_disk(tmp_path):
    levels = [lv.name for lv in nnjit.cpu_info().runnable][:2]
    first = probe(tmp_path, levels)
    assert all(first[name] == [0, 2] for name in levels)    # both signatures compiled
    assert any(tmp_path.rglob("*.nbi")) and any(tmp_path.rglob("*.nbc"))
    second = probe(tmp_path, levels)
    assert all(second[name] == [2, 0] for name in levels)   # both loaded, none compiled


def test_levels_keep_separate_entries(tmp_path):
    levels = [lv.name for lv in nnjit.cpu_info().runnable]
    probe(tmp_path, levels[:1])
    later = probe(tmp_path, levels[-1:])
    if len(levels) > 1:
        assert later[levels[-1]] == [0, 2]      # another level's entry is never reused


def test_cache_can_be_turned_off(tmp_path):
    probe(tmp_path, ["generic"], NNJIT_CACHE="0")
    assert not any(tmp_path.rglob("*.nbc"))


def test_tuning_overrides_keep_separate_entries(tmp_path):
    """A kernel built under another NNJIT_GEMM_TILE bakes in another tile: never reused."""
    probe(tmp_path, ["generic"])
    assert probe(tmp_path, ["generic"], NNJIT_GEMM_TILE="4x8")["generic"] == [0, 2]
    assert probe(tmp_path, ["generic"])["generic"] == [2, 0]
