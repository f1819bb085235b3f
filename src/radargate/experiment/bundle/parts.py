"""A bundle's files as one tar stream cut into parts of at most ``part_size`` bytes, each hashed on the way, and
the joined parts read back with every file checked against its sha256."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

PART_SIZE = 48 * 2**20
"""Largest part, in bytes: the lent GPU machine takes at most 64 MiB per call, the working tree included."""
PART_PREFIX = "bundle.part"
_CHUNK = 1 << 20


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


def write_parts(
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


def extract(parts: Iterable[Path], folder: Path, expected: Mapping[str, Mapping[str, Any]]) -> None:
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


def _copy_hashed(source: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """The hex sha256 of what ``source`` holds, copied into ``sink`` on the way if given."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return _copy_hashed(stream)
