"""The house's one way through: imports run one way (no circle), the core imports the package's
own modules at the top of each file, no module imports another's `_private` name, the flags
become typed values in cli.py alone, and a mistake on the command line is answered before torch
loads (README: Extending, the way through the house)."""
import ast
import functools
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zerocap")
EDGE = {"cli.py", "commands.py", "__init__.py"}  # may defer heavy imports (cli: the one, of commands)
RAY_WORKER_SIDE = {("jobs/ray_backend.py", "__init__")}  # a Ray actor imports the engine on its own side


@functools.cache
def modules() -> tuple:
    """(path under zerocap/, its syntax tree) for every module, parsed once per session."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found.append((os.path.relpath(path, PACKAGE), ast.parse(open(path).read(), path)))
    return tuple(found)


@functools.cache
def known() -> frozenset:
    return frozenset(module_name(r) for r, _ in modules())


def module_name(rel: str) -> str:
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["zerocap", *parts])


def imported(rel: str, node) -> list[str]:
    """The package modules an import statement names (relative ones resolved)."""
    here = module_name(rel).split(".")
    if not rel.endswith("__init__.py"):
        here = here[:-1]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "zerocap"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "zerocap":
            return []
    else:
        base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
    out = []
    for alias in node.names:  # `from . import x` names module x; `from .m import y`, module m
        candidate = f"{base}.{alias.name}"
        out.append(candidate if candidate in known() else base)
    return out


def test_no_function_level_import_of_the_package_in_the_core():
    found = []
    for rel, tree in modules():
        if os.path.basename(rel) in EDGE and os.path.dirname(rel) == "":
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, fn.name) not in RAY_WORKER_SIDE:
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and imported(rel, node):
                        found.append(f"{rel}:{node.lineno} in {fn.name}()")
    assert not found, found


def test_no_module_imports_another_modules_private_name():
    found = [f"{rel}:{node.lineno} {a.name}" for rel, tree in modules() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and imported(rel, node)
             for a in node.names if a.name.startswith("_")]
    assert not found, found


def test_the_imports_have_no_circle():
    graph: dict[str, set[str]] = {}
    for rel, tree in modules():
        me = module_name(rel)
        graph.setdefault(me, set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[me].update(m for m in imported(rel, node) if m != me and m in known())
    # a package's __init__ is run before its modules: an import of `zerocap.x.y` also imports `zerocap.x`
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                raise AssertionError(" -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_nothing_below_the_command_line_sees_its_flags():
    """argparse is cli.py's alone, and commands.py works on request.py's typed values."""
    for rel, tree in modules():
        if rel == "cli.py":
            continue
        imports = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert "argparse" not in imports, rel
    commands = dict(modules())["commands.py"]
    assert "args" not in {n.id for n in ast.walk(commands) if isinstance(n, ast.Name)}


@pytest.mark.parametrize("argv", [["caption", "x.png", "--beam-size", "0"], ["caption", "x.png", "--seed", "1.5"],
                                  ["video", "x.mp4", "--frames", "65"], ["caption", "x.png", "--retry-failed"]])
def test_a_mistake_is_answered_before_torch_loads(argv):
    code = ("import sys; from zerocap.cli import main; rc = main(%r); "
            "print(rc, 'torch' in sys.modules)" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], (out.stdout, out.stderr)
    assert out.stderr.startswith("zerocap: error: ") and out.stderr.count("\n") == 1, out.stderr
