"""Helpers to run the ```python blocks of a Markdown page in order, in one namespace."""

from __future__ import annotations

import re
import time
from pathlib import Path

FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order (other fences are not code)."""
    return FENCE.findall(Path(path).read_text())


def run_blocks(path: Path, namespace: dict | None = None) -> tuple[dict, list[float]]:
    """Execute every python block of ``path`` in one namespace; returns it and the seconds
    each block took. A failing block is named in the traceback (``<page> block <i>``)."""
    ns = {"__name__": f"page_{Path(path).stem}"} if namespace is None else namespace
    seconds = []
    for i, code in enumerate(python_blocks(path)):
        t0 = time.perf_counter()
        exec(compile(code, f"{Path(path).name} block {i}", "exec"), ns)
        seconds.append(time.perf_counter() - t0)
    return ns, seconds


def undefined_names(blocks: list[str]) -> list[tuple[int, str]]:
    """Names a block reads that no earlier block (nor itself) defines and that are no builtin.

    Static (nothing runs): ``(block index, name)`` pairs, to catch snippets that
    use ``rng`` or ``train`` without defining them.
    """
    import builtins
    import symtable

    defined = set(dir(builtins)) | {"__name__"}
    missing = []

    def reads(table: symtable.SymbolTable) -> set[str]:
        out = {s.get_name() for s in table.get_symbols()
               if s.is_referenced() and (table.get_type() == "module" or s.is_global())}
        for child in table.get_children():
            out |= {n for n in reads(child) if child.lookup(n).is_global()}
        return out

    for i, code in enumerate(blocks):
        table = symtable.symtable(code, f"block {i}", "exec")
        own = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
        missing += [(i, n) for n in sorted(reads(table) - defined - own)]
        defined |= own
    return missing
