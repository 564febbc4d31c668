"""The package's import graph, read with ``ast``: modules, cycles, layers, sizes.

``python -m tests.import_graph`` prints the figures; ``test_architecture`` holds the
package to them. Every import counts, including those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "clan_vm_tasks"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. clan_vm_tasks.vm.start
    path: Path
    lines: int
    imports: frozenset[str]  # modules of the package it imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, here: str, is_package: bool, known: set[str]) -> list[str]:
    if node.level:
        base = here.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    found = []
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        # "from pkg import mod" imports the module; "from mod import name" the module itself.
        found.append(candidate if candidate in known else prefix)
    return found


def modules(root: Path = ROOT) -> dict[str, Module]:
    paths = sorted(root.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    result = {}
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.update(_resolve(node, name, path.name == "__init__.py", known))
        ours = {i for i in imported if i in known and i != name}
        lines = len(path.read_text().splitlines())
        result[name] = Module(name, path, lines, frozenset(ours))
    return result


def cycles(graph: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node].imports):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def report(graph: dict[str, Module]) -> str:
    top = [m for m in graph.values() if m.path.parent == ROOT and m.path.name != "__init__.py"]
    largest = sorted(graph.values(), key=lambda m: m.lines, reverse=True)[:5]
    edges = sum(len(m.imports) for m in graph.values())
    lines = [
        f"modules: {len(graph)} ({len(top)} directly in {PACKAGE}/), imports: {edges}",
        f"cycles: {len(cycles(graph))}",
        *(f"  cycle: {' -> '.join(c)}" for c in cycles(graph)),
        "largest: " + ", ".join(f"{m.path.relative_to(ROOT.parent)} ({m.lines})" for m in largest),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(modules()))
