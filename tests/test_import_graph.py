"""The package's import graph: no circles, imports pointing down, no private names shared.

Read from the source with :mod:`ast` (nothing is imported), counting
module-level imports and the imports inside functions (lazy imports) alike:
a lazy import is still a dependency. Edges from a package to its own
submodules (``xlatda.obs`` -> ``xlatda.obs.contract``) are re-exports, not
dependencies, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xlatda"

# The layers, lowest first: a module may import from its own layer or below.
KERNELS = ("xlatda.encoders", "xlatda.dynamics", "xlatda.methods")
UPPER = ("xlatda.model", "xlatda.io", "xlatda.api", "xlatda.forecast", "xlatda.generative",
         "xlatda.cycle", "xlatda.accessor", "xlatda.cli", "xlatda.batch", "xlatda.streaming")
LAYERS = (
    KERNELS,
    ("xlatda.model_store", "xlatda.pixel_score_model", "xlatda.model", "xlatda.io"),
    ("xlatda.latent_data", "xlatda.aux_inputs", "xlatda.encode_decode", "xlatda.forecast",
     "xlatda.api", "xlatda.generative"),
    ("xlatda.accessor", "xlatda.cli"),
)


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None, bool]]:
    """``(importer, imported module, imported name or None, at module level)`` for each import."""
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = package[: len(package) - node.level + 1]
                    base = ".".join(prefix + ([base] if base else []))
                targets = [(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base, a.name)
                           for a in node.names]
            else:
                continue
            for target, imported in targets:
                if target in mods and target != name:
                    out.append((name, target, imported, id(node) in top))
    return out


def _graph(edges, *, lazy: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for src, dst, _, top in edges:
        graph.setdefault(src, set())
        graph.setdefault(dst, set())
        if (top or lazy) and not dst.startswith(src + "."):
            graph[src].add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


@pytest.fixture(scope="module")
def edges():
    return _imports(_modules())


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_at_module_level(edges):
    assert _cycles(_graph(edges, lazy=False)) == []


def test_no_import_circles_counting_function_level_imports(edges):
    assert _cycles(_graph(edges, lazy=True)) == []


def test_no_private_name_is_imported_from_another_module(edges):
    private = sorted({(src, dst, imported) for src, dst, imported, _ in edges
                      if imported and imported.startswith("_") and not imported.startswith("__")})
    assert private == []


def test_kernels_import_nothing_from_the_xarray_layers(edges):
    upward = sorted({(src, dst) for src, dst, _, _ in edges
                     if src.startswith(KERNELS)
                     and any(dst == u or dst.startswith(u + ".") for u in UPPER)})
    assert upward == []


def test_imports_point_down_the_layers(edges):
    upward = sorted({(src, dst) for src, dst, _, _ in edges
                     if _layer(src) is not None and _layer(dst) is not None
                     and _layer(dst) > _layer(src) and not dst.startswith(src + ".")})
    assert upward == []
