"""``manifest.json``, a bundle's table of contents (each part's and each file's size and sha256), read back
checked, and the parts verified against it before anything is extracted."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from radargate.experiment.bundle.parts import PART_PREFIX, file_sha256

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


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
        check_member_path(entry["path"])
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
        size, digest = path.stat().st_size, file_sha256(path)
        if size != part["size"] or digest != part["sha256"]:
            raise ValueError(f"bundle part {name} is corrupt: {size} bytes, sha256 {digest}; the manifest says "
                             f"{part['size']} bytes, sha256 {part['sha256']}. Copy it again (nothing was extracted)")
        paths.append(path)
    return paths


def check_member_path(path: str) -> None:
    """Refuse paths that would land outside the target (absolute, ``..``, empty parts)."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(part in {"", ".", ".."} for part in parts) or "\\" in path:
        raise ValueError(f"the manifest lists a file {path!r} outside the bundle folder; refusing to extract")
