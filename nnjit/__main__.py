"""Command line: python -m nnjit info | warmup | bench | asm."""
from __future__ import annotations

import argparse
import sys


def info_text() -> str:
    import numba

    from nnjit.dispatch import policy, registry
    from nnjit.dispatch.cache import cache_dir, cache_enabled
    from nnjit.dispatch.cpu import _PUBLIC_NAMES, cpu_info

    info = cpu_info()
    level, why = policy.effective_level()
    features = [name for name in _PUBLIC_NAMES if _PUBLIC_NAMES[name] in info.features]
    lines = [
        f"CPU:            {info.brand} ({info.vendor}, {info.arch}, {info.logical_cores} logical cores)",
        f"LLVM host cpu:  {info.llvm_cpu_name}",
        f"features:       {' '.join(dict.fromkeys(features)) or '(none of interest)'}",
    ]
    if info.disagreements:
        lines.append(f"  ignored (py-cpuinfo and LLVM disagree): {' '.join(sorted(info.disagreements))}")
    lines.append(f"caches:         L1d {info.l1d_bytes // 1024} KiB, L2 {info.l2_bytes // 1024} KiB, "
                 f"L3 {info.l3_bytes // 1024} KiB (shared by {info.l1d_shared_by}/"
                 f"{info.l2_shared_by}/{info.l3_shared_by} cores)")
    lines.append("ISA levels:")
    for lv in policy.isa_levels():
        runnable = lv in info.runnable
        reason = "runnable" if runnable else "no: missing " + ", ".join(info.why_not[lv.name])
        mark = "*" if lv == level else " "
        lines.append(f"  {mark} {lv.name:<13} {lv.llvm_cpu + ' ' + lv.llvm_features:<34} "
                     f"{lv.vector_bits:>3}-bit  {reason}")
    lines.append(f"level in effect: {level.name} ({why})")
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = f"not started yet (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"
    lines.append(f"threads:        {policy.get_num_threads()} (threading layer: {layer})")
    lines.append(f"disk cache:     {cache_dir()} ({'on' if cache_enabled() else 'off: NNJIT_CACHE=0'})")
    lines.append(f"kernels:        {', '.join(f'{s.operation}/{s.algorithm}' for s in registry.specs())}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnjit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="CPU, ISA levels, level in effect, threads, cache")
    warm = commands.add_parser("warmup", help="compile (or load) kernels ahead of use")
    warm.add_argument("--operations", nargs="*", default=None)
    warm.add_argument("--levels", nargs="*", default=None)
    warm.add_argument("--processes", type=int, default=1,
                      help="compile in this many processes first (through the disk cache)")
    asm = commands.add_parser("asm", help="print a kernel's assembly")
    asm.add_argument("operation")
    asm.add_argument("--level", default=None)
    asm.add_argument("--algorithm", default=None)
    commands.add_parser("bench", help="benchmark nnjit against torch, ncnn and onnxruntime "
                        "(options: python -m nnjit bench --help)", add_help=False)
    options, rest = parser.parse_known_args(argv)
    if rest and options.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if options.command == "info":
        print(info_text())
    elif options.command == "warmup":
        from nnjit.dispatch.registry import warmup

        count = warmup(options.operations, options.levels, processes=options.processes)
        print(f"{count} kernel variants ready")
    elif options.command == "asm":
        from nnjit.dispatch.registry import inspect_asm

        print(inspect_asm(options.operation, options.level, options.algorithm))
    elif options.command == "bench":
        from nnjit.bench.run import main as bench_main

        return bench_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
