"""The code's shape, checked: no import circles in tracer/ or vm/ (counting imports made
inside functions too: a lazy import is still a dependency), nothing in tracer/ imports
the lab, and no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tracer", "vm")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "guest" in path.relative_to(REPO).parts:  # runs inside the guest, on its own
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule sub where there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # tracer.topology.devices -> itself; x.y.z -> x.y
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parent_package_edges_removed(graph):
    """A package's __init__ re-exporting its submodules is not a circle with them."""
    return {m: {t for t in deps if not (m.startswith(t + ".") and t in graph)} for m, deps in graph.items()}


def test_no_import_circles():
    assert _cycles(_parent_package_edges_removed(_graph())) == []


def test_the_product_does_not_import_the_lab():
    offenders = {m: sorted(d for d in deps if d == "vm" or d.startswith("vm."))
                 for m, deps in _graph().items() if m.split(".")[0] == "tracer"}
    assert {m: d for m, d in offenders.items() if d} == {}



# Files other helpers are rewriting right now: the lead removes them from these lists
# once their work is merged (then every module of tracer/ and vm/ is held to the rules).
BEING_REWRITTEN: set[str] = set()
MAX_LINES = 400


def _rewritten(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return rel in BEING_REWRITTEN or any(p.endswith("/*") and rel.startswith(p[:-1]) for p in BEING_REWRITTEN)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_reach_ins(name: str, path: Path, known: set[str]) -> list[str]:
    """`module._name` and `from module import _name` where module is another module of
    tracer/ or vm/ (a package's own __init__ is another module too)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                if f"{mod}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{mod}.{a.name}"
                elif _private(a.name) and mod in known and mod != name:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} from {mod} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr) and aliases[node.value.id] != name):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    mods = _modules()
    known = set(mods)
    assert [x for name, path in mods.items() for x in _private_reach_ins(name, path, known)] == []


def _public_without_docstring(path: Path) -> list[str]:
    """Public functions, classes and methods of public classes with no docstring
    (properties and dunders aside; nested functions are private to their function)."""
    out = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_"):
                    continue
                if isinstance(node, ast.ClassDef):
                    if ast.get_docstring(node) is None:
                        out.append(f"{prefix}{node.name}")
                    visit(node.body, f"{prefix}{node.name}.")
                elif ast.get_docstring(node) is None and not any(
                        isinstance(d, ast.Name) and d.id == "property"
                        or isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter")
                        for d in node.decorator_list):
                    out.append(f"{prefix}{node.name}")

    visit(ast.parse(path.read_text()).body, "")
    return out


def test_every_public_function_and_class_has_a_docstring():
    missing = {str(path.relative_to(REPO)): names for path in _modules().values()
               if not _rewritten(path) and (names := _public_without_docstring(path))}
    assert missing == {}


def test_no_module_over_400_lines_without_a_reason_at_its_top():
    """A module of more than MAX_LINES lines says why at its top: a line of its module
    docstring starting "Long because"."""
    long = {}
    for path in _modules().values():
        if _rewritten(path):
            continue
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and not any(x.startswith("Long because") for x in doc.splitlines()):
            long[str(path.relative_to(REPO))] = lines
    assert long == {}


# What the resident sampler may not import (its memory is the tracer's own cost, a goal
# of scripts/bench): dataclasses brings inspect, ast, dis and tokenize (~1.6 MiB), typing
# ~0.5 MiB, and the loader's side (planning, programs) is done before the exec.
SAMPLER_AVOIDS = ("dataclasses", "typing", "inspect", "ast", "tracer.loader", "tracer.programs",
                  "tracer.attacher", "tracer.inventory")
# What the sampler imports in its functions as it runs: the kernel baseline, the squashfs
# mounts, the naming of files.
SAMPLER_LATER = ("tracer.baseline", "tracer.squashfs", "tracer.topology.paths", "tracer.bpffiles",
                 "tracer.symbols", "tracer.libbpf", "tracer.procfs")


def test_the_sampler_imports_no_dataclasses_typing_or_loader():
    import subprocess
    import sys

    code = ("import sys, importlib, tracer.sampler\n"
            f"for m in {SAMPLER_LATER!r}: importlib.import_module(m)\n"
            f"print(' '.join(m for m in {SAMPLER_AVOIDS!r} if m in sys.modules))")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == []
