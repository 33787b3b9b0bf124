"""GFLOP/s of nnjit's packed GEMM against numpy's np.matmul (OpenBLAS), float32.

Each thread count runs in its own process, because OpenBLAS reads OPENBLAS_NUM_THREADS
only when numpy is imported; within a process ours and numpy alternate, repeat by repeat,
and each figure is the median of the repeats.

    PYTHONPATH=. python bench/gemm.py [--sizes 1024 2048] [--threads 1 2] [--repeats 5]
                                      [--blocks 3]
                                      [--level avx512] [--trans-b]
"""
from __future__ import annotations

import json

from nnjit.bench.peers import run_worker, worker_parser


def worker(args) -> None:
    import numpy as np

    from nnjit.dispatch import policy
    from nnjit.dispatch.isa import level_named
    from nnjit.kernels.gemm import gemm

    threads = args.threads[0]
    policy.set_num_threads(threads)
    level = level_named(args.level) if args.level else policy.get_isa()
    rng = np.random.default_rng(0)
    import time

    results = []
    for n in args.sizes:
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        out = np.empty((n, n), np.float32)
        gemm(a, b, out, level=level, trans_b=args.trans_b)        # compile / load, warm up
        np.matmul(a, b.T if args.trans_b else b)
        ours, theirs = [], []
        for _ in range(args.blocks):
            time.sleep(0.3)
            for _ in range(args.repeats):
                start = time.perf_counter()
                gemm(a, b, out, level=level, trans_b=args.trans_b)
                ours.append(time.perf_counter() - start)
            time.sleep(0.3)
            for _ in range(args.repeats):
                start = time.perf_counter()
                np.matmul(a, b.T if args.trans_b else b)
                theirs.append(time.perf_counter() - start)
        flop = 2.0 * n ** 3
        results.append({"n": n, "threads": threads, "level": level.name,
                        "ours": flop / np.median(ours) / 1e9,
                        "numpy": flop / np.median(theirs) / 1e9})
    print(json.dumps(results))


def main() -> None:
    parser = worker_parser(__doc__, repeats=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--level", default=None, help="ISA level (default: the host's best)")
    parser.add_argument("--trans-b", action="store_true", help="b stored [N, K]: a @ b.T")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    extra = (["--level", args.level] if args.level else []) + (
        ["--trans-b"] if args.trans_b else [])
    for threads in args.threads:
        rows += run_worker(__file__, threads, "--repeats", str(args.repeats), "--blocks",
                           str(args.blocks), "--sizes", *map(str, args.sizes), *extra)
    print(f"{'n':>6} {'threads':>7} {'level':>7} {'nnjit GFLOP/s':>14} {'numpy GFLOP/s':>14} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['n']:>6} {r['threads']:>7} {r['level']:>7} {r['ours']:>14.1f} "
              f"{r['numpy']:>14.1f} {r['ours'] / r['numpy']:>6.2f}")


if __name__ == "__main__":
    main()
