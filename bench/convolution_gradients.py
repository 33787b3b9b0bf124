"""GFLOP/s of nnjit's convolution input and kernel gradients against what torch's autograd
runs for the backward of conv2d: aten.convolution_backward with output_mask selecting just
the input gradient (x.requires_grad only) or just the weight gradient (w.requires_grad
only); oneDNN on this machine. flops = 2*N*K*C*OH*OW*KH*KW for either gradient.

Each thread count runs in its own process (torch and Numba fix their pools at start);
within a process nnjit and torch alternate, block by block, and each figure is the median
of all repeats. The machine is shared: run it twice and compare before trusting a ratio.

    PYTHONPATH=. python bench/convolution_gradients.py [--only vgg,alexnet.conv3]
        [--threads 1 2] [--repeats 5] [--blocks 3] [--ops input,kernel] [--no-save]
"""
from __future__ import annotations

import datetime
import json
import pathlib
import sys
import time

from nnjit.bench.convolution import CONFIGS
from nnjit.bench.peers import run_worker, worker_parser

# The batch-16 layers of the forward benchmark (peer-results.md):
# name: (N, C, K, H=W, kernel, padding, stride).
LAYERS = {name: layer for name, layer in CONFIGS.items() if name.endswith("/16")}
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _flop(layer) -> float:
    n, c, k, hw, ks, p, s = layer
    o = (hw + 2 * p - ks) // s + 1
    return 2.0 * n * k * c * o * o * ks * ks


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def worker(args) -> None:
    import numpy as np
    import torch

    import nnjit
    from nnjit.dispatch import policy

    threads = args.threads[0]
    torch.set_num_threads(threads)
    policy.set_num_threads(threads)
    ops = args.ops.split(",")
    rows = []
    for name in _selected(args.only):
        n, c, k, hw, ks, p, s = LAYERS[name]
        o = (hw + 2 * p - ks) // s + 1
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (n, c, hw, hw)).astype(np.float32)
        w = rng.uniform(0, 1, (k, c, ks, ks)).astype(np.float32)
        go = rng.uniform(0, 1, (n, k, o, o)).astype(np.float32)
        tx, tw, tgo = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(go)

        def torch_backward(mask):
            return torch.ops.aten.convolution_backward(
                tgo, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

        for op in ops:
            gi = np.empty_like(x)
            gw = np.empty_like(w)
            if op == "input":
                def ours():
                    nnjit.convolution_input_gradient(go, w, (hw, hw), padding=p, stride=s,
                                                     out=gi)

                def theirs():
                    return torch_backward([True, False, False])[0]
            else:
                def ours():
                    nnjit.convolution_kernel_gradient(x, go, (ks, ks), padding=p, stride=s,
                                                      out=gw)

                def theirs():
                    return torch_backward([False, True, False])[1]
            ours()                     # compile / load, warm up
            expected = theirs().numpy()
            got = gi if op == "input" else gw
            error = float(np.max(np.abs(expected - got) / np.maximum(np.abs(expected), 1e-30)))
            decision = nnjit.explain()
            t_ours, t_theirs = [], []
            for _ in range(args.blocks):
                time.sleep(0.2)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    ours()
                    t_ours.append(time.perf_counter() - start)
                time.sleep(0.2)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    theirs()
                    t_theirs.append(time.perf_counter() - start)
            flop = _flop(LAYERS[name])
            rows.append({"layer": name, "op": op, "threads": threads,
                         "level": decision.level.name, "algorithm": decision.algorithm,
                         "nnjit_ms": 1e3 * _median(t_ours), "torch_ms": 1e3 * _median(t_theirs),
                         "nnjit_gflops": flop / _median(t_ours) / 1e9,
                         "torch_gflops": flop / _median(t_theirs) / 1e9,
                         "nnjit_spread": (max(t_ours) - min(t_ours)) / _median(t_ours),
                         "torch_spread": (max(t_theirs) - min(t_theirs)) / _median(t_theirs),
                         "max_rel_error_vs_torch": error})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))


def _selected(only):
    if not only:
        return list(LAYERS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    return [name for name in LAYERS if any(w in name for w in wanted)]


def main() -> None:
    parser = worker_parser(__doc__, repeats=5)
    parser.add_argument("--only", default=None, help="comma-separated layer-name substrings")
    parser.add_argument("--ops", default="input,kernel")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not _selected(args.only):
        parser.error(f"--only {args.only!r} matches none of {', '.join(LAYERS)}")
    rows = []
    extra = ["--only", args.only] if args.only else []
    for threads in args.threads:
        rows += run_worker(__file__, threads, "--repeats", str(args.repeats), "--blocks",
                           str(args.blocks), "--ops", args.ops, *extra,
                           NUMBA_NUM_THREADS=str(threads))
    print(f"{'layer':<22} {'gradient':<8} {'thr':>3} {'nnjit GF/s':>10} {'torch GF/s':>10} "
          f"{'ratio':>6} {'nnjit ms':>9} {'torch ms':>9} {'spread':>11}")
    for r in rows:
        print(f"{r['layer']:<22} {r['op']:<8} {r['threads']:>3} {r['nnjit_gflops']:>10.1f} "
              f"{r['torch_gflops']:>10.1f} {r['nnjit_gflops'] / r['torch_gflops']:>6.2f} "
              f"{r['nnjit_ms']:>9.2f} {r['torch_ms']:>9.2f} "
              f"{r['nnjit_spread']:>5.0%}/{r['torch_spread']:<5.0%}")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"convolution_gradients-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps({"benchmark": "convolution_gradients", "rows": rows},
                                   indent=1))
        print(f"saved {path}")


if __name__ == "__main__":
    main()
