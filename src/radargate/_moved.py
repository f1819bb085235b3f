"""Old import paths of the harness, kept for one release: each imports its new home with a DeprecationWarning.

The harness moved from flat modules beside the library (``radargate.train``) into
``radargate.experiment``. An old name is found by a finder on ``sys.meta_path``, so no stub files sit
in the package; a module whose contents went to several new homes reads its names from them in order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, tuple[str, ...]] = {
    "radargate.train": ("radargate.experiment.train", "radargate.experiment.run", "radargate.experiment.methods",
                        "radargate.experiment.data.bigbench", "radargate.experiment.data.examples",
                        "radargate.experiment.data.splits"),
    "radargate.compare": ("radargate.experiment.compare", "radargate.experiment.run", "radargate.hardware"),
    "radargate.study": ("radargate.experiment.study", "radargate.experiment.report.study",
                        "radargate.experiment.report.study.rows"),
    "radargate.evaluate": ("radargate.experiment.evaluate",),
    "radargate.report": ("radargate.experiment.report.comparison",),
    "radargate.plots": ("radargate.experiment.report.plots",),
    "radargate.analysis": ("radargate.experiment.routing",),
    "radargate.loading": ("radargate.experiment.loading",),
    "radargate.data": ("radargate.experiment.data",),
}
"""Old module -> its new homes, the first one the main one."""
MOVED_PACKAGES = {"radargate.data": "radargate.experiment.data"}
"""Old packages whose submodules moved with them (``radargate.data.bigbench``)."""


def new_homes(name: str) -> tuple[str, ...] | None:
    """Where the old module ``name`` went, or ``None`` if it did not move."""
    if name in MOVED:
        return MOVED[name]
    for old, new in MOVED_PACKAGES.items():
        if name.startswith(old + "."):
            return (new + name[len(old) :],)
    return None


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if new_homes(fullname) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        homes = new_homes(module.__name__) or ()
        warnings.warn(f"{module.__name__} moved to {homes[0]}; the old name goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        modules = [importlib.import_module(home) for home in homes]
        if len(modules) == 1:  # the import system hands out what sys.modules holds after this call
            sys.modules[module.__name__] = modules[0]
            return
        module.__getattr__ = lambda name: _first_attribute(modules, name)  # type: ignore[method-assign]


def _first_attribute(modules: list[ModuleType], name: str) -> Any:
    for module in modules:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"{name!r} is not in {', '.join(module.__name__ for module in modules)}")


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
