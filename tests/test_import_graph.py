"""The import graph of ``metakd`` and ``datamodules`` has no circles (issue 24: "The import graph has no
circles").

A static check over every module's ``import`` statements (``ast``), in two graphs:

- the module-level imports alone (what runs when a module is imported): no circle at all;
- module-level and function-level imports together (a function-level import is still a dependency):
  no circle but the known ones in :data:`KNOWN_CYCLES`, which the branches that remove them empty.

An edge goes to the module an import names (``from a.b import c`` goes to ``a.b.c`` when that is a
module, else to ``a.b``). Not edges: imports under ``if TYPE_CHECKING:`` (they never run), the implicit
import of a module's parent package, and ``importlib`` imports by name (a package's ``__init__`` loading
its plugin files, ``metakd.__getattr__``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metakd", "datamodules")

KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Circles that exist today and are being removed elsewhere; delete an entry when its circle is gone."""


def modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    """The imports of one module as ``(dotted name, level)`` with level ``module`` or ``function``."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[tuple[str, str]] = []

    def _add(self, name: str) -> None:
        self.found.append((name, "function" if self.depth else "module"))

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        for alias in node.names:
            self._add(f"{base}.{alias.name}")


def import_graph() -> dict[str, dict[str, set[str]]]:
    """module -> level -> the modules of the packages it imports."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in known.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges: dict[str, set[str]] = {"module": set(), "function": set()}
        for name, level in visitor.found:
            target = resolve(name)
            if target is not None and target != module:
                edges[level].add(target)
        graph[module] = edges
    return graph


def cycles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def describe(found: set[frozenset[str]], edges: dict[str, set[str]]) -> str:
    return "; ".join(
        ", ".join(f"{a} -> {b}" for a in sorted(cycle) for b in sorted(edges[a] & cycle)) for cycle in found
    )


def test_the_check_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(edges) == {frozenset({"a", "b", "c"})}


def test_module_level_imports_have_no_circle() -> None:
    edges = {module: levels["module"] for module, levels in import_graph().items()}
    found = cycles(edges)
    assert not found, f"import circles at module level: {describe(found, edges)}"


def test_no_circles_but_the_known_ones() -> None:
    graph = import_graph()
    edges = {module: levels["module"] | levels["function"] for module, levels in graph.items()}
    found = cycles(edges)
    new = found - KNOWN_CYCLES.keys()
    assert not new, f"import circles (module- or function-level imports): {describe(new, edges)}"
    gone = KNOWN_CYCLES.keys() - found
    assert not gone, f"these circles are gone: delete them from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package: str) -> None:
    for module in sorted(m for m in modules() if m.split(".")[0] == package):
        importlib.import_module(module)
