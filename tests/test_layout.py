"""The shape of the library (docs/architecture.md): three layers that import only downwards, a
pure core that writes no files, and modules and functions small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parent.parent / "ibdml"
FRONT_ENDS = {"ibdml.cli", "ibdml.pipeline", "ibdml.report", "ibdml.explorer"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 50
# The one core module allowed to write: Glyphs renders itself into its own dataset cache (never
# into a run folder).
WRITES_ITS_DATASET_CACHE = {"ibdml.data.glyphs"}
# Calls that write to disk: method names, and module functions.
WRITING_METHODS = {"write_text", "write_bytes", "mkdir", "savefig", "write_html", "touch",
                   "unlink", "rmdir"}
WRITING_FUNCTIONS = {("torch", "save"), ("np", "save"), ("numpy", "save"), ("os", "replace"),
                     ("os", "rename"), ("os", "remove"), ("os", "makedirs"), ("shutil", "rmtree"),
                     ("shutil", "copy"), ("shutil", "move"), ("json", "dump"), ("yaml", "dump")}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(name: str) -> str:
    if name in FRONT_ENDS:
        return "front end"
    return "steps" if name.startswith("ibdml.steps") else "core"


def imported(path: Path) -> set[str]:
    """Every ibdml module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ibdml"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("ibdml"))
    return {n for n in names if n in modules()}


ORDER = {"core": 0, "steps": 1, "front end": 2}


@pytest.mark.parametrize("name", sorted(modules()))
def test_layers_import_only_downwards(name):
    upward = [m for m in imported(modules()[name]) if ORDER[layer(m)] > ORDER[layer(name)]]
    assert not upward, (f"{name} ({layer(name)}) imports {upward} from a layer above it; move "
                        "the code that needs them up a layer (docs/architecture.md)")


def writes(path: Path) -> list[str]:
    """Calls in `path` that write files: open(..., 'w'/'a'/'x'), Path.write_text, torch.save, …"""
    found, tree = [], ast.parse(path.read_text())
    in_memory = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Call) and "BytesIO" in ast.unparse(node.value.func)
                 for t in node.targets if isinstance(t, ast.Name)}  # buffers, not files
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in in_memory:
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                found.append(f"line {node.lineno}: open(..., {mode.value!r})")
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if f.attr in WRITING_METHODS or \
                    (owner, f.attr) in WRITING_FUNCTIONS:
                found.append(f"line {node.lineno}: {owner or '…'}.{f.attr}(...)")
    return found


@pytest.mark.parametrize("name", sorted(n for n in modules() if layer(n) == "core"))
def test_the_core_writes_no_files(name):
    if name in WRITES_ITS_DATASET_CACHE:
        assert writes(modules()[name]), "the exception is stale: remove it from the test"
        return
    assert not writes(modules()[name]), (
        f"{name} is core and must not write files: {writes(modules()[name])}; return the data "
        "and let a step (ibdml/steps/) write it")


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name):
    path = modules()[name]
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path} has {len(lines)} lines: split it"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]  # the docstring does not count
            if not body:
                continue
            start = min(getattr(d, "lineno", node.lineno) for d in node.decorator_list) \
                if node.decorator_list else node.lineno
            length = body[-1].end_lineno - start + 1 - (body[0].lineno - node.body[0].lineno)
            assert length <= MAX_FUNCTION_LINES, (
                f"{path}:{node.lineno} {node.name} is {length} lines (docstring excluded): split it")


def test_the_checks_catch_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom ibdml.steps.rundir import write_json\n"
                   "def f(p):\n    torch.save({}, p)\n    open(p, 'w')\n    p.write_text('x')\n")
    assert len(writes(bad)) == 3
    buffer = tmp_path / "buffer.py"
    buffer.write_text("import io\ndef f(fig, p):\n    buf = io.BytesIO()\n"
                      "    fig.savefig(buf)\n    fig.savefig(p)\n")
    assert writes(buffer) == ["line 5: fig.savefig(...)"]
    assert "ibdml.steps.rundir" in imported(bad)
