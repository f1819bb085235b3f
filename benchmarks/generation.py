"""Generation speed with the KV cache: PEFT's LoRA and each gate on the quickstart model.

Decoding feeds one token per sequence per step, so a layer's adapter sees a handful of tokens and
its cost is fixed per-call work (kernel launches, Python), not arithmetic. This measures that case
on the real quickstart model (SmolLM2-135M-Instruct, offline from the package cache) with the
quickstart's adapters (n = 4, r = 4 on q_proj and v_proj by default). The experts' ``B`` factors are
random (not zero) so every gate does its full work; greedy decoding of a fixed number of new tokens
(``min_new_tokens`` = ``max_new_tokens``), methods interleaved round by round in one process.

    python benchmarks/generation.py                  # about 3 min on the 2-core CPU
    python benchmarks/generation.py --experts 8 --batch 1 --label cpu_n8_b1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from radargate import MoLoRAConfig, get_molora_model
from radargate.experiment.loading import DEFAULT_MODEL, load_model_and_tokenizer
from radargate.hardware import cpu_description
from results_table import write_results

METHODS = ("base", "peft_lora", "softmax", "topk", "radar")
PROMPTS = [
    "Question: Is the following sentence plausible? Joao Moutinho caught the screen pass in the NFC "
    "championship.\nAnswer:",
    "Question: Which of the following is a humorous edit of this artist or movie name: 'the beatles'?\nAnswer:",
    "Question: If you follow these instructions, do you return to the starting point? Take 2 steps.\nAnswer:",
    "Question: Identify the causal relation: the glass fell off the table, so it broke.\nAnswer:",
]


def randomize_experts(model: torch.nn.Module, seed: int) -> None:
    """Give every expert a non-zero ``B`` (and RadarGate non-zero angles) so no gate takes a shortcut."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and (name.endswith(("experts.B", "lora_B.default.weight", "angle.weight"))):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def build(method: str, base: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    model = copy.deepcopy(base)
    if method == "base":
        return model
    if method == "peft_lora":
        rank = args.experts * args.r
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=args.targets))
    else:
        config = MoLoRAConfig(num_experts=args.experts, r=args.r, alpha=2 * args.r, gate=method,
                              target_modules=args.targets)
        model = get_molora_model(model, config)
    randomize_experts(model, seed=0)
    return model.eval()


@torch.inference_mode()
def generate_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor], new_tokens: int, pad_id: int) -> float:
    start = time.perf_counter()
    model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=pad_id)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--batch", type=int, default=4, help=f"prompts per call (at most {len(PROMPTS)} distinct)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    base, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    tokenizer.padding_side = "left"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    batch = dict(tokenizer(prompts, return_tensors="pt", padding=True))
    models = {m: build(m, base, args) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for round_ in range(args.warmup + args.repeats):
        for method in METHODS:
            seconds = generate_seconds(models[method], batch, args.new_tokens, tokenizer.pad_token_id)
            if round_ >= args.warmup:
                times[method].append(seconds)
    tokens = args.batch * args.new_tokens
    speed = {m: tokens / statistics.median(t) for m, t in times.items()}
    rows = [{"method": m, "median_s": statistics.median(t), "tokens_per_s": speed[m],
             "vs_softmax": speed[m] / speed["softmax"], "vs_peft_lora": speed[m] / speed["peft_lora"]}
            for m, t in times.items()]
    environment = {"device": f"CPU: {cpu_description()}", "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "model": DEFAULT_MODEL, "dtype": "float32",
                   "experts": args.experts, "r": args.r, "targets": args.targets, "batch": args.batch,
                   "new_tokens": args.new_tokens, "repeats": args.repeats}
    lines = ["| method | median s | tokens/s | speed x softmax | speed x peft_lora |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['median_s']:.2f} | {r['tokens_per_s']:.1f} | {r['vs_softmax']:.2f} | "
              f"{r['vs_peft_lora']:.2f} |" for r in rows]
    write_results(f"generation_{args.label}", "Generation benchmark", environment, rows, lines)


if __name__ == "__main__":
    main()
