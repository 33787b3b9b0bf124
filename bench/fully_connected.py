"""GFLOP/s (2 * N * IN * OUT / time) of nnjit's fully connected layers against torch
(F.linear, torch.mv), numpy (OpenBLAS) and ncnn's InnerProduct layer, float32.

Configs: AlexNet fc6 (9216 -> 4096) and fc7 (4096 -> 4096) at batch 64 (nnjit
fully_connected_output) and batch 1 (fully_connected_inference), plus nnjit with float16
weights at batch 1. Each thread count runs in its own process (OpenBLAS reads its thread
count at import). Within a process the libraries take turns, block by block, so that a busy
neighbour slows all of them alike; each figure is the median over all repeats, and the
spread printed is the interquartile range of nnjit's times over their median.

    PYTHONPATH=. python bench/fully_connected.py [--threads 1 2] [--repeats 7] [--blocks 3]
                                                 [--configs fc6/64 fc7/64 fc6/1 fc7/1]
"""
from __future__ import annotations

import json
import time

from nnjit.bench.peers import ncnn_extract, ncnn_net, run_worker, worker_parser

CONFIGS = {"fc6": (9216, 4096), "fc7": (4096, 4096)}
LIBRARIES = ("nnjit", "nnjit_f16", "torch", "numpy", "ncnn", "ncnn_fp32")
F32_PEERS = ("torch", "numpy", "ncnn_fp32")


def _ncnn_runner(x, w, threads, fp16_storage=True):
    """ncnn's InnerProduct in a two-layer Net (Layer.forward on a bare InnerProduct
    segfaults in this ncnn build). Default options (the peer table's) store the weights as
    fp16 on x86 with F16C (the error line shows it); fp16_storage=False keeps float32."""
    import ncnn
    import numpy as np

    n, k = x.shape
    m = w.shape[0]
    net, keep = ncnn_net(threads, f"InnerProduct fc 1 1 data out 0={m} 1=0 2={m * k}",
                         w.tobytes(), fp16_storage)
    mat = ncnn.Mat(x[0]) if n == 1 else ncnn.Mat(x)          # shares x
    box = [None]

    def call():
        box[0] = ncnn_extract(net, mat)

    def result():
        return np.array(box[0]).reshape(n, m)

    return call, result, (net, mat, x, w, keep)


def worker(args) -> None:
    import numpy as np

    import nnjit
    from nnjit.kernels.reference import max_relative_error

    threads = args.threads[0]
    nnjit.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    rows = []
    for config in args.configs:
        name, batch = config.split("/")
        k, m = CONFIGS[name]
        n = int(batch)
        x = rng.random((n, k), dtype=np.float32)
        w = rng.random((m, k), dtype=np.float32)
        w16 = w.astype(np.float16)
        out = np.empty((n, m), np.float32)
        runners = {}
        if n == 1:
            runners["nnjit"] = (lambda: nnjit.fully_connected_inference(x[0], w, out=out[0]),
                                lambda: out.copy())
            out16 = np.empty((n, m), np.float32)
            runners["nnjit_f16"] = (
                lambda: nnjit.fully_connected_inference(x[0], w16, out=out16[0]),
                lambda: out16.copy())
        else:
            runners["nnjit"] = (lambda: nnjit.fully_connected_output(x, w, out=out),
                                lambda: out.copy())
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            tout = torch.empty((n, m)) if n > 1 else torch.empty(m)
            if n == 1:
                runners["torch"] = (lambda: torch.mv(tw, tx[0], out=tout),
                                    lambda: tout.numpy().reshape(n, m).copy())
            else:
                box = [None]

                def linear():
                    box[0] = torch.nn.functional.linear(tx, tw)
                runners["torch"] = (linear, lambda: box[0].numpy().copy())
        nout = np.empty((n, m), np.float32)
        if n == 1:
            runners["numpy"] = (lambda: np.matmul(w, x[0], out=nout[0]), lambda: nout.copy())
        else:
            runners["numpy"] = (lambda: np.matmul(x, w.T, out=nout), lambda: nout.copy())
        notes = {}
        keep = []
        for lib, fp16 in (("ncnn", True), ("ncnn_fp32", False)):
            try:
                call, result, held = _ncnn_runner(x, w, threads, fp16)
                call()
                runners[lib] = (call, result)
                keep.append(held)
            except Exception as error:      # ncnn missing or the layer failed: n/a
                notes[lib] = "n/a: " + str(error).splitlines()[0]
        reference = x.astype(np.float64) @ w.astype(np.float64).T
        reference16 = x.astype(np.float64) @ w16.astype(np.float64).T
        times = {lib: [] for lib in runners}
        errors = {}
        for lib, (call, result) in runners.items():
            call()                                   # compile / load, warm up
            errors[lib] = max_relative_error(reference16 if lib == "nnjit_f16" else reference,
                                             result())
        for _ in range(args.blocks):
            for lib, (call, _) in runners.items():
                time.sleep(0.1)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    call()
                    times[lib].append(time.perf_counter() - start)
        flop = 2.0 * n * k * m
        row = {"config": config, "threads": threads, "level": nnjit.get_isa().name,
               "algorithm": {}, "notes": notes}
        for lib, samples in times.items():
            median = float(np.median(samples))
            q1, q3 = np.percentile(samples, [25, 75])
            row[lib] = {"gflops": flop / median / 1e9, "spread": float((q3 - q1) / median),
                        "error": errors[lib]}
        rows.append(row)
    print(json.dumps(rows))


def main() -> None:
    parser = worker_parser(__doc__, repeats=7)
    parser.add_argument("--configs", nargs="+", default=["fc6/64", "fc7/64", "fc6/1", "fc7/1"])
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for threads in args.threads:
        rows += run_worker(__file__, threads, "--repeats", str(args.repeats), "--blocks",
                           str(args.blocks), "--configs", *args.configs)
    header = (f"{'config':<8} {'thr':>3} " + " ".join(f"{lib:>10}" for lib in LIBRARIES)
              + "  /best-f32  /best-any  f16/f32 f16/ncnn  spread")
    print("GFLOP/s (median); spread = IQR/median of nnjit's times")
    print(header)
    for row in rows:
        cells = []
        for lib in LIBRARIES:
            cells.append(f"{row[lib]['gflops']:>10.1f}" if lib in row else f"{'n/a':>10}")
        f32 = max([row[lib]["gflops"] for lib in F32_PEERS if lib in row] or [float("nan")])
        best = max([row[lib]["gflops"] for lib in ("ncnn",) + F32_PEERS if lib in row]
                   or [float("nan")])
        ours = row["nnjit"]["gflops"]
        f16 = (f"{row['nnjit_f16']['gflops'] / ours:>7.2f}x "
               f"{row['nnjit_f16']['gflops'] / row['ncnn']['gflops']:>7.2f}x"
               if "nnjit_f16" in row and "ncnn" in row else f"{'':>17}")
        print(f"{row['config']:<8} {row['threads']:>3} {' '.join(cells)}  {ours / f32:>8.2f}x "
              f"{ours / best:>8.2f}x {f16} {row['nnjit']['spread']:>7.1%}")
    print("max relative error vs float64 (f16: vs the fp16-rounded weights):")
    for row in rows:
        print(f"  {row['config']} {row['threads']}T: " + ", ".join(
            f"{lib} {row[lib]['error']:.1e}" for lib in LIBRARIES if lib in row)
            + "".join(f"; {lib} {note}" for lib, note in row["notes"].items()))


if __name__ == "__main__":
    main()
