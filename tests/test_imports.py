"""The package's shape: no import circle anywhere in helpers (lazy imports inside functions included), the
notebook-facing modules never import helpers.tools, and every module directly in helpers/ is one a notebook reaches.

The graph comes from the source (ast), not from importing: an import inside a function counts as much as one at the
top, since it closes the same circle the first time that function runs.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = "helpers.tools"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "helpers").rglob("*.py"))}


def imported_by(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The helpers modules `path` imports, anywhere in it. `from pkg import x` is pkg.x when that is a module, else
    pkg itself (an attribute of its __init__)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import helpers.x.y` -> the deepest helpers module named
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imported_by(path, set(found), root) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), written as a path back to its start."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [cycle_in(group, edges) for group in groups]


def cycle_in(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle in {group}")


def test_the_circle_finder_finds_a_circle_and_prints_it():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert circles(edges) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_import_form(tmp_path):
    # the forms the package uses, each resolved to the module it names
    known = {"helpers", "helpers.runs", "helpers.specs", "helpers.tools", "helpers.tools.bench", "helpers.tools.mfu"}
    source = ("from .. import specs\nfrom ..runs import Lab\nfrom .mfu import x\nimport helpers.runs\n"
              "def late():\n    from helpers import full\n")
    fake = tmp_path / "helpers" / "tools" / "bench.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    assert imported_by(fake, known, tmp_path) == {"helpers.specs", "helpers.runs", "helpers.tools.mfu", "helpers"}


def test_no_import_circle_in_helpers():
    found = circles(graph())
    assert not found, "import circle(s): " + "; ".join(" -> ".join(c) for c in found)


def test_notebook_facing_modules_never_import_the_tools():
    edges = graph()
    facing = [name for name in edges if not name.startswith(TOOLS)]
    bad = {name: sorted(t for t in edges[name] if t.startswith(TOOLS)) for name in facing}
    assert not {k: v for k, v in bad.items() if v}


def notebook_modules() -> set[str]:
    """The helpers modules the notebooks' code cells name (`import helpers`, `helpers.x`, `from helpers[.x] import`)."""
    known = set(modules())
    named = {"helpers"}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            code = "".join(cell["source"])
            for dotted in re.findall(r"\bhelpers(?:\.\w+)+", code):
                named.add(dotted)
            for names in re.findall(r"^\s*from helpers import ([\w, ]+)", code, re.M):
                named.update(f"helpers.{n.strip()}" for n in names.split(","))
    resolved = set()
    for name in named:
        while name not in known:
            name = name.rpartition(".")[0]
        resolved.add(name)
    return resolved


def test_notebooks_import_no_tool():
    assert not {m for m in notebook_modules() if m.startswith(TOOLS)}


def test_every_module_directly_in_helpers_is_reached_from_a_notebook():
    # helpers/ is what a student may open from a cell: a module no notebook reaches belongs in helpers/tools/
    edges = graph()
    reached, todo = set(), list(notebook_modules())
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edges[name])
    facing = {name for name in edges if not name.startswith(TOOLS)}
    assert facing - reached == set(), "not reached from any notebook: move to helpers/tools/"
    assert len(facing) > 20 and {"helpers.runs", "helpers.training", "helpers.baseline"} <= reached
