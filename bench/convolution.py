"""GFLOP/s (2 * N * K * C * OH * OW * KH * KW / time) of nnjit's forward convolution
(implicit_gemm, direct for 1x1 stride 1, and nnjit_reuse: a kernel transformed once by
nnjit.transform_kernel, as ncnn and onnxruntime pack theirs when the net or session is
made) against torch (F.conv2d: oneDNN), ncnn (its
Convolution layer in a two-layer Net, one image at a time) and onnxruntime (a one-node Conv
graph with the weights as initializers, IO binding), float32, on every convolution layer of
reference/peer-results.md.

Each (library, thread count) runs in its own process (two OpenMP runtimes in one process
disturb each other: numba's spinning workers slow torch down several times), in passes
that alternate the library order; a figure is the lowest over passes of the median over
repeats, and the spread printed is the largest relative difference between nnjit's pass
medians (the machine is shared: noise). Errors: max relative error against torch's output.

    PYTHONPATH=. python bench/convolution.py [--threads 1 2] [--repeats 9] [--passes 2]
                                             [--only resnet,pw] [--libs nnjit torch ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from nnjit.bench.peers import ncnn_extract, ncnn_net, thread_env

# name: (N, C, K, H=W, kernel, padding, stride)
CONFIGS = {
    "alexnet.conv2/1": (1, 64, 192, 27, 5, 2, 1),
    "alexnet.conv3/1": (1, 192, 384, 13, 3, 1, 1),
    "alexnet.conv4/1": (1, 384, 256, 13, 3, 1, 1),
    "alexnet.conv5/1": (1, 256, 256, 13, 3, 1, 1),
    "overfeat.conv2/1": (1, 96, 256, 24, 5, 0, 1),
    "overfeat.conv3/1": (1, 256, 512, 12, 3, 1, 1),
    "overfeat.conv4/1": (1, 512, 1024, 12, 3, 1, 1),
    "overfeat.conv5/1": (1, 1024, 1024, 12, 3, 1, 1),
    "vgg.conv1_2/1": (1, 64, 64, 224, 3, 1, 1),
    "vgg.conv2_2/1": (1, 128, 128, 112, 3, 1, 1),
    "vgg.conv3_2/1": (1, 256, 256, 56, 3, 1, 1),
    "vgg.conv4_2/1": (1, 512, 512, 28, 3, 1, 1),
    "vgg.conv5_2/1": (1, 512, 512, 14, 3, 1, 1),
    "resnet.conv1/1": (1, 3, 64, 224, 7, 3, 2),
    "resnet18.l1.3x3/1": (1, 64, 64, 56, 3, 1, 1),
    "resnet18.l2.3x3s2/1": (1, 64, 128, 56, 3, 1, 2),
    "resnet18.l2.1x1s2/1": (1, 64, 128, 56, 1, 0, 2),
    "resnet18.l3.3x3/1": (1, 256, 256, 14, 3, 1, 1),
    "resnet18.l4.3x3/1": (1, 512, 512, 7, 3, 1, 1),
    "resnet50.l1.1x1a/1": (1, 256, 64, 56, 1, 0, 1),
    "resnet50.l1.1x1b/1": (1, 64, 256, 56, 1, 0, 1),
    "resnet50.l3.1x1a/1": (1, 1024, 256, 14, 1, 0, 1),
    "mobilenet.pw12/1": (1, 512, 512, 14, 1, 0, 1),
    "mobilenet.pw14/1": (1, 1024, 1024, 7, 1, 0, 1),
    "alexnet.conv2/16": (16, 64, 192, 27, 5, 2, 1),
    "alexnet.conv3/16": (16, 192, 384, 13, 3, 1, 1),
    "alexnet.conv5/16": (16, 256, 256, 13, 3, 1, 1),
    "overfeat.conv3/16": (16, 256, 512, 12, 3, 1, 1),
    "vgg.conv5_2/16": (16, 512, 512, 14, 3, 1, 1),
    "resnet18.l1.3x3/16": (16, 64, 64, 56, 3, 1, 1),
    "resnet18.l2.3x3s2/16": (16, 64, 128, 56, 3, 1, 2),
    "resnet18.l3.3x3/16": (16, 256, 256, 14, 3, 1, 1),
    "resnet50.l1.1x1a/16": (16, 256, 64, 56, 1, 0, 1),
}
LIBRARIES = ("nnjit", "nnjit_direct", "nnjit_reuse", "torch", "ncnn", "ort")
PEERS = ("torch", "ncnn", "ort")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def out_side(h, k, p, s):
    return (h + 2 * p - k) // s + 1


def flops(config) -> float:
    n, c, k, h, ks, p, s = config
    o = out_side(h, ks, p, s)
    return 2.0 * n * k * c * o * o * ks * ks


def make_data(name):
    import numpy as np

    n, c, k, h, ks, p, s = CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    x = rng.uniform(-0.1, 1.0, (n, c, h, h)).astype(np.float32)
    w = rng.uniform(-0.1, 1.0, (k, c, ks, ks)).astype(np.float32)
    b = rng.uniform(-0.1, 1.0, k).astype(np.float32)
    return x, w, b


# ------------------------------------------------------------------------ runners
def nnjit_runner(name, x, w, b, threads, algorithm):
    import numpy as np

    import nnjit

    nnjit.set_num_threads(threads)
    n, c, k, h, ks, p, s = CONFIGS[name]
    if algorithm == "direct" and not (ks == 1 and s == 1):
        raise NotImplementedError("direct: 1x1 stride 1 only")
    if algorithm == "reuse":        # transformed once, outside the timed calls
        w, algorithm = nnjit.transform_kernel(w), "auto"
    o = out_side(h, ks, p, s)
    out = np.empty((n, k, o, o), np.float32)
    return (lambda: nnjit.convolution_output(x, w, b, padding=p, stride=s,
                                             algorithm=algorithm, out=out),
            lambda: out)


def torch_runner(name, x, w, b, threads):
    import torch

    torch.set_num_threads(threads)
    n, c, k, h, ks, p, s = CONFIGS[name]
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    box = [None]

    def call():
        with torch.no_grad():
            box[0] = torch.nn.functional.conv2d(tx, tw, tb, s, p)
    return call, lambda: box[0].numpy()


def ncnn_runner(name, x, w, b, threads):
    """Convolution in a two-layer Net (Input, Convolution): weights packed once when the
    model loads, as ncnn applications do; the batch one image per extract."""
    import ncnn
    import numpy as np

    n, c, k, h, ks, p, s = CONFIGS[name]
    net, keep = ncnn_net(threads, f"Convolution conv 1 1 data out 0={k} 1={ks} 3={s} 4={p} "
                                  f"5=1 6={w.size}", w.tobytes() + b.tobytes())
    mats = [ncnn.Mat(x[i]) for i in range(n)]        # share x
    o = out_side(h, ks, p, s)
    outs = [None] * n

    def call():
        for i in range(n):
            outs[i] = ncnn_extract(net, mats[i])

    def result():
        return np.stack([np.array(m).reshape(k, o, o) for m in outs])
    call.keep = (net, mats, keep)
    return call, result


def _pb(num: int, value) -> bytes:
    """One protobuf field: int -> varint, str/bytes -> length-delimited."""
    def varint(v):
        v &= (1 << 64) - 1
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    value = value.encode() if isinstance(value, str) else bytes(value)
    return varint(num << 3 | 2) + varint(len(value)) + value


def conv_onnx(x, w, b, out_shape, stride, pad) -> bytes:
    """A one-node Conv model (x, initializers w and b -> y), encoded by hand (the onnx
    package is not needed)."""
    def ints(name, values):     # AttributeProto: name=1, ints=8, type=20 (INTS=7)
        return _pb(1, name) + b"".join(_pb(8, int(v)) for v in values) + _pb(20, 7)

    def tensor(name, array):    # TensorProto: dims=1, data_type=2 (FLOAT=1), name=8, raw=9
        return (b"".join(_pb(1, d) for d in array.shape) + _pb(2, 1) + _pb(8, name)
                + _pb(9, array.tobytes()))

    def value_info(name, shape):
        dims = b"".join(_pb(1, _pb(1, int(d))) for d in shape)
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + _pb(2, dims)))

    ks = w.shape[2]
    node = (_pb(1, "x") + _pb(1, "w") + _pb(1, "b") + _pb(2, "y") + _pb(3, "conv")
            + _pb(4, "Conv") + _pb(5, ints("kernel_shape", [ks, ks]))
            + _pb(5, ints("strides", [stride, stride])) + _pb(5, ints("pads", [pad] * 4)))
    graph = (_pb(1, node) + _pb(2, "conv") + _pb(5, tensor("w", w)) + _pb(5, tensor("b", b))
             + _pb(11, value_info("x", x.shape)) + _pb(12, value_info("y", out_shape)))
    return _pb(1, 8) + _pb(2, "nnjit.bench") + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17))


def ort_runner(name, x, w, b, threads):
    import numpy as np
    import onnxruntime as ort

    n, c, k, h, ks, p, s = CONFIGS[name]
    o = out_side(h, ks, p, s)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(conv_onnx(x, w, b, (n, k, o, o), s, p), so,
                                providers=["CPUExecutionProvider"])
    out = np.empty((n, k, o, o), np.float32)
    binding = sess.io_binding()
    binding.bind_input("x", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    binding.bind_output("y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)

    def call():
        sess.run_with_iobinding(binding)
    call.keep = (sess, binding)
    return call, lambda: out


def make_runner(lib, name, x, w, b, threads):
    if lib == "nnjit":
        return nnjit_runner(name, x, w, b, threads, "implicit_gemm")
    if lib == "nnjit_direct":
        return nnjit_runner(name, x, w, b, threads, "direct")
    if lib == "nnjit_reuse":
        return nnjit_runner(name, x, w, b, threads, "reuse")
    return {"torch": torch_runner, "ncnn": ncnn_runner, "ort": ort_runner}[lib](
        name, x, w, b, threads)


def worker(lib, threads, names, repeats) -> dict:
    import numpy as np

    rows = {}
    for name in names:
        x, w, b = make_data(name)
        try:
            call, result = make_runner(lib, name, x, w, b, threads)
            call()                                     # compile / load / plan, warm up
        except NotImplementedError:
            continue
        except Exception as error:                     # library missing or failing: n/a
            rows[name] = {"note": f"n/a: {type(error).__name__}: {str(error)[:120]}"}
            continue
        times = []
        deadline = time.perf_counter() + 3.0
        for i in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            if i >= 2 and time.perf_counter() > deadline:
                break
        rows[name] = {"seconds": float(np.median(times)), "samples": len(times)}
        np.save(os.path.join(os.environ["CONV_BENCH_TMP"], f"{lib}-{threads}-{name.replace('/', '_')}.npy"),
                result())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated substrings of names")
    parser.add_argument("--libs", nargs="+", default=list(LIBRARIES))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lib, threads = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(lib, threads, args.names, args.repeats)))
        return
    import tempfile

    import numpy as np

    from nnjit.kernels.reference import max_relative_error

    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    names = [n for n in CONFIGS if not wanted or any(w in n for w in wanted)]
    tmp = tempfile.mkdtemp(prefix="conv-bench-")
    best: dict = {}          # (lib, threads, name) -> list of pass medians
    notes: dict = {}
    started = time.strftime("%Y%m%d-%H%M%S")
    for pass_ in range(args.passes):
        for threads in args.threads:
            libs = args.libs if pass_ % 2 == 0 else args.libs[::-1]
            for lib in libs:
                env = thread_env(threads, CONV_BENCH_TMP=tmp)
                command = [sys.executable, os.path.abspath(__file__), "--worker", lib,
                           str(threads), "--repeats", str(args.repeats), "--names", *names]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    notes[(lib, threads)] = f"worker failed: {done.stderr.strip()[-300:]}"
                    continue
                for name, row in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    if "seconds" in row:
                        best.setdefault((lib, threads, name), []).append(row["seconds"])
                    else:
                        notes[(lib, threads, name)] = row["note"]
                sys.stderr.write(f"pass {pass_ + 1} {lib} {threads}T done\n")
    rows = []
    for threads in args.threads:
        for name in names:
            row = {"config": name, "threads": threads, "shape": CONFIGS[name],
                   "gflop": flops(CONFIGS[name]) / 1e9}
            ref_path = os.path.join(tmp, f"torch-{threads}-{name.replace('/', '_')}.npy")
            reference = np.load(ref_path) if os.path.exists(ref_path) else None
            for lib in args.libs:
                samples = best.get((lib, threads, name))
                if not samples:
                    note = notes.get((lib, threads, name)) or notes.get((lib, threads))
                    if note:
                        row[lib] = {"note": note}
                    continue
                seconds = min(samples)
                cell = {"gflops": flops(CONFIGS[name]) / seconds / 1e9, "ms": seconds * 1e3,
                        "spread": (max(samples) - min(samples)) / min(samples)}
                path = os.path.join(tmp, f"{lib}-{threads}-{name.replace('/', '_')}.npy")
                if reference is not None and os.path.exists(path):
                    cell["error"] = max_relative_error(reference, np.load(path))
                row[lib] = cell
            rows.append(row)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"convolution-{started}.json")
    with open(path, "w") as f:
        json.dump({"started": started, "passes": args.passes, "repeats": args.repeats,
                   "rows": rows}, f, indent=1)

    def g(row, lib):
        cell = row.get(lib, {})
        return cell.get("gflops")

    print("GFLOP/s (lowest pass median); vs best = nnjit's best algorithm / best of "
          "torch, ncnn, ort; reuse = nnjit_reuse / best of them; spread = nnjit's "
          "pass-to-pass difference; ! = error > 1e-3")
    print(f"{'config':<22} {'thr':>3} " + " ".join(f"{lib:>12}" for lib in args.libs)
          + "  vs best  vs torch    reuse  spread")
    for row in rows:
        cells = []
        for lib in args.libs:
            value = g(row, lib)
            flag = "!" if (row.get(lib, {}).get("error") or 0) > 1e-3 else " "
            cells.append(f"{value:>11.1f}{flag}" if value else f"{'n/a':>12}")
        ours = max([v for v in (g(row, "nnjit"), g(row, "nnjit_direct")) if v] or [0])
        peers = [g(row, lib) for lib in PEERS if g(row, lib)]
        vs_best = f"{ours / max(peers):>7.2f}x" if ours and peers else f"{'':>8}"
        vs_torch = f"{ours / g(row, 'torch'):>8.2f}x" if ours and g(row, "torch") else f"{'':>9}"
        reuse = g(row, "nnjit_reuse")
        vs_reuse = f"{reuse / max(peers):>7.2f}x" if reuse and peers else f"{'':>8}"
        spread = max(row.get(lib, {}).get("spread", 0)
                     for lib in ("nnjit", "nnjit_direct", "nnjit_reuse"))
        print(f"{row['config']:<22} {row['threads']:>3} {' '.join(cells)} {vs_best} "
              f"{vs_torch} {vs_reuse} {spread:>6.0%}")
    for key, note in notes.items():
        print("note:", key, note[:160])
    print("results:", path)


if __name__ == "__main__":
    main()
