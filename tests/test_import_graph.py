"""The package's import graph, read with `ast` from the source: layers point one way, no cycles.

Every import counts, at module level or deferred inside a function (a deferred import that closes
a cycle is still a cycle in the design; it only moves the failure to run time). Imports under
``if TYPE_CHECKING:`` do not run and are left out. The root ``c3dfeat/__init__.py`` only re-exports
lazily and is not a node.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "c3dfeat"
ROOT = "c3dfeat"

Edge = Tuple[str, str]  # (importer, imported)
Where = Dict[Edge, List[str]]  # edge -> ["file:line", ...]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: Set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: List[Tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                self.found.append((alias.name, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not (module == ROOT or module.startswith(ROOT + ".")):
            return
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            self.found.append((sub if sub in self.known else module, node.lineno))


def module_graph() -> Where:
    """Edges between c3dfeat modules, with where each import is written."""
    modules = _modules()
    known = set(modules)
    where: Where = defaultdict(list)
    for name, path in modules.items():
        if name == ROOT:
            continue
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for target, line in visitor.found:
            if target != name and target != ROOT:
                where[(name, target)].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return where


def unit_of(module: str) -> str:
    """The top-level subpackage or module: c3dfeat.models._registry -> c3dfeat.models."""
    return ".".join(module.split(".")[:2])


def unit_graph() -> Where:
    where: Where = defaultdict(list)
    for (a, b), lines in module_graph().items():
        ua, ub = unit_of(a), unit_of(b)
        if ua != ub:
            where[(ua, ub)].extend(lines)
    return where


def cycles(edges) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    graph: Dict[str, List[str]] = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
        graph.setdefault(b, [])
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _explain(components: List[List[str]], where: Where) -> str:
    lines = []
    for comp in components:
        members = set(comp)
        lines.append("cycle: " + " <-> ".join(comp))
        for (a, b), at in sorted(where.items()):
            if a in members and b in members:
                lines.append(f"  {a} -> {b}: {', '.join(sorted(set(at)))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the checker itself
def test_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")]) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c"), ("a", "c")]) == []


def test_graph_sees_module_level_deferred_and_relative_imports():
    where = unit_graph()
    assert ("c3dfeat.zoo", "c3dfeat.models") in where and ("c3dfeat.zoo", "c3dfeat.weights") in where
    mods = module_graph()
    # deferred (inside a function): convert_file imports the converter lazily
    assert ("c3dfeat.weights.loading", "c3dfeat.weights.convert") in mods
    # `from c3dfeat.weights import hashing` names the submodule, not the package
    assert ("c3dfeat.weights.fetch", "c3dfeat.weights.hashing") in mods


# ----------------------------------------------------------------------------- the package
def test_no_cycle_between_top_level_subpackages():
    where = unit_graph()
    found = cycles(where)
    assert not found, _explain(found, where)


def test_no_cycle_between_modules():
    where = module_graph()
    found = cycles(where)
    assert not found, _explain(found, where)


def test_layers_point_one_way():
    """Records are leaves; weights files never know the registry; only the zoo joins them."""
    allowed = {
        "c3dfeat.errors": set(),
        "c3dfeat.version": set(),
        "c3dfeat.specs": {"c3dfeat.errors"},
        "c3dfeat.weights": {"c3dfeat.errors", "c3dfeat.specs", "c3dfeat.version"},
    }
    where = unit_graph()
    for unit, ok in allowed.items():
        bad = {b: at for (a, b), at in where.items() if a == unit and b not in ok}
        assert not bad, f"{unit} may import only {sorted(ok) or 'nothing of c3dfeat'}; found {bad}"
    above = {"c3dfeat.zoo", "c3dfeat.pipeline", "c3dfeat.cli", "c3dfeat.engines"}
    bad = {(a, b): at for (a, b), at in where.items() if a == "c3dfeat.models" and b in above | {"c3dfeat.weights"}}
    assert not bad, f"the registry imports a layer above it or the weights files: {bad}"
