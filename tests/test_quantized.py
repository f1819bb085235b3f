"""A frozen base quantized by bitsandbytes (QLoRA style): the config, the errors without bitsandbytes,
and, where bitsandbytes runs on this machine's CPU, the mixture on a 4- and 8-bit tiny Llama: what it
wraps, what trains, its forward against the dequantized base, training through the CLI, reloading.

The reference for the forward is the same model in float32 with every quantized weight replaced by its
dequantized value and the same adapters: the 4-bit base computes in float32 with exactly those weights;
the 8-bit base also rounds its inputs to int8 (LLM.int8()), hence a looser tolerance (measured on
bitsandbytes 0.50.2, CPU: 0 for 4 bits, 5e-3 for 8 bits, against experts that move the logits by 0.8).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
from importlib.machinery import ModuleSpec

import pytest
import torch
from safetensors.torch import load_file

from radargate import MoLoRAConfig, get_molora_model
from radargate.checkpoint import WEIGHTS_NAME
from radargate.cli import main
from radargate.errors import QuantizationUnavailable
from radargate.experiment.config import ExperimentConfig, QuantizationSettings
from radargate.experiment.loading import load_model_and_tokenizer
from radargate.experiment.methods import load_base, load_trained
from radargate.experiment.quantization import require_bitsandbytes
from radargate.layer import MoLoRALinear
from tests.conftest import randomize_adapters, write_tiny_config


def _why_bitsandbytes_cannot_run() -> str | None:
    """None when bitsandbytes runs 4- and 8-bit layers on this CPU, else the precise reason."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'radargate[quant]')"
    try:
        for bits in (4, 8):
            require_bitsandbytes(bits, torch.device("cpu"))
    except QuantizationUnavailable as error:
        return str(error)
    return None


CANNOT_RUN = _why_bitsandbytes_cannot_run()
needs_bitsandbytes = pytest.mark.skipif(CANNOT_RUN is not None, reason=f"needs bitsandbytes on CPU: {CANNOT_RUN}")
TARGETS = ["q_proj", "v_proj", "down_proj"]


# -- the config and its errors: no bitsandbytes needed ------------------------------------------------


def test_quantization_is_read_from_set_and_yaml_and_round_trips(tmp_path):
    from_set = ExperimentConfig.load(None, ["model.quantization.bits=8"])
    assert from_set.model.quantization == QuantizationSettings(bits=8)
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  quantization: {bits: 4, quant_type: fp4, compute_dtype: bfloat16, double_quant: yes}\n")
    from_yaml = ExperimentConfig.load(path)
    assert from_yaml.model.quantization == QuantizationSettings(4, "fp4", "bfloat16", True)
    (tmp_path / "saved.yaml").write_text(from_yaml.to_yaml())
    assert ExperimentConfig.load(tmp_path / "saved.yaml") == from_yaml
    assert ExperimentConfig.load(None).model.quantization is None


@pytest.mark.parametrize(("override", "message"), [
    ("model.quantization.bits=3", r"model.quantization.bits=3 is not allowed; choose 4 or 8"),
    ("model.quantization.quant_type=int4", r"model.quantization.quant_type='int4' is unknown; choose one of nf4, fp4"),
    ("model.quantization.compute_dtype=float64", r"model.quantization.compute_dtype='float64' is unknown"),
    ("model.quantization.bitz=4", r"unknown key\(s\) in model.quantization"),
])
def test_a_wrong_quantization_value_names_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.load(None, [override])


def test_4_bit_settings_are_refused_with_8_bits():
    with pytest.raises(ValueError, match=r"quant_type='fp4' applies to 4-bit quantization only"):
        ExperimentConfig.load(None, ["model.quantization.bits=8", "model.quantization.quant_type=fp4"])


def test_missing_bitsandbytes_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # an import of it now fails, as if not installed
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args))
    with pytest.raises(QuantizationUnavailable, match=r"needs the bitsandbytes package.*radargate\[quant\]"):
        require_bitsandbytes(4, torch.device("cpu"))


def test_bitsandbytes_without_a_backend_for_the_device_is_named(monkeypatch):
    fake = types.ModuleType("bitsandbytes")
    fake.__spec__ = ModuleSpec("bitsandbytes", None)
    fake.__version__ = "0.0-test"
    fake.supported_torch_devices = {"cuda"}
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(QuantizationUnavailable, match=r"bitsandbytes 0.0-test has no backend for device 'cpu'.*"
                                                      r"radargate\[quant\]"):
        require_bitsandbytes(8, torch.device("cpu"))


def test_the_cli_reports_a_missing_bitsandbytes_in_one_line(monkeypatch, config_file):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(["train", "--config", str(config_file), "--set", "model.quantization.bits=4"])
    assert status == 1
    assert "bitsandbytes" in err.getvalue() and "radargate[quant]" in err.getvalue()
    assert "Traceback" not in err.getvalue()


# -- the quantized base, where bitsandbytes runs on this CPU ------------------------------------------


def quantized_llama(tiny_model_dir, bits: int) -> torch.nn.Module:
    config = ExperimentConfig.load(None, [f"model.name={tiny_model_dir}", f"model.quantization.bits={bits}"])
    return load_base(config)[0]


def dequantized_weight(layer: torch.nn.Module) -> torch.Tensor:
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return bnb.functional.int8_vectorwise_dequant(layer.weight.data, layer.weight.SCB)


def quantized_class(bits: int) -> type:
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt


@needs_bitsandbytes
@pytest.mark.parametrize("bits", [4, 8])
def test_mixture_layers_wrap_the_quantized_layers_and_only_adapters_train(tiny_model_dir, bits):
    model = get_molora_model(quantized_llama(tiny_model_dir, bits), MoLoRAConfig(num_experts=3, r=2,
                                                                                target_modules=TARGETS))
    assert len(model.molora_layers) == 2 * len(TARGETS)
    for layer in model.molora_layers.values():
        assert type(layer.base_layer) is quantized_class(bits)
        assert layer.base_layer.weight.dtype == (torch.uint8 if bits == 4 else torch.int8)
        assert not layer.base_layer.weight.requires_grad
        assert (layer.in_features, layer.out_features) == (layer.base_layer.in_features, layer.base_layer.out_features)
        for parameter in [*layer.experts.parameters(), *layer.gate.parameters()]:
            assert parameter.dtype == torch.float32 and parameter.requires_grad
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".experts." in name or ".gate." in name for name in trainable)


@needs_bitsandbytes
@pytest.mark.parametrize(("bits", "tolerance"), [(4, 1e-5), (8, 3e-2)])
def test_forward_equals_the_dequantized_base_plus_the_mixture(tiny_model_dir, generator, bits, tolerance):
    config = MoLoRAConfig(num_experts=3, r=2, target_modules=TARGETS, gate="radar")
    quantized = get_molora_model(quantized_llama(tiny_model_dir, bits), config).eval()
    randomize_adapters(quantized, generator)
    reference_base = load_model_and_tokenizer(str(tiny_model_dir))[0]
    cls = quantized_class(bits)
    with torch.no_grad():
        for name, module in quantized.base_model.named_modules():
            if isinstance(module, cls):
                reference_base.get_submodule(name.removesuffix(".base_layer")).weight.copy_(dequantized_weight(module))
    reference = get_molora_model(reference_base, config).eval()
    reference.load_adapter_state_dict(quantized.adapter_state_dict())
    ids = torch.randint(0, reference_base.config.vocab_size, (2, 10), generator=generator)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        logits = quantized(input_ids=ids).logits
        with quantized.disable_experts():
            base_logits = quantized(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 10 * tolerance  # the experts matter at this scale
    torch.testing.assert_close(logits, expected, rtol=tolerance, atol=tolerance)


@needs_bitsandbytes
@pytest.mark.parametrize("bits", [4, 8])
def test_training_through_the_cli_changes_the_adapters_and_the_run_reloads_quantized(tmp_path, tiny_model_dir, bits):
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    args = ["train", "--config", str(config_file), "--set", f"model.quantization.bits={bits}",
            "--set", "train.steps=3", "--set", "train.eval_every=1", "--set", "eval.fit_per_task=0"]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "tiny"
    saved = load_file(run_dir / "adapter" / WEIGHTS_NAME)
    experts_b = [tensor for key, tensor in saved.items() if key.endswith("experts.B")]
    assert experts_b and all(tensor.dtype == torch.float32 and tensor.abs().sum() > 0 for tensor in experts_b)
    model, _, config = load_trained(run_dir)
    assert config.model.quantization == QuantizationSettings(bits=bits)
    assert all(type(layer.base_layer) is quantized_class(bits) for layer in model.molora_layers.values())
    for key, tensor in model.adapter_state_dict().items():
        torch.testing.assert_close(tensor, saved[key], rtol=0, atol=0)


@needs_bitsandbytes
def test_a_layer_repacked_for_cpu_inference_is_refused_with_the_reason(generator):
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(128, 128, bias=False, compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(torch.randn(128, 128, generator=generator), requires_grad=False)
    layer = layer.to("cpu")
    if not getattr(layer, "support_avx512bf16_for_cpu", False):
        pytest.skip("bitsandbytes repacks 4-bit layers only on CPUs with AVX512-BF16; this one has none")
    with torch.no_grad():
        layer.eval()(torch.randn(2, 128, generator=generator))
    assert layer.weight.quant_state.packing_format_for_cpu
    with pytest.raises(ValueError, match=r"repacked by bitsandbytes for CPU inference.*attach experts before"):
        MoLoRALinear(layer, MoLoRAConfig(num_experts=2, r=2))


@needs_bitsandbytes
def test_gradients_through_a_4_bit_layer_are_the_same_after_an_evaluation(generator):
    """bitsandbytes' CPU inference repacking would leave the input without gradient after an evaluation."""
    import bitsandbytes as bnb

    base = bnb.nn.Linear4bit(128, 128, bias=False, compute_dtype=torch.float32)
    base.weight = bnb.nn.Params4bit(torch.randn(128, 128, generator=generator), requires_grad=False)
    layer = MoLoRALinear(base.to("cpu"), MoLoRAConfig(num_experts=2, r=2))
    x = torch.randn(4, 128, generator=generator)

    def input_gradient() -> torch.Tensor:
        inputs = x.clone().requires_grad_(True)
        layer(inputs).square().sum().backward()
        return inputs.grad

    before = input_gradient()
    with torch.no_grad():
        layer.eval()(x)
    layer.train()
    torch.testing.assert_close(input_gradient(), before, rtol=0, atol=0)
