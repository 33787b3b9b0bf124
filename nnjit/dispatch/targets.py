"""One Numba target per ISA level, so one process holds real per-level machine code.

Plain @njit builds a single LLVM target machine per process from the host CPU. Here each
level gets its own target token, codegen (the level's LLVM cpu name and features, which
also key Numba's disk cache through ``magic_tuple()``), typing and target contexts, and
dispatcher class (shared/design/isa-targets.md). Three details are load-bearing, and
tests/test_isa_codegen.py would catch a Numba upgrade that breaks them:

1. ``compile()`` runs inside ``target_override(level)``, or prange reductions fail to lower;
2. every level has its own typing context;
3. a plain ``@njit`` helper called from a kernel is re-jitted for the calling level (the
   typing context's ``resolve_value_type``), so no host-ISA helper is linked into, say,
   the "sse4" build of a kernel.
"""
from __future__ import annotations

import threading
from functools import cached_property, partial

from nnjit.dispatch.isa import IsaLevel, host_arch

_lock = threading.RLock()
_targets: dict[tuple[str, str], "LevelTarget"] = {}


class LevelTarget:
    """The Numba machinery for one ISA level, created on first use."""

    def __init__(self, level: IsaLevel):
        import numba
        from numba.core import cpu, dispatcher, registry, typing
        from numba.core.codegen import JITCPUCodegen
        from numba.core.target_extension import (CPU, dispatcher_registry, jit_registry,
                                                 target_override, target_registry)

        self.level = level
        self.name = f"nnjit_{level.arch}_{level.name}"
        cpu_name, features = level.llvm_cpu, level.llvm_features
        this = self

        class LevelCodegen(JITCPUCodegen):
            def _get_host_cpu_name(self):
                return cpu_name or super()._get_host_cpu_name()

            def _get_host_cpu_features(self):
                return features if cpu_name else super()._get_host_cpu_features()

        if level.arch != host_arch():
            LevelCodegen = _foreign_codegen(LevelCodegen, level.arch)

        class LevelTargetContext(cpu.CPUContext):
            def init(self):
                super().init()
                self._internal_codegen = LevelCodegen("numba.exec")

        if level.arch != host_arch():
            LevelTargetContext = _foreign_context(LevelTargetContext)

        class LevelTypingContext(typing.Context):
            def resolve_value_type(self, val):
                if isinstance(val, dispatcher.Dispatcher) and not isinstance(
                        val, this.dispatcher_class):
                    val = this.retarget(val)
                return super().resolve_value_type(val)

        class LevelDescriptor(registry.CPUTarget):
            @cached_property
            def _toplevel_typing_context(self):
                return LevelTypingContext()

            @cached_property
            def _toplevel_target_context(self):
                return LevelTargetContext(self.typing_context, self._target_name)

        descriptor = LevelDescriptor(self.name)
        target_name = self.name

        class LevelDispatcher(dispatcher.Dispatcher):
            targetdescr = descriptor

            def compile(self, sig):
                with target_override(target_name):
                    return super().compile(sig)

            def __reduce__(self):     # dynamically made classes do not pickle by default
                return _rebuild_dispatcher, (level.arch, level.name, self.py_func,
                                             self.targetoptions)

        token = type(f"Target_{level.arch}_{level.name}", (CPU,), {})
        target_registry[self.name] = token
        dispatcher_registry[token] = LevelDispatcher
        jit_registry[token] = partial(numba.jit, _target=self.name)

        self.descriptor = descriptor
        self.dispatcher_class = LevelDispatcher
        self._retargeted: dict[int, object] = {}

    def jit(self, py_func, **options):
        """A dispatcher that compiles ``py_func`` for this level, lazily."""
        options.setdefault("nopython", True)
        return self.dispatcher_class(py_func, targetoptions=options)

    def retarget(self, host_dispatcher):
        """This level's twin of a plain @njit helper (made once, then reused)."""
        key = id(host_dispatcher.py_func)
        with _lock:
            twin = self._retargeted.get(key)
            if twin is None:
                twin = self.jit(host_dispatcher.py_func, **dict(host_dispatcher.targetoptions))
                self._retargeted[key] = (twin, host_dispatcher)  # keep the key's owner alive
                return twin
            return twin[0]

    @property
    def codegen(self):
        return self.descriptor.target_context.codegen()


_TRIPLES = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}


def _foreign_codegen(base, arch):
    """A codegen for another architecture, for reading its assembly only: Numba's codegen
    takes the process triple in two places (the target machine and each new module), so the
    triple is swapped while the codegen is built and set on every module it makes. Code it
    produces is never called."""
    import contextlib

    import llvmlite.binding as ll
    from numba.core import codegen as numba_codegen

    triple = _TRIPLES[arch]
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()

    @contextlib.contextmanager
    def process_triple():
        saved = numba_codegen.ll.get_process_triple
        numba_codegen.ll.get_process_triple = lambda: triple
        try:
            yield
        finally:
            numba_codegen.ll.get_process_triple = saved

    class ForeignCodegen(base):
        def __init__(self, module_name):
            with process_triple():        # under Numba's compiler lock (context init)
                super().__init__(module_name)

        def _create_empty_module(self, name):
            module = super()._create_empty_module(name)
            module.triple = triple
            return module

    return ForeignCodegen


def _foreign_context(base):
    """Links kernels of another architecture with an NRT library compiled for that
    architecture, not the host's (whose IR holds host-only intrinsics)."""
    from numba.core import fastmathpass
    from numba.core.runtime import nrtdynmod

    class ForeignTargetContext(base):
        _nrt_library = None

        def post_lowering(self, mod, library):
            if self.fastmath:
                fastmathpass.rewrite_module(mod, self.fastmath)
            if ForeignTargetContext._nrt_library is None:
                ForeignTargetContext._nrt_library = nrtdynmod.compile_nrt_functions(self)
            library.add_linking_library(ForeignTargetContext._nrt_library)

    return ForeignTargetContext


def _rebuild_dispatcher(arch, level_name, py_func, options):
    from nnjit.dispatch.isa import level_named

    return target_for(level_named(level_name, arch)).jit(py_func, **options)


def target_for(level: IsaLevel) -> LevelTarget:
    """The (process-wide, created-once) Numba target for a level."""
    key = (level.arch, level.name)
    with _lock:
        target = _targets.get(key)
        if target is None:
            _ensure_host_context()
            target = _targets[key] = LevelTarget(level)
        return target


def _ensure_host_context():
    # NRT's helper library is compiled by whichever context initialises first; let that be
    # the host's, so no level's restricted ISA leaks into Numba's shared runtime.
    from numba.core.registry import cpu_target

    cpu_target.target_context.refresh()
