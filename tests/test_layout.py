"""The layers: the library imports nothing from the harness or the server above it; old harness paths still import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

CORE_MODULES = [
    "radargate", "radargate.config", "radargate.experts", "radargate.gates", "radargate.layer",
    "radargate.injection", "radargate.model", "radargate.losses", "radargate.stats", "radargate.peft_interop",
    "radargate.checkpoint", "radargate.files", "radargate.validation", "radargate.precision", "radargate.hardware",
    "radargate.errors",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_the_harness(module):
    """Checked in a fresh interpreter: this process has long imported the harness."""
    code = (f"import sys, {module}\n"
            "above = ('radargate.experiment', 'radargate.serve', 'radargate.cli')\n"
            "up = [m for m in sys.modules if m.startswith(above)]\n"
            "print(','.join(up))")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == ""


def test_old_module_path_imports_its_new_home_with_a_warning(monkeypatch):
    monkeypatch.delitem(sys.modules, "radargate.train", raising=False)
    with pytest.warns(DeprecationWarning, match="radargate.train moved to radargate.experiment.train"):
        old = importlib.import_module("radargate.train")
    from radargate.experiment.methods import load_trained
    from radargate.experiment.train import _Trainer

    assert old._Trainer is _Trainer and old.load_trained is load_trained


def test_old_package_path_gives_the_same_modules(monkeypatch):
    for name in ("radargate.data", "radargate.data.bigbench"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(DeprecationWarning, match="radargate.data"):
        old = importlib.import_module("radargate.data.bigbench")
    from radargate.experiment.data import bigbench

    assert old is bigbench
