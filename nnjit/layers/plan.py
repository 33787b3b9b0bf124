"""How a layer call is decided and run, and how ``explain()`` reports it.

Each public layer is written as a *planner*: it validates its arguments (raising before any
output is touched), allocates or checks the output, and returns a ``Plan`` naming the kernel
(operation, algorithm, level) and its arguments. ``@layer`` turns a planner into the public
function (plan, then run); ``explain()`` runs only the planner.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from nnjit.dispatch import policy, registry
from nnjit.dispatch.isa import IsaLevel

LAYERS: dict[str, object] = {}
_last = threading.local()


@dataclass(frozen=True)
class Decision:
    operation: str
    algorithm: str
    algorithm_reason: str
    level: IsaLevel
    level_reason: str
    threads: int
    # The call's arguments as {name: shape or value}, formatted only when read: formatting
    # costs microseconds on every call, and shapes (not arrays) keep nothing alive.
    described: dict

    @property
    def arguments(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.described.items())

    def __str__(self) -> str:
        return (f"{self.operation}({self.arguments})\n"
                f"  algorithm: {self.algorithm} ({self.algorithm_reason})\n"
                f"  ISA level: {self.level.name} ({self.level_reason})\n"
                f"  threads:   {self.threads}")


class Plan:
    """A decided call: the kernel, its arguments and what the layer returns. Its Decision
    is made only when asked for (explain()): building one costs microseconds a call."""
    __slots__ = ("parts", "kernel_args", "result")

    def __init__(self, parts: tuple, kernel_args: tuple, result):
        self.parts = parts          # Decision's fields, in order
        self.kernel_args = kernel_args
        self.result = result

    @property
    def decision(self) -> Decision:
        return Decision(*self.parts)

    def run(self):
        operation, algorithm, _, level, _, threads = self.parts[:6]
        compiled = registry.variant(operation, algorithm, level)
        args = self.kernel_args
        workspace = registry.spec(operation, algorithm).workspace
        if workspace is not None:
            args += (registry.workspace_buffer(_workspace_floats(
                workspace, operation, algorithm, level, threads, args)),)
        policy.apply_num_threads()
        compiled(*args)
        _last.parts = self.parts
        return self.result


# Workspace sizes by (kernel, level, threads, the arguments' shapes and scalars): a size
# depends on nothing else, and working it out (tile shapes, cache budgets, which route a
# convolution takes) costs several microseconds a call, a tenth of a small layer's call.
_workspace_sizes: dict = {}


def _workspace_floats(workspace, operation, algorithm, level, threads, args) -> int:
    key = (operation, algorithm, level, threads) + tuple(
        (a.shape, a.dtype) if isinstance(a, np.ndarray) else a for a in args)
    floats = _workspace_sizes.get(key)
    if floats is None:
        if len(_workspace_sizes) >= 4096:       # bounded: shapes a long run has left behind
            _workspace_sizes.clear()
        floats = _workspace_sizes[key] = workspace(level, *args)
    return floats


def decide(operation: str, algorithm: str, algorithm_reason: str, arguments: dict,
           kernel_args: tuple, result) -> Plan:
    level, level_reason = policy.effective_level()
    return Plan((operation, algorithm, algorithm_reason, level, level_reason,
                 policy.get_num_threads(), arguments), kernel_args, result)


def layer(planner):
    """Make the public layer function from its planner (same name, signature, docstring)."""

    @functools.wraps(planner)
    def run(*args, **kwargs):
        return planner(*args, **kwargs).run()

    run.plan = planner
    LAYERS[planner.__name__] = run
    return run


def explain(operation=None, *args, **kwargs) -> Decision | None:
    """Describe a layer call.

    ``explain()``: the last call made on this thread (None before any).
    ``explain(operation, *args, **kwargs)``: what that call would run, without running it
    (``operation`` is a layer name such as "relu_output", or the layer function itself).
    """
    if operation is None:
        parts = getattr(_last, "parts", None)
        return None if parts is None else Decision(*parts)
    name = getattr(operation, "__name__", operation)
    if name not in LAYERS:
        from nnjit.errors import InvalidArgument

        raise InvalidArgument(f"explain(operation={operation!r}): not a layer; layers are "
                              + ", ".join(sorted(LAYERS)))
    return LAYERS[name].plan(*args, **kwargs).decision
