"""The experiment config: values read as users write them, one source for what a run trains, and a
clear error (never a traceback, never a silently changed value) for every wrong value of every field."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import types
import typing

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from radargate.cli import main
from radargate.config import MoLoRAConfig
from radargate.experiment.config import READINGS, ExperimentConfig, method_names
from radargate.experiment.evaluate import mixed_precision
from radargate.gates import GATES


def leaf_fields(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted name -> type hint of every setting a user can write."""
    hints = typing.get_type_hints(cls)
    leaves = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        options = [option for option in typing.get_args(kind) if option is not type(None)] if optional else []
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):  # an optional section: model.quantization
            kind = options[0]
        if dataclasses.is_dataclass(kind):
            leaves.update(leaf_fields(kind, f"{prefix}{field.name}."))
        else:
            leaves[f"{prefix}{field.name}"] = kind
    return leaves


FIELDS = leaf_fields()


def yaml_file(tmp_path, dotted: str, text: str):
    """A config file setting ``dotted`` to the YAML text ``text``, exactly as typed."""
    *sections, leaf = dotted.split(".")
    lines = [f"{'  ' * depth}{section}:" for depth, section in enumerate(sections)]
    lines.append(f"{'  ' * len(sections)}{leaf}: {text}")
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("text", "expected"), [("3e-4", 3e-4), ("1e-3", 1e-3), (".5", 0.5), ("1_000", 1000.0),
                                                ("2", 2.0), ("3.0e-4", 3e-4)])
def test_numbers_are_read_as_written_in_yaml_and_in_set(tmp_path, text, expected):
    assert ExperimentConfig.load(yaml_file(tmp_path, "train.lr", text)).train.lr == expected
    assert ExperimentConfig.load(None, [f"train.lr={text}"]).train.lr == expected


@pytest.mark.parametrize(("text", "expected"), [("1_000", 1000), ("1e3", 1000), ("+7", 7), ("40", 40)])
def test_integer_fields_take_underscores_and_integral_exponents(tmp_path, text, expected):
    assert ExperimentConfig.load(yaml_file(tmp_path, "train.steps", text)).train.steps == expected
    assert ExperimentConfig.load(None, [f"train.steps={text}"]).train.steps == expected


def test_an_integer_field_refuses_a_fraction():
    with pytest.raises(ValueError, match=r"train.steps='2.5' is not allowed; expected an integer"):
        ExperimentConfig.load(None, ["train.steps=2.5"])


def test_unknown_optimizer_names_the_choices():
    assert ExperimentConfig.load(None, ["train.optimizer=sgd"]).train.optimizer == "sgd"
    with pytest.raises(ValueError, match=r"train.optimizer='adam' is unknown; choose one of adamw, sgd"):
        ExperimentConfig.load(None, ["train.optimizer=adam"])


@pytest.mark.parametrize("share", ["-0.1", "1.5", "nan"])
def test_skipped_share_is_a_share(share):
    assert ExperimentConfig.load(None, ["train.max_skipped_share=0"]).train.max_skipped_share == 0
    assert ExperimentConfig.load(None, ["train.max_skipped_share=1"]).train.max_skipped_share == 1
    with pytest.raises(ValueError, match=rf"train.max_skipped_share={share}.* must be a number in \[0.0, 1.0\]"):
        ExperimentConfig.load(None, [f"train.max_skipped_share={share}"])


def test_precision_no_is_the_string_no(tmp_path):
    assert ExperimentConfig.load(yaml_file(tmp_path, "train.precision", "no")).train.precision == "no"
    assert ExperimentConfig.load(None, ["train.precision=no"]).train.precision == "no"


@pytest.mark.parametrize("word", ["no", "off", "yes", "on", "null", "true", "3e-4", "1_000", "~"])
def test_string_fields_keep_the_words_users_write(word):
    assert ExperimentConfig.load(None, [f"model.name={word}"]).model.name == word


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("true", True), ("on", True), ("no", False),
                                                ("False", False), ("off", False)])
def test_boolean_fields_take_yes_and_no(text, expected):
    assert ExperimentConfig.load(None, [f"train.compile={text}"]).train.compile is expected


def test_optional_caps_take_null(tmp_path):
    assert ExperimentConfig.load(yaml_file(tmp_path, "data.max_test_per_task", "null")).data.max_test_per_task is None


@pytest.mark.parametrize("method", method_names())
def test_saved_config_reads_back_equal(tmp_path, method):
    config = ExperimentConfig.load("configs/quickstart.yaml", [f"method={method}", "train.lr=3e-4"])
    path = tmp_path / "saved.yaml"
    path.write_text(config.to_yaml())
    assert ExperimentConfig.load(path) == config


def test_eval_set_is_accepted_on_every_config_reading_verb():
    for verb in ("train", "eval", "compare", "study"):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            status = main([verb, *(["--config", "configs/quickstart.yaml"]), "--set", "train.lr=oops"])
        assert status == 2 and "train.lr='oops'" in err.getvalue(), verb


# -- one source of truth for the gate --------------------------------------------------------------


@pytest.mark.parametrize("gate", list(GATES))
def test_method_sets_the_gate(gate):
    config = ExperimentConfig.load("configs/quickstart.yaml", [f"method={gate}"])
    assert config.adapter.gate == gate
    assert config.for_method("softmax").adapter.gate == "softmax"


def test_adapter_gate_may_repeat_the_method():
    assert ExperimentConfig.load(None, ["method=topk", "adapter.gate=topk"]).adapter.gate == "topk"


def test_adapter_gate_contradicting_the_method_is_an_error():
    with pytest.raises(ValueError, match=r"adapter.gate='softmax' contradicts method='radar'.*set method: softmax"):
        ExperimentConfig.load(None, ["method=radar", "adapter.gate=softmax"])
    with pytest.raises(ValueError, match=r"adapter.gate='radar' does not apply to method='lora'"):
        ExperimentConfig.load(None, ["method=lora", "adapter.gate=radar"])


def test_lora_and_base_configs_name_no_gate():
    for method in ("lora", "base"):
        assert "gate" not in ExperimentConfig.load(None, [f"method={method}"]).to_dict()["adapter"]


def test_adapter_errors_name_the_section():
    with pytest.raises(ValueError, match=r"adapter.top_k=5 is larger than num_experts=4"):
        ExperimentConfig.load(None, ["method=topk", "adapter.num_experts=4", "adapter.top_k=5"])


# -- property tests: every field, wrong values ----------------------------------------------------

WRONG_TEXT = {
    bool: ["maybe", "2", "[true]", "{a: 1}", "yess"],
    int: ["abc", "2.5", "[1, 2]", "{a: 1}", "true", "1e400", "nan", "0x"],
    float: ["abc", "[1]", "{a: 1}", "yes", "nan", "inf", "-inf", "1e400", "1..2"],
    str: ["[a, b]", "{a: 1}", "[]"],
    "list": ["{a: 1}", "[[a]]", "[{a: 1}]"],
}


def wrong_texts(kind: typing.Any) -> list[str]:
    """YAML texts that no value of type ``kind`` can be read from."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if dataclasses.is_dataclass(item):  # data.sources: a list of sections
            return WRONG_TEXT["list"] + ["abc", "[abc]", "[{name: x}]"]
        scalar = {str: [], int: ["[abc]", "[1.5]"], float: ["[abc]", "[nan]", "[yes]"]}[item]
        return WRONG_TEXT["list"] + ["abc"] + scalar
    options = [option for option in typing.get_args(kind) if option is not type(None)]
    if options and len(options) > 1:  # list[str] | str
        return WRONG_TEXT["list"]
    return WRONG_TEXT[options[0] if options else kind]


CASES = [(name, text) for name, kind in FIELDS.items() for text in wrong_texts(kind)]


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(CASES))
def test_every_wrong_value_of_every_field_is_a_clear_error(case):
    name, text = case
    with pytest.raises(ValueError) as error:
        ExperimentConfig.load(None, [f"{name}={text}"])
    assert name in str(error.value)


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(CASES))
def test_every_wrong_value_through_the_cli_exits_2_naming_the_field(case):
    name, text = case
    with contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(["train", "--set", f"{name}={text}"])
    assert status == 2
    assert name in err.getvalue() and "Traceback" not in err.getvalue()


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(CASES))
def test_every_wrong_value_in_a_yaml_file_is_a_clear_error(tmp_path_factory, case):
    name, text = case
    with pytest.raises(ValueError) as error:
        ExperimentConfig.load(yaml_file(tmp_path_factory.mktemp("c"), name, text))
    assert name in str(error.value)


@settings(max_examples=100, deadline=None)
@given(lr=st.floats(min_value=1e-9, max_value=1e3), style=st.sampled_from(["{:e}", "{!r}", "{:.3e}", "{:.6f}"]))
def test_a_valid_number_is_never_changed(lr, style):
    text = style.format(lr)
    if float(text) <= 0:  # "{:.6f}" rounds tiny rates to 0.000000, which is rightly refused
        return
    assert ExperimentConfig.load(None, [f"train.lr={text}"]).train.lr == float(text)


@settings(max_examples=100, deadline=None)
@given(steps=st.integers(1, 10**9))
def test_a_valid_integer_with_underscores_is_never_changed(steps):
    assert ExperimentConfig.load(None, [f"train.steps={steps:_}"]).train.steps == steps


@settings(max_examples=100, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,19}", fullmatch=True)  # plain scalars, no YAML syntax
       | st.sampled_from(["no", "yes", "off", "on", "null", "true", "False", "1e3", ".5"]))
def test_a_string_value_is_never_changed(name):
    assert ExperimentConfig.load(None, [f"model.name={name}"]).model.name == name


def test_typed_values_from_python_are_checked_too():
    with pytest.raises(ValueError, match=r"train.steps=\[1\] is not allowed"):
        ExperimentConfig.from_dict({"train": {"steps": [1]}})
    with pytest.raises(ValueError, match=r"model.name=5 is not allowed; expected a text value"):
        ExperimentConfig.from_dict({"model": {"name": 5}})
    assert ExperimentConfig.from_dict({"adapter": MoLoRAConfig(r=3).to_dict() | {"gate": "radar"}}).adapter.r == 3


def test_the_yaml_file_may_use_plain_yaml_1_1_looking_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": "3e-4", "precision": "no"}}) + "name: off\n")
    config = ExperimentConfig.load(path)
    assert (config.train.lr, config.train.precision, config.name) == (3e-4, "no", "off")


def test_gates_lists_every_method_a_config_may_name(capsys):
    assert main(["gates"]) == 0
    printed = capsys.readouterr().out
    listed = {line.split()[0] for line in printed.splitlines() if line and not line.startswith(("Other", "Baselines"))}
    assert listed == set(GATES) | set(READINGS)
    assert "radar-sparse   the radar gate with adapter.stretch=topk" in printed
    assert "Baselines: lora (PEFT's LoRA at rank num_experts * r), base (the untrained model)" in printed


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, "no"), (True, False, "bf16"),
                                                              (False, True, "bf16")])
def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    """Emulated bf16 is several times slower than float32 on the CPU (an AVX2-only machine: 8x for a matmul)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert mixed_precision("auto") == expected
    assert mixed_precision("bf16") == "bf16" and mixed_precision("no") == "no"


@pytest.mark.parametrize("key", ["data.sources", "study.unseen_sources"])
def test_two_sources_of_one_name_are_refused(key):
    twice = "[{name: gcd, package: reasoning_gym, task: gcd}, {name: gcd, package: reasoning_gym, task: lcm}]"
    with pytest.raises(ValueError, match=rf"{key} repeats the name\(s\) \['gcd'\]; each source needs its own name"):
        ExperimentConfig.load(None, [f"{key}={twice}"])
