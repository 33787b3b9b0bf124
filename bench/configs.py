"""Benchmark configurations: the memory-bound layers of docs' peer results (ReLU, softmax,
max pooling), with the byte counts their GB/s figures use."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

F32 = 4  # bytes


@dataclass(frozen=True)
class Config:
    name: str
    op: str                      # "relu" | "softmax" | "maxpool"
    shape: tuple[int, ...]       # input shape
    pool: int = 0                # max pooling window (square)
    stride: int = 0
    padding: int = 0
    note: str = ""

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.op != "maxpool":
            return self.shape
        n, c, h, w = self.shape
        oh = (h + 2 * self.padding - self.pool) // self.stride + 1   # floor mode, as torch
        ow = (w + 2 * self.padding - self.pool) // self.stride + 1
        return n, c, oh, ow

    @property
    def bytes(self) -> int:
        """Bytes the GB/s figure counts: read + write (ReLU, softmax), input + output (pool)."""
        return (int(np.prod(self.shape)) + int(np.prod(self.out_shape))) * F32

    @property
    def tolerance(self) -> float:
        """Max abs difference from nnjit's output accepted for a peer."""
        return 1e-5 if self.op == "softmax" else 0.0

    def make_input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape, dtype=np.float32)
        if self.op == "softmax":
            x *= 4.0
        return x

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape))
        if self.op == "maxpool":
            return f"max{self.pool}x{self.pool}/{self.stride} p{self.padding} on {dims}"
        return f"{self.op} {dims}" + (f" {self.note}" if self.note else "")

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(out_shape=list(self.out_shape), bytes=self.bytes, description=self.describe())
        return d


CONFIGS: tuple[Config, ...] = (
    Config("relu.16x64x224x224", "relu", (16, 64, 224, 224), note="in place, slope 0"),
    Config("softmax.8192x4096", "softmax", (8192, 4096), note="axis 1"),
    Config("softmax.256x1000", "softmax", (256, 1000), note="axis 1"),
    Config("vgg.pool1", "maxpool", (16, 64, 224, 224), pool=2, stride=2, padding=0),
    Config("resnet.pool", "maxpool", (32, 64, 112, 112), pool=3, stride=2, padding=1),
    Config("alexnet.pool1", "maxpool", (128, 64, 55, 55), pool=3, stride=2, padding=0),
)


def select(only: str | None) -> list[Config]:
    """Configs whose name contains ``only`` (any of its comma-separated substrings)."""
    if not only:
        return list(CONFIGS)
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    return [c for c in CONFIGS if any(w in c.name for w in wanted)]


def by_name(name: str) -> Config:
    for c in CONFIGS:
        if c.name == name:
            return c
    raise KeyError(name)
