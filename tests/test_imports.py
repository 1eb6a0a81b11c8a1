"""The import graph of `vvtrt`: no module imports itself through others, no package does, and the lower
layers never import a model kind's package or the serving layers above them (they ask
`vvtrt.model.kinds`). Every `vvtrt` import counts, at module level or inside a function."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vvtrt"
LOWER = ("vvtrt.model", "vvtrt.workdir", "vvtrt.workdir_files", "vvtrt.runtime", "vvtrt.engines", "vvtrt.export",
         "vvtrt.components", "vvtrt.spec", "vvtrt.precision", "vvtrt.errors", "vvtrt.fsio", "vvtrt.option_checks")
ABOVE = ("vvtrt.realtime", "vvtrt.serving", "vvtrt.server")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules) -> set[str]:
    """The `vvtrt` modules `path` imports anywhere in it (`from pkg import mod` counts as `pkg.mod`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vvtrt") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vvtrt")}
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
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
                    out.append(sorted(comp))
    return out


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_cycles(graph):
    assert _cycles(graph) == []


def test_no_package_cycles(graph):
    packages = defaultdict(set)
    for module, targets in graph.items():
        packages[_package(module)] |= {_package(t) for t in targets} - {_package(module)}
    assert _cycles(packages) == []


def test_lower_layers_import_no_kind_or_serving_package(graph):
    bad = {module: sorted(t for t in targets if _package(t) in ABOVE)
           for module, targets in graph.items() if _package(module) in LOWER}
    assert {m: t for m, t in bad.items() if t} == {}


def test_every_kind_hook_resolves():
    from vvtrt.model import kinds

    hooks = [f.name for f in kinds.Kind.__dataclass_fields__.values() if f.name not in ("name", "traced_files")]
    for kind in kinds.KINDS.values():
        for hook in hooks:
            if getattr(kind, hook):
                assert kind.load(hook) is not None, (kind.name, hook)
        for rel in kind.traced_files:
            assert (PACKAGE / rel).is_file(), (kind.name, rel)
