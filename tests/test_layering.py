"""The package's architecture as a test: every import (function-local ones included) runs downward through
the layers below, no stage imports another stage, and the module graph has no cycle.

Layers, lowest first (a module may import its own room and any lower layer, never a higher one or another
room of its own layer):

  base        t1, t1.config, t1.io, t1.pool
  runtime     t1.runtime.*                       optimizer, device and precision, the run directory
  shared      t1.tasks.*, t1.chat, t1.batching   tasks (items, prompts, grading), prompt rendering, batching
  model       t1.model.*                         loading, t1's forward, the decode step, C kernels
  data        t1.data.*                          SFT data and prompt sets
  rollout     t1.rollout.*                       sampling engines
  algorithms  t1.rl.*, t1.eval.*                 the RL algorithm and step; evaluation metrics and sampling
  stages      t1.stages.*                        one module per `t1` command; never import each other
  pipelines   t1.pipelines.*                     compose stages (the sweep; the demo, one room of modules)
  cli         t1.cli, t1.__main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import t1

PACKAGE = Path(t1.__file__).parent
LAYERS = [
    ("base", ["t1", "t1.config", "t1.io", "t1.pool"]),
    ("runtime", ["t1.runtime"]),
    ("shared", ["t1.tasks", "t1.chat", "t1.batching"]),
    ("model", ["t1.model"]),
    ("data", ["t1.data"]),
    ("rollout", ["t1.rollout"]),
    ("algorithms", ["t1.rl", "t1.eval"]),
    ("stages", ["t1.stages"]),
    ("pipelines", ["t1.pipelines", "t1.pipelines.demo"]),
    ("cli", ["t1.cli", "t1.__main__"]),
]
ISOLATED = ("t1.stages", "t1.pipelines")  # rooms whose modules must not import each other
ONE_ROOM = ("base", "cli")  # layers whose modules form one room


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def room(module: str) -> tuple[int, str]:
    """(layer index, room) of a module: the longest listed prefix it falls under."""
    best = None
    for i, (_, rooms) in enumerate(LAYERS):
        for r in rooms:
            if (module == r or module.startswith(r + ".")) and (best is None or len(r) > len(best[1])):
                best = (i, r)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")
    return (best[0], LAYERS[best[0]][0]) if LAYERS[best[0]][0] in ONE_ROOM else best


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every t1 module ``name`` imports, wherever the import statement sits."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "t1")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "t1":
                continue
            for a in node.names:  # `from t1.rl import algo` imports the module t1.rl.algo
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        (ls, rs) = room(src)
        for dst in sorted(targets):
            (ld, rd) = room(dst)
            if ld > ls:
                bad.append(f"{src} ({LAYERS[ls][0]}) imports {dst} ({LAYERS[ld][0]}): upward")
            elif ld == ls and rd != rs:
                bad.append(f"{src} imports {dst}: two rooms of the {LAYERS[ls][0]} layer")
            elif rd == rs and rs in ISOLATED and dst != rs and src != rs:
                bad.append(f"{src} imports {dst}: {rs} modules must not import each other")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_import_runs_downward_and_no_stage_imports_a_stage():
    edges = graph()
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the walk found the package
    bad = violations(edges)
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_the_module_graph_has_no_cycle():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_checks_catch_what_they_are_for():
    """The rules themselves: an upward import, a stage importing a stage and a cycle are each reported."""
    assert violations({"t1.rl.algo": {"t1.stages.rl"}})[0].endswith("upward")
    assert "must not import each other" in violations({"t1.stages.filter": {"t1.stages.evaluate"}})[0]
    assert "two rooms" in violations({"t1.rl.step": {"t1.eval.metrics"}})[0]
    assert violations({"t1.stages.rl": {"t1.rl.algo", "t1.runtime.run"}}) == []
    assert cycles({"t1.a": {"t1.b"}, "t1.b": {"t1.c"}, "t1.c": {"t1.a"}}) == [["t1.a", "t1.b", "t1.c"]]
    assert cycles({"t1.a": {"t1.b"}, "t1.b": set()}) == []
    # a function-local import counts like a top-level one
    known = modules()
    assert "t1.rollout.fast" in imports("t1.rollout", known["t1.rollout"], known) or \
        "t1.rollout.config" in imports("t1.rollout", known["t1.rollout"], known)


def test_no_function_over_80_lines_and_no_file_over_500():
    """The size limits the layout promises (README, Layout): past them a module or function stops being
    one idea."""
    too_long = []
    for name, path in sorted(modules().items()):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)
