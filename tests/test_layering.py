"""The package's import graph: imports point down the layer order of docs/DESIGN.md section 2, and no module
imports itself back through others (no cycle), counting imports inside functions too."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sam_histo"
DESIGN = PKG.parent / "docs" / "DESIGN.md"


def _layers() -> list[str]:
    """The layer order, bottom first, as DESIGN.md states it (one source of truth for code and test)."""
    m = re.search(r"Layer order, bottom first: (.+?)\.\s", DESIGN.read_text(), re.S)
    assert m, "docs/DESIGN.md section 2 must state the layer order"
    return [u.strip(" `\n") for u in m.group(1).split(",")]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every sam_histo module ``path`` imports (``from a import b`` counts as a.b when a.b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sam_histo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sam_histo"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_mod = (PKG.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PKG.parent / sub.replace(".", "/")).is_dir()
                out.add(sub if is_mod else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sam_histo"


def test_every_package_and_top_module_has_a_layer():
    layers = _layers()
    units = {_unit(m) for m in _graph()}
    assert units - set(layers) == set(), "add the new unit to DESIGN.md's layer order"


def test_no_upward_import():
    order = {u: i for i, u in enumerate(_layers())}
    # the root package (``__version__``) is every module's parent, imported before any of them
    upward = sorted(f"{a} -> {b}" for a, deps in _graph().items() for b in deps
                    if b != "sam_histo" and _unit(a) != _unit(b) and order[_unit(b)] > order[_unit(a)])
    assert upward == []


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ is imported before any of its modules: an edge module -> its own package is fine
    edges = {a: {b for b in deps if b in graph and not a.startswith(b + ".")} for a, deps in graph.items()}
    colour: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        colour[node] = 1
        for nxt in edges[node]:
            if colour.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in colour:
                visit(nxt, stack + [nxt])
        colour[node] = 2

    for n in sorted(edges):
        if n not in colour:
            visit(n, [n])
    assert cycles == []


@pytest.mark.parametrize("limit", [13])
def test_no_folder_over_about_a_dozen_modules(limit):
    big = {str(d.relative_to(PKG.parent)): n for d in [PKG, *[p for p in PKG.rglob("*") if p.is_dir()]]
           if (n := len([f for f in d.glob("*.py") if f.name != "__init__.py"])) > limit}
    assert big == {}


def test_functions_under_60_lines_and_modules_under_400():
    """docs/DESIGN.md section 2 size limits: past them, split along a responsibility."""
    too_long = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(PKG.parent))
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 60:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_one_png_writer():
    """Every PNG the package writes goes through sam_histo.files.save_png (atomic): no other module calls
    PIL's save."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "sam_histo"
    writers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if re.search(r"Image\.fromarray\([^\n]*\)\.save\(|\bim(age)?\.save\(", p.read_text())]
    # bench/loader.py writes TIFF masks (not PNG) into the benchmark's own temporary folder
    assert sorted(writers) == ["bench/loader.py", "files.py"], writers
