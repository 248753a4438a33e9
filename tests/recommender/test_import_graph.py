"""The recommender domain's modules import each other as a DAG, at module level only."""

from __future__ import annotations

import ast
from pathlib import Path

import services.recommender

ROOT = Path(services.recommender.__file__).parent
SERVICE_LAYER = {"app", "tasks"}  # web / queue wrappers over the domain, not part of it


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _domain_modules() -> dict[str, ast.Module]:
    out = {}
    for path in ROOT.rglob("*.py"):
        if path.stem in SERVICE_LAYER and path.parent == ROOT:
            continue
        out[_module_name(path)] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module, names: set[str]) -> tuple[set[str], list[str]]:
    """(domain modules imported at module level, domain imports found inside functions)."""
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        hits = {t for t in targets if t in names}
        if not hits:
            continue
        if node in tree.body or any(node in getattr(b, "body", []) for b in tree.body if isinstance(b, ast.If)):
            top |= hits
        else:
            nested.append(f"line {node.lineno}: {sorted(hits)}")
    return top, nested


def test_no_function_level_imports_and_no_cycles():
    modules = _domain_modules()
    names = set(modules)
    graph, nested = {}, {}
    for name, tree in modules.items():
        graph[name], inner = _imports(tree, names)
        graph[name].discard(name)
        if inner:
            nested[name] = inner
    assert not nested, nested
    # a package imports its parent package implicitly; that edge is not a cycle risk
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "services.recommender.training" not in graph["services.recommender.models.base"] or all(
        not t.startswith("services.recommender.models") for t in graph["services.recommender.training"])
