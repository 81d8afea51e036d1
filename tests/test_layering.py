"""Imports run one way: library modules never import the indexer or the server (only the
entry points do), and no two modules of the library import each other, directly or not,
counting the imports made only for type checking: the index composes the query modules,
which read it through `lstmsearch.reader.IndexReader` and never import it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"lstmsearch.cli", "lstmsearch.serve"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


QUERY_MODULES = {"lstmsearch.query", "lstmsearch.spans", "lstmsearch.nearest",
                 "lstmsearch.neurons", "lstmsearch.kernels", "lstmsearch.reader",
                 "lstmsearch.analysis.units"}
"""Modules the index composes: they must not import it, not even for type checking."""


def imports_of(path: Path, type_checking: bool = False) -> set[str]:
    """Modules imported anywhere in a file (functions included); with `type_checking`, the
    imports under `if TYPE_CHECKING:` too."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                    and not type_checking):
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def library_graph(type_checking: bool = False, package: str = "lstmsearch") -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {d for d in imports_of(path, type_checking) if d in files and d != name}
            for name, path in files.items()}


def test_the_library_imports_neither_indexer_nor_server():
    for path in (ROOT / "lstmsearch").rglob("*.py"):
        name = module_name(path)
        if name in ENTRY_POINTS:
            continue
        wrong = sorted(d for d in imports_of(path) if d.split(".")[0] in ("indexer", "server"))
        assert not wrong, f"{name} imports {wrong}"


def test_the_query_modules_never_import_the_index():
    graph = library_graph(type_checking=True)
    assert QUERY_MODULES <= set(graph)
    for name in sorted(QUERY_MODULES):
        assert "lstmsearch.index" not in graph[name], f"{name} imports lstmsearch.index"


def test_no_import_cycle_in_the_library_or_the_server():
    for package in ("lstmsearch", "server"):
        assert_no_cycle(library_graph(type_checking=True, package=package), package)


def assert_no_cycle(graph: dict[str, set[str]], package: str) -> None:

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    cycles = sorted(name for name in graph if name in reachable(name) and name != package)
    assert not cycles, f"modules on an import cycle: {cycles}"
