"""The import graph of dbspec/: no cycle, and data flows one way (CLI -> spec -> compiler -> plan).

Every import counts, also those inside functions and under TYPE_CHECKING: a deferred import still ties the two
modules together, it only hides the cycle until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dbspec"
LOWER = ("dbspec.spec", "dbspec.compiler", "dbspec.plan")  # the stages below the CLI
UPPER = ("dbspec.frontend", "dbspec.cli")  # the CLI and the pipeline it drives


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dbspec modules `name` (at `path`) imports: `from a import b` is a.b when b is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            }
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path [a, b, ..., a], or [] when the graph has none (depth-first
    search, three colours)."""
    state: dict[str, str] = {}  # absent: unvisited; "open": on the current path; "done": no cycle through it
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_graph_is_read():
    graph = import_graph()
    assert "dbspec.compiler.rules" in graph["dbspec.compiler.compile"]
    assert "dbspec.spec.check" in graph["dbspec.frontend"]
    assert "dbspec.frontend" in graph["dbspec.cli"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_dbspec_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_spec_compiler_and_plan_never_import_the_cli_or_its_pipeline():
    bad = {
        name: sorted(t for t in targets if t.startswith(UPPER))
        for name, targets in import_graph().items()
        if name.startswith(LOWER)
    }
    bad = {name: targets for name, targets in bad.items() if targets}
    assert not bad, f"imports against the data flow (CLI -> spec -> compiler -> plan): {bad}"
