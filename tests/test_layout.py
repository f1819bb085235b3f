"""The import structure: no module imports itself in a circle, the library imports nothing from the harness
or the server above it, and old harness paths still import."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import radargate

CORE_MODULES = [
    "radargate", "radargate.config", "radargate.experts", "radargate.gates", "radargate.layer",
    "radargate.injection", "radargate.model", "radargate.losses", "radargate.stats", "radargate.peft_interop",
    "radargate.checkpoint", "radargate.files", "radargate.validation", "radargate.precision", "radargate.hardware",
    "radargate.errors",
]


HARNESS_IMPORTED_BY_EACH = r"""
import json, os, sys
# the core's slow third-party imports, once; each module below is imported in a fork, with no radargate module yet
import safetensors.torch, torch.distributed.tensor, transformers.pytorch_utils

found = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        __import__(module)
        up = [m for m in sys.modules if m.startswith(("radargate.experiment", "radargate.serve", "radargate.cli"))]
        os.write(write, json.dumps(up).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as stream:
        found[module] = json.loads(stream.read())
    os.wait()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def harness_imported_by() -> dict[str, list[str]]:
    """The harness modules that importing each core module brings in, found in a fresh interpreter (this process
    has long imported the harness): one subprocess for all, each module imported in a fork of it."""
    command = [sys.executable, "-c", HARNESS_IMPORTED_BY_EACH, *CORE_MODULES]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_the_harness(harness_imported_by, module):
    assert harness_imported_by[module] == []


# The new homes are imported first: pytest.warns re-emits every other warning raised inside it, out of reach of
# the ignore filters (matched on the raising module), so a torch deprecation warning from a first import of the
# harness would fail the test; whether this process imported the harness before depends on the order of tests.


def test_old_module_path_imports_its_new_home_with_a_warning(monkeypatch):
    from radargate.experiment.methods import load_trained
    from radargate.experiment.train import _Trainer

    monkeypatch.delitem(sys.modules, "radargate.train", raising=False)
    with pytest.warns(DeprecationWarning, match="radargate.train moved to radargate.experiment.train"):
        old = importlib.import_module("radargate.train")
    assert old._Trainer is _Trainer and old.load_trained is load_trained


def test_old_package_path_gives_the_same_modules(monkeypatch):
    from radargate.experiment.data import bigbench

    for name in ("radargate.data", "radargate.data.bigbench"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(DeprecationWarning, match="radargate.data"):
        old = importlib.import_module("radargate.data.bigbench")
    assert old is bigbench


def module_imports(package_dir: Path) -> dict[str, set[str]]:
    """Each module of the package in ``package_dir`` -> the package's modules it imports anywhere in its source
    (``if TYPE_CHECKING:`` blocks and function bodies too). ``from pkg import sub`` is an import of ``pkg.sub``;
    a package's ``__init__`` running before its submodules is not counted (it always does)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                               for alias in node.names)
        graph[name] = {_module_of(target, files) for target in targets} - {"", name}
    return graph


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` names, a relative one resolved against the importing ``package``."""
    if not node.level:
        return node.module or ""
    parent = package.split(".")[: len(package.split(".")) + 1 - node.level]
    return ".".join([*parent, *([node.module] if node.module else [])])


def _module_of(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of the dotted ``name`` that is one of ``modules`` (``""``: none, another package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as the path ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        path.append(name)
        for target in sorted(graph[name]):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done and (circle := visit(target)):
                return circle
        done.add(path.pop())
        return None

    return next((circle for name in sorted(graph) if name not in done and (circle := visit(name))), None)


def test_no_module_of_radargate_imports_itself_in_a_circle():
    circle = import_circle(module_imports(Path(radargate.__file__).parent))
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_a_circle_through_a_type_hint_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("from pkg import b\n\nclass A:\n    pass\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import A\n")
    (package / "c.py").write_text("import pkg.b\nimport json\n")

    graph = module_imports(package)

    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert import_circle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
