"""Imports run downward: every module's imports (function-local ones too) against a layer table.

Each entry of LAYERS is a part of the tree (a package, or one module) and the parts it sits on
directly; a module may import its own part and everything its part sits on, transitively, and
nothing else of ours: no import upward (the server importing the client library), sideways
(feeds importing server) or into obsim's simulator from the server. The walk reads the source
with `ast` (nothing is imported), so a function-local import counts like any other, and the
module graph must have no cycle, local imports included: a cycle hidden in a function is how
two modules end up owning one piece.

A module belongs to the longest entry that prefixes its name. A new package needs a row here;
the test says so.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (import name, directory holding it): the import packages of both distributions
PACKAGES = (("obproto", "client"), ("obclient", "client"), ("obrelay", "client"),
            ("observer", "."), ("obsim", "."))

LAYERS: dict[str, tuple[str, ...]] = {
    # the client distribution: layout and wire, then the library, then the relay
    "obproto": (),
    "obclient": ("obproto",),
    "obrelay": ("obclient",),
    # the server, lowest first
    "observer": (),                                  # observer/__init__.py: a docstring
    "observer.loom": (),
    "observer.telemetry": ("obproto", "observer.loom"),
    "observer.book": (),
    "observer.net": ("observer.loom",),
    "observer.config": ("obproto", "observer.loom"),
    "observer.feeds": ("obproto", "observer.book", "observer.net", "observer.telemetry"),
    "observer.shm": ("obproto", "observer.config", "observer.loom"),
    "observer.server": ("obproto", "observer.config", "observer.telemetry"),
    "observer.shard": ("observer.config", "observer.feeds", "observer.shm"),
    "observer.process": ("observer.server", "observer.shard"),
    "observer.cli": ("observer.process",),
    # obsim's simulator imports nothing of ours (two independent readings of each protocol);
    # the make-run demo and the observer launcher sit on top of everything
    "obsim": (),
    "obsim.observerproc": ("obclient",),
    "obsim.simconfig": ("observer.config",),
    # the command writes an observer config for itself (--write-config): above simconfig
    "obsim.cli": ("obsim", "obsim.simconfig"),
    "obsim.entry": ("obsim", "obsim.cli"),
    "obsim.demo": ("obsim", "obsim.observerproc", "obsim.simconfig", "observer.cli"),
}


def modules() -> dict[str, Path]:
    found = {}
    for name, where in PACKAGES:
        base = ROOT / where
        for path in sorted((base / name).rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        for path in sorted((base / name).rglob("*.c")):      # compiled extension modules
            found[".".join(path.relative_to(base).with_suffix("").parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    out = set()
    if path.suffix == ".c":
        return out
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:    # `import a.b.c`: the deepest we own
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


EXACT = {"observer", "observer.cli"}     # modules, not packages: nothing else lives under them


def part_of(module: str) -> str:
    best = ""
    for part in LAYERS:
        inside = module == part or (part not in EXACT and module.startswith(part + "."))
        if inside and len(part) > len(best):
            best = part
    assert best, (f"{module} is in no part of LAYERS: a new module at the top of observer/ "
                  f"belongs in one of its packages; a new package needs its row")
    return best


@functools.cache
def below(part: str) -> frozenset[str]:
    """The parts `part` may import: itself and everything it sits on, transitively."""
    out = {part}
    for lower in LAYERS[part]:
        out |= below(lower)
    return frozenset(out)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in sorted(graph.items()):
        allowed = below(part_of(name))
        for target in sorted(targets):
            if part_of(target) not in allowed:
                bad.append(f"{name} imports {target} ({part_of(name)} does not sit on "
                           f"{part_of(target)})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_a_module_outside_the_table_is_refused():
    try:
        part_of("observer.newmodule")
    except AssertionError as exc:
        assert "observer.newmodule is in no part of LAYERS" in str(exc)
    else:
        raise AssertionError("observer.newmodule was accepted into a part")


def test_the_walk_sees_every_package_and_local_imports():
    graph = import_graph()
    assert {"obproto.layout", "obclient.client", "obrelay.relay", "observer.loom.loop",
            "observer.process.supervisor", "obsim.venue", "obsim.demo"} <= set(graph)
    # observer/cli.py imports the supervisor inside main(): the walk must count it
    assert "observer.process.supervisor" in graph["observer.cli"]


def test_every_import_runs_downward():
    violations = layer_violations(import_graph())
    assert not violations, "imports against the layer table:\n" + "\n".join(violations)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (local imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_a_bad_import_is_caught():
    """The checks themselves fail on what they are for: an upward, a sideways import and a
    cycle added to the real graph."""
    graph = import_graph()
    graph["observer.process.supervisor"] = graph["observer.process.supervisor"] | {
        "obclient.client"}                              # server -> client library
    graph["observer.feeds.session"] = graph["observer.feeds.session"] | {
        "observer.server.control"}                     # sideways
    graph["observer.loom.timers"] = graph["observer.loom.timers"] | {"observer.loom.loop"}
    violations = layer_violations(graph)
    assert any("observer.process.supervisor imports obclient.client" in v for v in violations)
    assert any("observer.feeds.session imports observer.server.control" in v
               for v in violations)
    assert any("observer.loom.loop" in c and "observer.loom.timers" in c
               for c in cycles(graph))
