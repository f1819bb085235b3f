from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radargate import MoLoRAConfig
from radargate.gates import GateSettings


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_experts", 0, "num_experts=0"),
        ("r", 2.5, "r=2.5"),
        ("alpha", -1.0, "alpha=-1.0"),
        ("dropout", 1.0, "dropout=1.0"),
        ("gate", "radr", "gate='radr' is unknown; choose one of softmax, topk, uniform, signed, radar"),
        ("stretch", "sigmoid", "stretch='sigmoid'"),
        ("radar_impl", "fast", "radar_impl='fast'"),
        ("theta_max", 4.0, "theta_max=4.0"),
        ("target_modules", [], "target_modules=[]"),
        ("target_modules", "q_proj(", "not a valid regular expression"),
        ("load_balance_weight", -0.1, "load_balance_weight=-0.1"),
        ("train_experts", "yes", "train_experts='yes'"),
    ],
)
def test_bad_value_names_field_value_and_allowed(field, value, expected):
    with pytest.raises(ValueError) as error:
        MoLoRAConfig(**{field: value})
    assert expected in str(error.value)


def test_top_k_larger_than_num_experts_is_rejected():
    with pytest.raises(ValueError, match=r"top_k=5 is larger than num_experts=4"):
        MoLoRAConfig(num_experts=4, gate="topk", top_k=5)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"unknown MoLoRAConfig key\(s\) \['num_expert'\]"):
        MoLoRAConfig.from_dict({"num_expert": 4})


@given(
    num_experts=st.integers(1, 64),
    r=st.integers(1, 64),
    alpha=st.floats(0.01, 1e3),
    dropout=st.floats(0.0, 0.9),
    gate=st.sampled_from(["softmax", "topk", "uniform", "radar"]),
    theta_max=st.floats(0.01, math.pi),
    targets=st.one_of(st.lists(st.sampled_from(["q_proj", "v_proj", "c_attn"]), min_size=1), st.just(r".*proj")),
)
def test_json_round_trip(num_experts, r, alpha, dropout, gate, theta_max, targets):
    config = MoLoRAConfig(
        num_experts=num_experts, r=r, alpha=alpha, dropout=dropout, gate=gate, top_k=1,
        theta_max=theta_max, target_modules=targets,
    )
    assert MoLoRAConfig.from_json(config.to_json()) == config


def test_scaling_is_alpha_over_r():
    assert MoLoRAConfig(r=8, alpha=32).scaling == 4.0


def test_the_config_has_every_setting_a_gate_is_built_from():
    """Gates are typed against ``GateSettings``, not the config; the config must carry each setting, same type."""
    fields = {field.name: field.type for field in dataclasses.fields(MoLoRAConfig)}
    assert {name: fields.get(name) for name in GateSettings.__annotations__} == GateSettings.__annotations__
