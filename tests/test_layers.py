"""The package's layers point one way, and no modules import each other in a circle.

    cli, serve  ->  edit, tasks  ->  metrics, models, data  ->  artifact, registry, config, errors, utils

The import graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` anywhere in a module, inside functions and ``if`` blocks too, relative ones resolved
against the module's package. ``from pkg import name`` points at the submodule ``pkg.name`` when there
is one, else at ``pkg``; ``importlib.import_module("...")`` with a constant name counts as an import.

Only the imports written in the code are edges. Importing ``a.b.c`` also runs ``a/__init__.py`` and
``a/b/__init__.py``, but those implicit parent edges are Python's package mechanism, not a dependency
the code chose, and counting them would make every package whose ``__init__`` loads its own submodules
a circle with each of them. No written edge is ignored, a package ``__init__`` importing its own
submodules included: a submodule that imports a name from its package's ``__init__`` while that
``__init__`` imports the submodule is a real circle (move the name into a submodule of its own).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recogen"

# The lower layers, and what none of them may import (not even inside a function).
LOWER = ("recogen.data", "recogen.metrics", "recogen.models", "recogen.artifact", "recogen.utils",
         "recogen.config", "recogen.registry", "recogen.errors")
UPPER = ("recogen.tasks", "recogen.serve", "recogen.cli", "recogen.edit", "recogen.demo", "recogen.saliency")


# -------------------------------------------------------------------------------------- the graph
def find_modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _within(name: str, roots: tuple[str, ...] | str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in ([roots] if isinstance(roots, str) else roots))


def _imported_names(tree: ast.AST, package: str) -> list[tuple[str, str | None, int]]:
    """``(module, name or None, line)`` of every import in ``tree``; relative ones resolved from ``package``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 > len(parts) - 1:
                    raise AssertionError(f"line {node.lineno}: relative import beyond the top package")
                base = parts[: len(parts) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            out += [(src, a.name, node.lineno) for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            out.append((node.args[0].value, None, node.lineno))
    return out


def import_graph(package: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """``(edges, lines)``: module -> the package's modules it imports, and the first line of each edge."""
    mods = find_modules(package)
    top = package.name

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    lines: dict[tuple[str, str], int] = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for src, name, line in _imported_names(tree, mod if is_pkg else mod.rpartition(".")[0]):
            if not _within(src, top):
                continue
            sub = f"{src}.{name}" if name else None
            target = sub if sub in mods else resolve(src)
            if target is None or target == mod:
                continue
            edges[mod].add(target)
            lines.setdefault((mod, target), line)
    return edges, lines


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _where(mod: str, line: int) -> str:
    path, _ = find_modules(PACKAGE)[mod]
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


# -------------------------------------------------------------------------------------- the rules
def test_lower_layers_import_no_upper_layer():
    edges, lines = import_graph(PACKAGE)
    bad = [f"{_where(m, lines[m, t])}: {m} imports {t}"
           for m in sorted(edges) if _within(m, LOWER) for t in sorted(edges[m]) if _within(t, UPPER)]
    assert not bad, ("lower layers must not import tasks, serve, cli, edit or demo (not even inside a "
                     "function):\n" + "\n".join(bad))


def test_no_import_cycles():
    edges, lines = import_graph(PACKAGE)
    cycles = import_cycles(edges)
    report = []
    for comp in cycles:
        report.append(f"circle of {len(comp)} modules: {', '.join(comp)}")
        report += [f"    {_where(m, lines[m, t])}: {m} -> {t}" for m in comp for t in sorted(edges[m]) if t in comp]
    assert not cycles, "import circles (imports inside functions count):\n" + "\n".join(report)


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, recogen.cli; print(sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


# ------------------------------------------------------------------------------- the graph reader
def test_graph_reader_on_a_small_package(tmp_path):
    """Relative imports from modules and ``__init__`` files, imports inside functions, ``from . import
    submodule``, attributes of a package, and ``importlib.import_module`` are all edges; circles are found."""
    pkg = tmp_path / "recogen"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "def load():\n    from .sub import deep\n",
        "a.py": "import os\nfrom . import b\nfrom .sub.deep import thing\n",
        "b.py": "def f():\n    from recogen import a\n",
        "c.py": "from . import __version__\nimport importlib\nimportlib.import_module('recogen.sub')\n",
        "sub/__init__.py": "from .. import c\nfrom .deep import thing\n",
        "sub/deep.py": "thing = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges, lines = import_graph(pkg)
    assert edges == {
        "recogen": {"recogen.sub.deep"},
        "recogen.a": {"recogen.b", "recogen.sub.deep"},
        "recogen.b": {"recogen.a"},
        "recogen.c": {"recogen", "recogen.sub"},
        "recogen.sub": {"recogen.c", "recogen.sub.deep"},
        "recogen.sub.deep": set(),
    }
    assert lines["recogen.b", "recogen.a"] == 2
    assert import_cycles(edges) == [["recogen.a", "recogen.b"], ["recogen.c", "recogen.sub"]]
