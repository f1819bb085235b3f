"""RadarGate's hand-written backward (``SpanCoefficients``) against autograd's recomputation, side by side.

The span path keeps the Gram matrix and recomputes the per-token rotation math in backward. Until the
hand-written backward, autograd did that (``torch.utils.checkpoint`` of ``_span_coefficients``); this
script rebuilds that path here, so both run in one process, interleaved round by round:

- the coefficient math alone (forward + backward) at n in 8, 16, 64, 2048 tokens: ``manual`` (the
  library), ``autograd`` (checkpointed recomputation, the previous code) and ``stored`` (autograd with
  every intermediate kept: faster, but it saves a dozen more tensors);
- one whole-model training step with SmolLM2-135M shapes (``model_step.py``'s model, n = 8, r = 8,
  adapters on all seven linear layers): PEFT's LoRA, the softmax gate, and RadarGate with each backward.

    python benchmarks/radar_backward.py            # about 4 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

import radargate.gates.radar as radar
from model_step import build, step_seconds  # the same model as model_step.py (run as a script from benchmarks/)
from radargate.files import atomic_write_json, atomic_write_text
from radargate.hardware import cpu_description

RESULTS = Path(__file__).parent / "results"


class AutogradRecompute:
    """The previous backward: autograd recomputes ``_span_coefficients`` under ``checkpoint``."""

    @staticmethod
    def apply(*inputs: torch.Tensor):
        return checkpoint(radar._span_coefficients, *inputs, use_reentrant=False)


class Stored:
    """Autograd with every intermediate of the forward kept for backward (no recomputation)."""

    @staticmethod
    def apply(*inputs: torch.Tensor):
        return radar._span_coefficients(*inputs)


BACKWARDS = {"manual": radar.SpanCoefficients, "autograd": AutogradRecompute, "stored": Stored}


def coefficient_inputs(tokens: int, n: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(tokens, n, 8, generator=generator)
    gram = codes @ codes.transpose(-1, -2) / 8
    weights = torch.rand(tokens, n, generator=generator).softmax(-1)
    fusion = torch.rand(n, n, generator=generator).softmax(-1)
    theta = torch.rand(tokens, n, generator=generator) - 0.5
    return tuple(t.requires_grad_(True) for t in (gram, weights, fusion, theta))


def coefficient_step(backward: type, inputs: tuple[torch.Tensor, ...], upstream: torch.Tensor) -> float:
    start = time.perf_counter()
    coefficients = backward.apply(*inputs)[0]
    torch.autograd.grad(coefficients, inputs, upstream)
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], float]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per case, the cases alternating round by round."""
    for _ in range(warmup):
        for run in cases.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def coefficient_table(tokens: int, experts: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in experts:
        inputs = coefficient_inputs(tokens, n)
        upstream = torch.randn(tokens, n)
        cases = {name: functools.partial(coefficient_step, backward, inputs, upstream)
                 for name, backward in BACKWARDS.items()}
        medians = interleaved(cases, warmup=2, repeats=repeats)
        rows += [{"n": n, "backward": name, "ms": 1000 * seconds, "x_manual": seconds / medians["manual"]}
                 for name, seconds in medians.items()]
    return rows


def model_table(repeats: int) -> list[dict]:
    args = argparse.Namespace(model="smollm2-135m", layers=None, device="cpu", dtype="float32", experts=8, r=8)
    ids = torch.randint(0, 49152, (4, 128), generator=torch.Generator().manual_seed(0))
    models = {name: build(name, args) for name in ("peft_lora", "softmax", "radar")}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}

    def run(method: str, backward: type | None = None) -> float:
        radar.SpanCoefficients = backward or BACKWARDS["manual"]
        try:
            return step_seconds(models[method], optimizers[method], ids, "cpu")
        finally:
            radar.SpanCoefficients = BACKWARDS["manual"]

    cases = {"peft_lora": lambda: run("peft_lora"), "softmax": lambda: run("softmax"),
             "radar (manual backward)": lambda: run("radar"),
             "radar (autograd recompute)": lambda: run("radar", AutogradRecompute)}
    medians = interleaved(cases, warmup=1, repeats=repeats)
    return [{"method": name, "s": seconds, "x_peft_lora": seconds / medians["peft_lora"],
             "x_softmax": seconds / medians["softmax"]} for name, seconds in medians.items()]


def markdown(coefficients: list[dict], model: list[dict], meta: dict) -> str:
    lines = ["# RadarGate backward: hand-written vs autograd's recomputation", "", json.dumps(meta), "",
             "| n | backward | forward + backward ms | x manual |", "|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['backward']} | {r['ms']:.1f} | {r['x_manual']:.2f} |" for r in coefficients]
    lines += ["", "| training step (SmolLM2-135M shapes, n = 8, r = 8, 4 x 128 tokens) | s | x peft_lora | x softmax |",
              "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['s']:.3f} | {r['x_peft_lora']:.2f} | {r['x_softmax']:.2f} |" for r in model]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-repeats", type=int, default=3)
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    meta = {"device": f"CPU: {cpu_description()}", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "tokens": args.tokens}
    coefficients = coefficient_table(args.tokens, args.experts, args.repeats)
    model = model_table(args.model_repeats)
    text = markdown(coefficients, model, meta)
    print(text)
    atomic_write_json(RESULTS / f"radar_backward_{args.label}.json",
                      {"meta": meta, "coefficients": coefficients, "model_step": model})
    atomic_write_text(RESULTS / f"radar_backward_{args.label}.md", text)


if __name__ == "__main__":
    main()
