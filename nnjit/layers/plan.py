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
    is made only when asked for (explain()): building one costs microseconds a call.
    ``key``: the sizes and settings the kernel's arguments follow from (hashable), which
    its workspace size is remembered by; None to derive that from the arguments."""
    __slots__ = ("parts", "kernel_args", "result", "key")

    def __init__(self, parts: tuple, kernel_args: tuple, result, key=None):
        self.parts = parts          # Decision's fields, in order
        self.kernel_args = kernel_args
        self.result = result
        self.key = key

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
                workspace, operation, algorithm, level, threads, args, self.key)),)
        policy.apply_num_threads()
        compiled(*args)
        _last.parts = self.parts
        return self.result


# Workspace sizes by (kernel, level, threads, the arguments' shapes and scalars): a size
# depends on nothing else, and working it out (tile shapes, cache budgets, which route a
# convolution takes) costs several microseconds a call, a tenth of a small layer's call.
_workspace_sizes: dict = {}


def _workspace_floats(workspace, operation, algorithm, level, threads, args, key=None) -> int:
    if key is None:
        key = tuple((a.shape, a.dtype) if isinstance(a, np.ndarray) else a for a in args)
    key = (operation, algorithm, level, threads, key)
    floats = _workspace_sizes.get(key)
    if floats is None:
        if len(_workspace_sizes) >= 4096:       # bounded: shapes a long run has left behind
            _workspace_sizes.clear()
        floats = _workspace_sizes[key] = workspace(level, *args)
    return floats


def decide(operation: str, algorithm: str, algorithm_reason: str, arguments: dict,
           kernel_args: tuple, result, key=None, level=None) -> Plan:
    """The Plan of a call; ``level``: policy.effective_level() where the caller has it."""
    level, level_reason = level or policy.effective_level()
    return Plan((operation, algorithm, algorithm_reason, level, level_reason,
                 policy.get_num_threads(), arguments), kernel_args, result, key)


def setting(value):
    """A layer's setting (padding, stride, sizes) as a key of a ``static`` decision: a tuple
    or list of ints as a tuple (a call's new list is then the same key); one holding
    anything else as a list, which is decided afresh: (1, True) and (1.0, 1) equal (1, 1)
    and hash alike, and must still be rejected."""
    if type(value) is tuple or type(value) is list:
        return tuple(value) if all(type(v) is int for v in value) else list(value)
    return value


def static(function):
    """A planner's shape-only part, memoized: what it decides, and every error it raises,
    follows from its arguments alone (sizes and settings, never array data), so a layer
    call validates its arrays and reuses the decision. Planning every call afresh took
    10 us, and 25-65 us right after a large kernel (whose data had pushed the
    interpreter's out of the caches): 4-7% of mobilenet.pw14's call at 1 and 2 threads.
    Errors are not remembered: a bad call raises again. Arguments are told apart by type
    (True, 1.0 and 1 are three keys: only 1 is a valid stride); unhashable ones are decided
    afresh."""
    from nnjit.errors import NnjitError

    memo = functools.lru_cache(maxsize=4096, typed=True)(function)

    @functools.wraps(function)
    def decided(*args):
        try:
            return memo(*args)
        except TypeError as error:
            if isinstance(error, NnjitError):
                raise
            return function(*args)
    decided.cache_clear = memo.cache_clear
    return decided


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
