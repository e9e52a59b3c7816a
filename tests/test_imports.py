"""No import cycle anywhere in ``src/poseguide``, imports inside functions included.

Every ``import`` and ``from ... import`` statement of every module (at module level, inside
functions, under ``TYPE_CHECKING``) is an edge from the module to the poseguide module it names:
``from poseguide.a import b`` points at ``poseguide.a.b`` when that is a module, else at
``poseguide.a``. A cycle in that graph is a design smell even when lazy imports keep it from
failing at import time: two modules that each need the other are one concept in two places.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "poseguide").rglob("*.py"))}


def _resolve(name: str, package: str, level: int) -> str:
    if level:
        base = package.split(".")[: len(package.split(".")) - level + 1]
        name = ".".join([*base, name] if name else base)
    return name


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", package, node.level)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import poseguide.a.b` -> the module
                target = target.rpartition(".")[0]
            if target.startswith("poseguide") and target != name:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_src() -> None:
    modules = _modules()
    assert len(modules) > 50 and "poseguide.train.loop" in modules
    graph = {name: _edges(name, path, modules) & set(modules) for name, path in modules.items()}
    assert "poseguide.train.step" in graph["poseguide.train.loop"]  # lazy and eager both count
    cycles = _cycles(graph)
    detail = []
    for component in cycles:
        members = set(component)
        detail.append(" / ".join(f"{m} -> {sorted(graph[m] & members)}" for m in component))
    assert not cycles, "import cycles:\n" + "\n".join(detail)
