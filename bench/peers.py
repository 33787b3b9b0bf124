"""How each library runs a benchmark configuration.

Every library is a ``Peer``: ``available()`` says whether it can run here (and why not),
``setup(threads)`` fixes its thread count, and ``prepare(config, x)`` returns a ``Runner``
whose ``call()`` runs the layer once on buffers allocated in advance and whose ``result()``
is the output of the latest call. ``prepare`` raises ``NotSupported`` for a configuration
the library cannot run. Only numpy and nnjit are required; torch, ncnn and onnxruntime are
imported lazily and reported as n/a when missing.
"""
from __future__ import annotations

import struct
from typing import Callable

import numpy as np

from nnjit.bench.configs import Config


def thread_env(threads: int, **extra) -> dict:
    """os.environ for a worker process with every BLAS and OpenMP pool set to ``threads``
    (OpenBLAS and oneDNN fix their pools when they load)."""
    import os

    return dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads), **extra)


def worker_parser(doc: str, repeats: int):
    """The options every worker-based benchmark takes: thread counts, repeats per block,
    alternating blocks, and the hidden --worker that runs one thread count."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=repeats, help="repeats per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_worker(script: str, threads: int, *args: str, **extra_env) -> list:
    """Run ``script --worker --threads N *args`` in a fresh process (its own thread pools,
    set by thread_env) and return the JSON list its last line of output holds (its stderr,
    progress included, passes through)."""
    import json
    import subprocess
    import sys

    command = [sys.executable, script, "--worker", "--threads", str(threads), *args]
    done = subprocess.run(command, env=thread_env(threads, **extra_env),
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} --threads {threads} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ncnn_net(threads: int, layer: str, weights: bytes = b"", fp16_storage: bool = True):
    """A two-layer ncnn Net, ``Input data`` then ``layer`` (a param line reading blob data
    and writing blob out), its model the raw float32 ``weights``; blob and workspace memory
    recycled between calls, as ncnn applications do. Returns (net, keep): keep holds what
    must outlive the net (its allocators). fp16_storage=False keeps float32 weights (ncnn's
    default stores them as fp16 on x86 with F16C)."""
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    if not fp16_storage:
        net.opt.use_fp16_storage = False
        net.opt.use_fp16_packed = False
        net.opt.use_fp16_arithmetic = False
    keep = (ncnn.UnlockedPoolAllocator(), ncnn.PoolAllocator())
    net.opt.blob_allocator, net.opt.workspace_allocator = keep
    if net.load_param_mem(f"7767517\n2 2\nInput data 0 1 data\n{layer}\n") != 0:
        raise RuntimeError(f"ncnn: load_param failed for {layer!r}")
    if weights:
        # model file: a 4-byte tag 0 (raw float32) before the weights (the binding's
        # load_model_mem returns nothing to check)
        net.load_model_mem(np.zeros(1, np.uint32).tobytes() + weights)
    elif net.load_model(ncnn.DataReaderFromEmpty()) != 0:
        raise RuntimeError(f"ncnn: load_model failed for {layer!r}")
    return net, keep


def ncnn_extract(net, mat):
    """Run the net on ``mat`` (blob data -> blob out, NCHW out: extract type 0)."""
    ex = net.create_extractor()
    ex.input("data", mat)
    ret, out = ex.extract("out", 0)
    if ret != 0:
        raise RuntimeError(f"ncnn extract returned {ret}")
    return out


class NotSupported(Exception):
    pass


class Runner:
    def __init__(self, call: Callable[[], object], result: Callable[[], np.ndarray],
                 note: str = "", keep=()):
        self.call = call
        self.result = result
        self.note = note
        self._keep = keep        # objects that must outlive the runner (shared buffers, Mats)


class Peer:
    name = "?"

    def __init__(self):
        self.threads = 1
        self._why_not = None
        try:
            self._import()
        except Exception as e:  # ImportError, or a broken install
            self._why_not = f"{type(e).__name__}: {str(e).strip()[:200]}"

    def _import(self):
        pass

    def available(self) -> tuple[bool, str]:
        return self._why_not is None, self._why_not or ""

    def version(self) -> str | None:
        return None

    def setup(self, threads: int) -> None:
        self.threads = threads

    def prepare(self, cfg: Config, x: np.ndarray) -> Runner:
        raise NotImplementedError


# --------------------------------------------------------------------------------- nnjit

class Nnjit(Peer):
    name = "nnjit"

    def _import(self):
        import nnjit
        self.mod = nnjit

    def version(self):
        return self.mod.__version__

    def setup(self, threads):
        super().setup(threads)
        self.mod.set_num_threads(threads)

    def prepare(self, cfg, x):
        nj = self.mod
        if cfg.op == "relu":
            buf = x.copy()
            return Runner(lambda: nj.relu_output(buf, 0.0, out=buf), lambda: buf,
                          "in place")
        if cfg.op == "softmax":
            # in place, as ncnn's forward_inplace (the peer the issue compares against)
            buf = x.copy()
            return Runner(lambda: nj.softmax_output(buf, out=buf), lambda: buf, "in place")
        if cfg.op == "maxpool":
            out = np.empty(cfg.out_shape, np.float32)
            return Runner(lambda: nj.max_pooling_output(x, cfg.pool, cfg.stride, cfg.padding,
                                                        ceil_mode=False, out=out),
                          lambda: out)
        raise NotSupported(cfg.op)


# --------------------------------------------------------------------------------- torch

class Torch(Peer):
    name = "torch"

    def _import(self):
        import torch
        self.torch = torch

    def version(self):
        return self.torch.__version__

    def setup(self, threads):
        super().setup(threads)
        self.torch.set_num_threads(threads)
        try:
            self.torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already started

    def prepare(self, cfg, x):
        torch = self.torch
        if cfg.op == "relu":
            buf = x.copy()
            t = torch.from_numpy(buf)          # shares buf
            return Runner(lambda: torch.relu_(t), lambda: buf, "torch.relu_ in place",
                          keep=(t,))
        if cfg.op == "softmax":
            t = torch.from_numpy(x)
            out = torch.empty_like(t)
            return Runner(lambda: torch.softmax(t, 1, out=out), lambda: out.numpy(),
                          "torch.softmax(out=)")
        if cfg.op == "maxpool":
            t = torch.from_numpy(x)
            box = [None]
            fn = torch.nn.functional.max_pool2d

            def call():
                box[0] = fn(t, cfg.pool, cfg.stride, cfg.padding)
            return Runner(call, lambda: box[0].numpy(), "F.max_pool2d (allocates)")
        raise NotSupported(cfg.op)


# ---------------------------------------------------------------------------------- ncnn

class Ncnn(Peer):
    """ncnn's layers on Mats that share the numpy buffers. Layer.forward (out of place) of
    the python binding crashes here, so ReLU and softmax run through Layer.forward_inplace
    and pooling through a one-layer Net (Extractor)."""
    name = "ncnn"

    def _import(self):
        import ncnn
        self.ncnn = ncnn

    def version(self):
        return getattr(self.ncnn, "__version__", None)

    def setup(self, threads):
        super().setup(threads)
        try:
            self.ncnn.set_omp_num_threads(threads)
        except Exception:
            pass

    def _option(self):
        opt = self.ncnn.Option()
        opt.num_threads = self.threads
        opt.use_vulkan_compute = False
        return opt

    def _layer(self, kind, params, opt):
        ncnn = self.ncnn
        pd = ncnn.ParamDict()
        for k, v in params.items():
            pd.set(k, v)
        layer = ncnn.create_layer(kind)
        if layer.load_param(pd) != 0 or layer.create_pipeline(opt) != 0:
            raise RuntimeError(f"ncnn {kind}: load_param/create_pipeline failed")
        return layer

    def prepare(self, cfg, x):
        ncnn = self.ncnn
        opt = self._option()
        if cfg.op == "relu":
            n, c, h, w = cfg.shape
            buf = x.copy()
            mat = ncnn.Mat(buf.reshape(n * c, h, w))      # shares buf: keep both alive
            layer = self._layer("ReLU", {0: 0.0}, opt)

            def call():
                if layer.forward_inplace(mat, opt) != 0:
                    raise RuntimeError("ncnn ReLU forward_inplace failed")
            return Runner(call, lambda: buf, "Layer ReLU forward_inplace",
                          keep=(mat, layer, opt))
        if cfg.op == "softmax":
            buf = x.copy()
            mat = ncnn.Mat(buf)                            # 2-D: w = channels, h = batch
            layer = self._layer("Softmax", {0: 1, 1: 1}, opt)   # axis 1 (fixbug0=1)

            def call():
                if layer.forward_inplace(mat, opt) != 0:
                    raise RuntimeError("ncnn Softmax forward_inplace failed")
            return Runner(call, lambda: buf, "Layer Softmax forward_inplace (in place)",
                          keep=(mat, layer, opt))
        if cfg.op == "maxpool":
            n, c, h, w = cfg.shape
            p = cfg.padding
            # pad_mode 1 = valid: the explicit pads only, so floor-mode sizes as torch's
            net, keep = ncnn_net(self.threads, f"Pooling pool 1 1 data out 0=0 1={cfg.pool} "
                                               f"2={cfg.stride} 3={p} 13={p} 14={p} 15={p} 5=1")
            mat = ncnn.Mat(x.reshape(n * c, h, w))         # shares x
            # nnjit takes and returns plain NCHW, so ncnn does too: its net packs the input to
            # the layout its pooling prefers (elempack 16 with AVX-512) and extract type 0
            # unpacks the output; both are part of the timed call, as for an NCHW user.
            box = [None]

            def call():
                box[0] = ncnn_extract(net, mat)

            def result():
                return np.array(box[0]).reshape(cfg.out_shape)
            return Runner(call, result, "Net(Input, Pooling), NCHW in and out (packing "
                                        "inside the timed call)", keep=(net, mat, x, keep))
        raise NotSupported(cfg.op)


# --------------------------------------------------------------------------- onnxruntime

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1                       # negative int64 -> two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, value) -> bytes:
    """One protobuf field: int -> varint, float -> fixed32, str/bytes -> length-delimited."""
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(num << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + bytes(value)


def _attribute(name: str, value) -> bytes:
    # AttributeProto: name=1, f=2, i=3, ints=8, type=20 (FLOAT=1, INT=2, INTS=7)
    if isinstance(value, (list, tuple)):
        return _field(1, name) + b"".join(_field(8, int(v)) for v in value) + _field(20, 7)
    if isinstance(value, float):
        return _field(1, name) + _field(2, value) + _field(20, 1)
    return _field(1, name) + _field(3, int(value)) + _field(20, 2)


def _value_info(name: str, shape) -> bytes:
    dims = b"".join(_field(1, _field(1, int(d))) for d in shape)     # Dimension.dim_value
    tensor = _field(1, 1) + _field(2, dims)                         # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor))           # TypeProto.tensor_type


def onnx_model(op_type: str, in_shape, out_shape, attrs: dict, opset: int = 17) -> bytes:
    """A one-node ONNX model (input "x", output "y"), encoded by hand so that the `onnx`
    package is not needed (it is used instead when installed)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        node = (_field(1, "x") + _field(2, "y") + _field(3, "n0") + _field(4, op_type)
                + b"".join(_field(5, _attribute(k, v)) for k, v in attrs.items()))
        graph = (_field(1, node) + _field(2, "bench") + _field(11, _value_info("x", in_shape))
                 + _field(12, _value_info("y", out_shape)))
        return (_field(1, 8) + _field(2, "nnjit.bench") + _field(7, graph)
                + _field(8, _field(1, "") + _field(2, opset)))
    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


class Ort(Peer):
    """onnxruntime (CPU provider) on one-node graphs, run with IO binding on numpy buffers
    allocated in advance (ReLU's output is bound to its input: in place)."""
    name = "ort"

    def _import(self):
        import onnxruntime
        self.ort = onnxruntime
        try:
            import onnx  # noqa: F401
            self.builder = "onnx.helper"
        except ImportError:
            self.builder = "hand-encoded protobuf (onnx not installed)"

    def version(self):
        return self.ort.__version__

    def _session(self, model: bytes):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        return self.ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def prepare(self, cfg, x):
        if cfg.op == "relu":
            src = x.copy()
            out = src                                 # in place
            model = onnx_model("Relu", cfg.shape, cfg.shape, {})
        elif cfg.op == "softmax":
            src = x
            out = np.empty_like(x)
            model = onnx_model("Softmax", cfg.shape, cfg.shape, {"axis": 1})
        elif cfg.op == "maxpool":
            src = x
            out = np.empty(cfg.out_shape, np.float32)
            p = cfg.padding
            model = onnx_model("MaxPool", cfg.shape, cfg.out_shape,
                               {"kernel_shape": [cfg.pool, cfg.pool],
                                "strides": [cfg.stride, cfg.stride],
                                "pads": [p, p, p, p], "ceil_mode": 0})
        else:
            raise NotSupported(cfg.op)
        sess = self._session(model)
        binding = sess.io_binding()
        binding.bind_input("x", "cpu", 0, np.float32, list(src.shape), src.ctypes.data)
        binding.bind_output("y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        run = sess.run_with_iobinding
        note = ("in place, " if out is src else "") + "IO binding; model: " + self.builder
        return Runner(lambda: run(binding), lambda: out, note, keep=(sess, binding, src, out))


PEERS = (Nnjit, Torch, Ncnn, Ort)
PEER_NAMES = tuple(p.name for p in PEERS[1:])
