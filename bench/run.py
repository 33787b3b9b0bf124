"""Benchmark nnjit's memory-bound layers (ReLU, softmax, max pooling) against torch, ncnn and
onnxruntime, at 1 and 2 threads, and time nnjit's first use in a cold and a warm process.

    python bench/run.py [--threads 1,2] [--only SUBSTR] [--repeats 7] [--json PATH]
    python -m nnjit bench [same options]

Each thread count runs in its own subprocess (clean thread pools). Per configuration and
library: one first call (checked against nnjit's output: max abs difference), one warm-up
call, then the median of ``--repeats`` samples (a sample repeats small calls to last at
least ~10 ms). GB/s = the configuration's bytes (configs.py) / median seconds.
Results go to bench/results/<timestamp>.json (and --json PATH).
"""
from __future__ import annotations

import os
import sys

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

if not __package__:
    # Run as a script (python bench/run.py): bench/ is nnjit.bench only when installed, so
    # import nnjit from the repository root and register bench/ as nnjit.bench.
    import importlib.util

    if sys.path and os.path.abspath(sys.path[0] or ".") == _BENCH_DIR:
        sys.path.pop(0)             # don't let bench/'s modules shadow top-level names
    _root = os.path.dirname(_BENCH_DIR)
    if os.path.isfile(os.path.join(_root, "nnjit", "__init__.py")):
        sys.path.insert(0, _root)
    import nnjit as _nnjit

    if "nnjit.bench" not in sys.modules:
        _spec = importlib.util.spec_from_file_location(
            "nnjit.bench", os.path.join(_BENCH_DIR, "__init__.py"),
            submodule_search_locations=[_BENCH_DIR])
        _mod = importlib.util.module_from_spec(_spec)
        sys.modules["nnjit.bench"] = _mod
        _spec.loader.exec_module(_mod)
        _nnjit.bench = _mod

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from nnjit.bench import configs  # noqa: E402

LIBS = ("nnjit", "torch", "ncnn", "ort")
FIRST_CALL_LIMIT_S = 2.0        # cold process, empty cache: each layer's first call
WARM_TOTAL_LIMIT_S = 1.0        # warm process: import nnjit + first call of every layer


# ------------------------------------------------------------------------------ helpers

def _jsonable(obj):
    """cpu_info() and friends as JSON: dataclasses, frozensets, IsaLevels."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ == "IsaLevel":
            return obj.name
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (frozenset, set)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _nnjit_path_env(extra: dict | None = None) -> dict:
    """Environment for subprocesses: the same nnjit as this process."""
    import nnjit

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(nnjit.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def _short_error(e: BaseException, limit: int = 240) -> str:
    """An exception as one line: type, first line and (if different) last line of its
    message, without terminal colour codes (numba's typing errors are long and coloured)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    for ln in lines[1:]:
        if "Error" in ln or "Cannot" in ln:
            msg += " ... " + ln
            break
    msg = f"{type(e).__name__}: {msg}"
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ------------------------------------------------------------------- first use (cold/warm)

_FIRST_USE_CODE = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
t_numpy = time.perf_counter() - t0
rng = np.random.default_rng(0)
x4 = rng.standard_normal((2, 8, 17, 17), dtype=np.float32)
r4 = x4.copy()
g4 = rng.standard_normal(x4.shape, dtype=np.float32)
x2 = rng.standard_normal((4, 100), dtype=np.float32)
o2 = np.empty_like(x2)
o4 = np.empty((2, 8, 8, 8), np.float32)
t0 = time.perf_counter()
import nnjit
t_import = time.perf_counter() - t0
calls = [
    ("relu_output", lambda: nnjit.relu_output(r4, 0.0, out=r4)),
    ("relu_input_gradient", lambda: nnjit.relu_input_gradient(g4, x4)),
    ("softmax_output", lambda: nnjit.softmax_output(x2, out=o2)),
    ("max_pooling_output", lambda: nnjit.max_pooling_output(x4, 3, 2, 0, ceil_mode=False, out=o4)),
]
first = {}
for name, fn in calls:
    t0 = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - t0
again = {}
for name, fn in calls:
    t0 = time.perf_counter()
    fn()
    again[name] = time.perf_counter() - t0
print("@@" + json.dumps({"numpy_import_s": t_numpy, "import_s": t_import, "first_call_s": first,
                         "second_call_s": again, "level": nnjit.get_isa().name}))
"""


def _first_use_process(cache: Path) -> dict:
    env = _nnjit_path_env({"NNJIT_CACHE_DIR": str(cache / "nnjit"),
                           "NUMBA_CACHE_DIR": str(cache / "numba")})
    env.pop("NNJIT_CACHE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _FIRST_USE_CODE], env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if proc.returncode != 0 or not line:
        return {"error": f"rc={proc.returncode}: {proc.stderr.strip()[-800:]}"}
    data = json.loads(line[-1][2:])
    data["process_wall_s"] = wall
    data["total_s"] = data["import_s"] + sum(data["first_call_s"].values())
    return data


def first_use() -> dict:
    """A cold process (empty NNJIT_CACHE_DIR and NUMBA_CACHE_DIR), then a warm one (same
    directories, now filled)."""
    with tempfile.TemporaryDirectory(prefix="nnjit-bench-cache-") as tmp:
        cold = _first_use_process(Path(tmp))
        warm = _first_use_process(Path(tmp))
    out = {"cold": cold, "warm": warm,
           "limits": {"cold_first_call_s": FIRST_CALL_LIMIT_S,
                      "warm_import_plus_first_calls_s": WARM_TOTAL_LIMIT_S}}
    if "error" not in cold:
        out["cold_ok"] = all(v <= FIRST_CALL_LIMIT_S for v in cold["first_call_s"].values())
    if "error" not in warm:
        out["warm_ok"] = warm["total_s"] <= WARM_TOTAL_LIMIT_S
    return out


def print_first_use(fu: dict) -> None:
    for which in ("cold", "warm"):
        d = fu[which]
        if "error" in d:
            print(f"{which}: ERROR {d['error']}")
            continue
        calls = ", ".join(f"{k} {v:.3f}" for k, v in d["first_call_s"].items())
        print(f"{which:4} process: import nnjit {d['import_s']:.3f} s; first calls (s): {calls}; "
              f"import + first calls {d['total_s']:.3f} s (numpy import {d['numpy_import_s']:.3f} "
              f"s not counted)")
    if "cold_ok" in fu:
        print(f"  cold: each first call <= {FIRST_CALL_LIMIT_S:g} s: "
              f"{'PASS' if fu['cold_ok'] else 'FAIL'}")
    if "warm_ok" in fu:
        print(f"  warm: import + all first calls <= {WARM_TOTAL_LIMIT_S:g} s: "
              f"{'PASS' if fu['warm_ok'] else 'FAIL'}")


# --------------------------------------------------------------------------------- worker

def _measure(call, repeats: int, target_s: float = 0.01):
    perf = time.perf_counter
    call()                                   # warm-up (the first call was made already)
    t0 = perf()
    call()
    one = perf() - t0
    inner = max(1, min(10000, int(target_s / max(one, 1e-7))))
    samples = []
    for _ in range(repeats):
        t0 = perf()
        for _ in range(inner):
            call()
        samples.append((perf() - t0) / inner)
    return statistics.median(samples), samples, inner


def _versions(peers) -> dict:
    import numba
    import numpy as np

    v = {"python": platform.python_version(), "numpy": np.__version__,
         "numba": numba.__version__}
    try:
        import llvmlite
        v["llvmlite"] = llvmlite.__version__
    except ImportError:
        pass
    try:
        import onnx
        v["onnx"] = onnx.__version__
    except ImportError:
        v["onnx"] = "not installed"
    for p in peers:
        v[p.name] = p.version() if p.available()[0] else None
    return v


def worker(threads: int, lib: str, only: str | None, repeats: int, out_path: str,
           ref_dir: str | None) -> int:
    """Time one library at one thread count on every selected config (one process)."""
    import gc

    import numpy as np

    import nnjit
    from nnjit.bench import peers as peers_mod

    t_start = time.perf_counter()
    cls = {P.name: P for P in peers_mod.PEERS}[lib]
    peer = cls()
    doc = {"threads": threads, "lib": lib, "load_start": _loadavg(), "unavailable": {},
           "results": []}
    ok, why = peer.available()
    if ok:
        try:
            peer.setup(threads)
        except Exception as e:
            ok, why = False, "setup failed: " + _short_error(e)
    if not ok:
        doc["unavailable"][lib] = why
    doc["versions"] = _versions([peer])
    if lib == "nnjit" and ok:
        doc["nnjit_threads"] = nnjit.get_num_threads()
    if lib == "torch" and ok:
        doc["torch_threads"] = peer.torch.get_num_threads()

    def save():
        with open(out_path, "w") as f:
            json.dump(doc, f)

    save()
    for cfg in configs.select(only):
        row = {"config": cfg.name, "threads": threads, "bytes": cfg.bytes}
        doc["results"].append(row)
        entry = row["entry"] = {}
        if not ok:
            entry.update(status="n/a", reason=why)
            continue
        ref_path = os.path.join(ref_dir, cfg.name + ".npy") if ref_dir else None
        x = cfg.make_input()
        runner = None
        try:
            runner = peer.prepare(cfg, x)
            t0 = time.perf_counter()
            runner.call()
            entry["first_call_s"] = time.perf_counter() - t0
            y = np.asarray(runner.result())
            if lib == "nnjit":
                try:
                    entry["decision"] = str(nnjit.explain())
                except Exception:
                    pass
                if ref_path and not os.path.exists(ref_path):
                    np.save(ref_path, y)
            elif ref_path and os.path.exists(ref_path):
                ref = np.load(ref_path, mmap_mode="r")
                diff = float(np.max(np.abs(y.reshape(ref.shape).astype(np.float32) - ref)))
                entry["max_abs_diff"] = diff
                entry["match"] = bool(diff <= cfg.tolerance)
                del ref
            else:
                entry["match"] = None          # no nnjit output to compare with
            del y
            med, samples, inner = _measure(runner.call, repeats)
            entry.update(status="ok", seconds=med, gbps=cfg.bytes / med / 1e9,
                         samples_s=samples, calls_per_sample=inner, note=runner.note)
        except peers_mod.NotSupported as e:
            entry.update(status="n/a", reason=f"unsupported: {e}")
        except Exception as e:
            entry.update(status="ERR", reason=_short_error(e))
        finally:
            del runner, x
            gc.collect()
        msg = (f"{entry['gbps']:7.2f} GB/s" if entry.get("status") == "ok"
               else f"{entry['status']} ({entry.get('reason', '')})")
        if entry.get("match") is False:
            msg += f"  MISMATCH max|diff| = {entry['max_abs_diff']:.3g}"
        print(f"  [{threads}T] {cfg.name:20} {lib:6} {msg}", flush=True)
        save()
    doc["load_end"] = _loadavg()
    doc["wall_s"] = time.perf_counter() - t_start
    save()
    return 0


def _host_busy(interval: float = 0.3) -> float | None:
    """Percent of all CPUs busy (anyone's) over ``interval`` seconds while we sleep."""
    def read():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)
    try:
        t1, i1 = read()
        time.sleep(interval)
        t2, i2 = read()
        return round(100.0 * (1 - (i2 - i1) / max(1, t2 - t1)), 1)
    except (OSError, ValueError, IndexError):
        return None


def _run_worker(threads: int, lib: str, args, ref_dir: str) -> dict:
    with tempfile.NamedTemporaryFile(prefix="nnjit-bench-", suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads), "--lib", lib,
           "--repeats", str(args.repeats), "--out", out_path, "--ref-dir", ref_dir]
    if args.only:
        cmd += ["--only", args.only]
    env = _nnjit_path_env({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                           "OPENBLAS_NUM_THREADS": str(threads)})
    busy = _host_busy()
    deadline = time.perf_counter() + args.wait_idle
    while busy is not None and busy > 25 and time.perf_counter() < deadline:
        busy = _host_busy(0.5)           # let someone else's burst pass, for a while
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    doc = {"threads": threads, "lib": lib, "results": []}
    try:
        with open(out_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        pass
    finally:
        try:
            os.unlink(out_path)
        except OSError:
            pass
    doc["host_busy_pct_before"] = busy
    doc["process_wall_s"] = time.perf_counter() - t0
    if proc.returncode != 0:
        doc["error"] = f"{lib} worker exited with {proc.returncode} (results may be partial)"
        print(f"  [{threads}T] {doc['error']}", flush=True)
    return doc


def merge(workers: list[dict], selected) -> list[dict]:
    """Rows (config, threads) with every library's best pass (lowest median)."""
    rows = {}
    for w in workers:
        for r in w.get("results", []):
            key = (r["config"], r["threads"])
            row = rows.setdefault(key, {"config": r["config"], "threads": r["threads"],
                                        "bytes": r["bytes"], "libs": {}})
            e = dict(r["entry"], **{"pass": w.get("pass", 1)})
            old = row["libs"].get(w["lib"])
            if (old is None or old.get("status") != "ok"
                    or (e.get("status") == "ok" and e["seconds"] < old["seconds"])):
                row["libs"][w["lib"]] = e
    for w in workers:                       # a worker that died before its configs
        for cfg in selected:
            for n in (w["threads"],):
                row = rows.setdefault((cfg.name, n), {"config": cfg.name, "threads": n,
                                                      "bytes": cfg.bytes, "libs": {}})
                row["libs"].setdefault(w["lib"], {"status": "ERR",
                                                  "reason": w.get("error", "no result")})
    order = [c.name for c in configs.CONFIGS]
    return sorted(rows.values(), key=lambda r: (order.index(r["config"]), r["threads"]))


# ---------------------------------------------------------------------------------- table

def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    if entry.get("status") != "ok":
        return entry.get("status", "-")
    return f"{entry['gbps']:.2f}" + ("!" if entry.get("match") is False else "")


def _ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
        return "n/a"
    return f"{a['gbps'] / b['gbps']:.2f}"


def table(rows: list[dict]) -> str:
    head = ["config", "threads", "nnjit GB/s", "torch", "ncnn", "ort",
            "nnjit/torch", "nnjit/ncnn", "nnjit/best peer"]
    lines = []
    for r in rows:
        libs = r["libs"]
        ok_peers = [libs[n] for n in LIBS[1:] if libs.get(n, {}).get("status") == "ok"]
        best = max(ok_peers, key=lambda e: e["gbps"]) if ok_peers else None
        best_name = next((n for n in LIBS[1:] if libs.get(n) is best), "") if best else ""
        lines.append([r["config"], str(r["threads"])] + [_cell(libs.get(n)) for n in LIBS]
                     + [_ratio(libs.get("nnjit"), libs.get("torch")),
                        _ratio(libs.get("nnjit"), libs.get("ncnn")),
                        _ratio(libs.get("nnjit"), best) + (f" ({best_name})" if best else "")])
    widths = [max(len(head[i]), *(len(ln[i]) for ln in lines)) if lines else len(head[i])
              for i in range(len(head))]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(ln) for ln in lines]
    return "\n".join(out)


def notes(rows: list[dict], workers: list[dict]) -> list[str]:
    out = []
    seen = set()
    unavailable = {lib for w in workers for lib in w.get("unavailable", {})}
    for w in workers:
        for lib, why in w.get("unavailable", {}).items():
            if (lib, why) not in seen:
                seen.add((lib, why))
                out.append(f"{lib}: n/a ({why})")
        if w.get("error"):
            out.append(f"{w['threads']} threads: {w['error']}")
        if (w.get("host_busy_pct_before") or 0) > 20:
            out.append(f"{w['lib']} @{w['threads']}T (pass {w.get('pass', 1)}): host "
                       f"{w['host_busy_pct_before']}% busy just before it: numbers are noisy")
    for r in rows:
        for lib, e in r["libs"].items():
            if e.get("status") in ("ERR", "n/a") and lib not in unavailable:
                out.append(f"{r['config']} @{r['threads']}T {lib}: {e['status']} {e.get('reason', '')}")
            elif e.get("status") == "ok" and e.get("match") is False:
                out.append(f"{r['config']} @{r['threads']}T {lib}: output differs from nnjit's, "
                           f"max|diff| = {e['max_abs_diff']:.3g}")
    return out


# ----------------------------------------------------------------------------------- main

def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m nnjit bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (1,2)")
    p.add_argument("--only", default=None, help="substring(s) of config names, comma-separated")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per measurement (7)")
    p.add_argument("--json", default=None, help="also write the results to this path")
    p.add_argument("--no-first-use", action="store_true",
                   help="skip the cold/warm first-use measurement")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--passes", type=int, default=1,
                   help="passes over all (threads, library) processes; the lowest median wins")
    p.add_argument("--wait-idle", type=float, default=5.0,
                   help="seconds to wait, before each process, for the host to be < 25%% busy")
    p.add_argument("--libs", default=",".join(LIBS), help="libraries (nnjit,torch,ncnn,ort)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--lib", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ref-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:          # python -m nnjit bench -- --only ...
        argv = argv[1:]
    args = _parse(argv)
    if args.worker is not None:
        return worker(args.worker, args.lib, args.only, args.repeats, args.out, args.ref_dir)
    if args.list:
        for c in configs.CONFIGS:
            print(f"{c.name:22} {c.describe():40} {c.bytes / 1e9:.3f} GB")
        return 0
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        print(f"--threads: expected comma-separated integers, got {args.threads!r}",
              file=sys.stderr)
        return 2
    if args.repeats < 1 or args.passes < 1 or not threads or min(threads) < 1:
        print("--repeats, --passes and --threads must be >= 1", file=sys.stderr)
        return 2
    libs = [n for n in LIBS if n in args.libs.split(",")]
    if not libs:
        print(f"--libs: none of {', '.join(LIBS)}", file=sys.stderr)
        return 2
    selected = configs.select(args.only)
    if not selected:
        print(f"no configuration matches --only {args.only!r}", file=sys.stderr)
        return 2

    import nnjit
    from nnjit.dispatch import registry

    t_start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = nnjit.cpu_info()
    print(f"nnjit {nnjit.__version__}: level {nnjit.get_isa().name}; {info.brand}, "
          f"{info.logical_cores} logical cores; configs: {', '.join(c.name for c in selected)}",
          flush=True)

    fu = None
    if not args.no_first_use:
        print("first use (cold process with an empty cache, then a warm one) ...", flush=True)
        fu = first_use()
        print_first_use(fu)

    workers = []
    with tempfile.TemporaryDirectory(prefix="nnjit-bench-ref-") as ref_dir:
        for p in range(1, args.passes + 1):
            for n in threads:
                print(f"{n} thread(s)" + (f", pass {p}" if args.passes > 1 else "") + " ...",
                      flush=True)
                for lib in libs:
                    w = _run_worker(n, lib, args, ref_dir)
                    w["pass"] = p
                    workers.append(w)
    rows = merge(workers, selected)

    print()
    print(table(rows))
    print("GB/s: relu and softmax count read + write bytes, pooling input + output; "
          "'!' = output differs from nnjit's; ratios > 1 = nnjit faster.")
    for line in notes(rows, workers):
        print("note: " + line)
    if fu:
        print()
        print_first_use(fu)

    try:
        kernels = [f"{s.operation}/{s.algorithm}" for s in registry.specs()]
    except Exception as e:
        kernels = ["unavailable: " + _short_error(e)]
    versions = {}
    for w in workers:
        versions.update({k: v for k, v in w.get("versions", {}).items() if v is not None})
    result = {
        "timestamp": stamp,
        "argv": argv,
        "nnjit_version": nnjit.__version__,
        "nnjit_level": nnjit.get_isa().name,
        "machine": _jsonable(info),
        "platform": platform.platform(),
        "versions": versions,
        "kernels": kernels,
        "configs": [c.to_json() for c in selected],
        "threads": threads,
        "repeats": args.repeats,
        "passes": args.passes,
        "first_use": fu,
        "results": rows,
        "workers": [{k: v for k, v in w.items() if k != "results"} for w in workers],
        "wall_s": time.perf_counter() - t_start,
    }
    paths = [Path(_BENCH_DIR) / "results" / f"{stamp}.json"]
    if args.json:
        paths.append(Path(args.json))
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1))
            print(f"wrote {path}")
        except OSError as e:
            print(f"could not write {path}: {e}", file=sys.stderr)
    print(f"total {result['wall_s']:.0f} s")
    # exit 1 when a worker died or nnjit itself failed a config (peers' n/a are fine)
    failed = any(w.get("error") for w in workers) or any(
        r["libs"].get("nnjit", {}).get("status") == "ERR" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
