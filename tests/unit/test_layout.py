"""The house rules of issue 9, checked: no import cycles between our modules, no
god-files, and third-party I/O only at its edge."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "matrix_p2p"
MAX_LINES = 420


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of ours imported at import time (not inside functions, not for typing)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                                    | ast.ClassDef) else ():
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("matrix_p2p"):
                found.add(sub.module)
                for alias in sub.names:
                    found.add(f"{sub.module}.{alias.name}")
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("matrix_p2p"))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name}
            for name, path in files.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                # a package importing its own submodules (re-exports) is not a cycle of ideas
                cycle = [*stack[stack.index(nxt):], nxt]
                if not all(c.startswith(cycle[0] + ".") or c == cycle[0] for c in cycle):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_is_a_god_file() -> None:
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_only_the_bus_imports_nats_and_only_llm_and_servers_import_aiohttp() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        text = path.read_text()
        if "import nats" in text or "from nats" in text:
            assert rel.startswith("bus/"), rel
        if "import aiohttp" in text or "from aiohttp" in text:
            assert rel.startswith(("llm/", "sim/", "sandbox/", "metrics/", "httpserve.py")), rel
