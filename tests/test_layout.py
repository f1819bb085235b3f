"""The two layers: the library imports nothing from the harness above it; old harness paths still import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

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
        up = [m for m in sys.modules if m.startswith("radargate.experiment") or m == "radargate.cli"]
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
