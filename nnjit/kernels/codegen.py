"""Kernels generated as Python source: register tiles unrolled when they are built, their
accumulators named values (one per row and vector) that LLVM keeps in registers."""
from __future__ import annotations


def define(lines: list[str], filename: str, namespace: dict, name: str | None = None):
    """The one function that ``lines`` define, compiled under ``filename`` (the generating
    module's file: Numba's disk cache locates a function by its file and invalidates the
    entries when that file changes), renamed ``name``."""
    exec(compile("\n".join(lines) + "\n", filename, "exec"), namespace)
    fn = namespace[lines[0].split()[1].split("(")[0]]
    if name:
        fn.__qualname__ = fn.__name__ = name
    return fn


def dispatcher(name: str, params: str, functions: dict, filename: str):
    """An inlined Numba function name(which, params...) that calls functions[which](params...)
    (``which`` one of the keys, ints): one call site for a family of generated kernels."""
    from numba import njit

    lines = [f"def {name}(which, {params}):"]
    for i, key in enumerate(functions):
        lines.append(f"    {'if' if i == 0 else 'elif'} which == {key}:")
        lines.append(f"        f{key}({params})")
    return njit(inline="always")(define(lines, filename,
                                        {f"f{key}": f for key, f in functions.items()}))


def prefetch_tile(mr: int, nr: int, row: str = "c[row0 + {i}]", col0: str = "col0"):
    """Lines prefetching each row of an MR x NR float tile of C (every 64-byte line): the
    tile is read or written only after the k loop, which hides the misses."""
    lines = []
    for i in range(mr):
        lines.append(f"    row = {row.format(i=i)}")
        lines += [f"    prefetch(row, {col0} + {j})" for j in range(0, nr, 16)]
        lines.append(f"    prefetch(row, {col0} + {nr - 1})")
    return lines


def store_tile(acc: list[list[str]], width: int, row: str = "c[row0 + {i}]",
               col0: str = "col0") -> list[str]:
    """Lines storing accumulators acc[i][v] into C's row i, vector v: added to C when
    ``update`` is true, else overwriting it."""
    lines = []
    for mode in ("update", "store"):
        lines.append("    if update:" if mode == "update" else "    else:")
        for i, vectors in enumerate(acc):
            lines.append(f"        row = {row.format(i=i)}")
            for v, value in enumerate(vectors):
                at = f"{col0} + {v * width}"
                if mode == "update":
                    value = f"vadd(vload(row, {at}), {value})"
                lines.append(f"        vstore(row, {at}, {value})")
    return lines


def accumulators(rows: int, nr: int, width: int, prefix: str = "c") -> list[list[str]]:
    """Names of an MR x NR tile's accumulators: row i, vector v is {prefix}{i}_{v}."""
    nv = nr // width
    assert nv * width == nr, (rows, nr, width)
    return [[f"{prefix}{i}_{v}" for v in range(nv)] for i in range(rows)]


def multiply_add_step(acc: list[list[str]], a: str, b_at: str, width: int,
                      indent: str) -> list[str]:
    """Lines of one k step: load the vectors of B's row (at ``b_at`` + v * width of bp),
    then per row i broadcast ``a.format(i=i)`` and multiply-add it into row i."""
    lines = [f"{indent}b{v} = vload(bp, {b_at} + {v * width})" for v in range(len(acc[0]))]
    for i, vectors in enumerate(acc):
        lines.append(f"{indent}a = vsplat({a.format(i=i)})")
        lines += [f"{indent}{c} = vfma(a, b{v}, {c})" for v, c in enumerate(vectors)]
    return lines


def clear_tile(acc: list[list[str]], indent: str = "    ") -> list[str]:
    """Lines setting every accumulator to zero (before the k loop)."""
    return [f"{indent}{c} = vzero()" for vectors in acc for c in vectors]


def add_tile(acc: list[list[str]], partial: list[list[str]], indent: str) -> list[str]:
    """Lines adding accumulators ``partial`` into ``acc``, element by element."""
    return [f"{indent}{c} = vadd({c}, {p})" for cs, ps in zip(acc, partial)
            for c, p in zip(cs, ps)]
