"""Whole-model benchmark: one training step (forward, backward, AdamW) of PEFT's LoRA vs each gate.

The model is randomly initialised with the shapes of SmolLM2-135M (or a slice of a 7B Llama:
a few layers of hidden size 4096), so no weights are needed; timings do not depend on values.
Adapters go on every linear layer of attention and MLP; PEFT's LoRA has rank ``n * r``, the
same trainable width as the mixture. Methods run interleaved, round by round, in one process.

    python benchmarks/model_step.py --quick                     # CPU, a few minutes
    python benchmarks/model_step.py --model 7b-slice --layers 2 --batch 1 --warmup 1 --repeats 2   # CPU, ~24 GB
    python benchmarks/model_step.py --device cuda --dtype bfloat16 --model 7b-slice --label h100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from radargate import MoLoRAConfig, get_molora_model
from radargate.hardware import cpu_description
from results_table import write_results

MODELS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "7b-slice": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = ("peft_lora", "softmax", "topk", "radar")


def build(method: str, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = {**MODELS[args.model], **({"num_hidden_layers": args.layers} if args.layers else {})}
    base = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096))
    base = base.to(device=args.device, dtype=getattr(torch, args.dtype))
    if method == "peft_lora":
        rank = args.experts * args.r
        return get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    config = MoLoRAConfig(num_experts=args.experts, r=args.r, alpha=2 * args.r, gate=method, target_modules=TARGETS)
    return get_molora_model(base, config)


def step_seconds(model, optimizer, ids: torch.Tensor, device: str) -> float:
    return timed_step(model, optimizer, ids, device)[0]


def timed_step(model, optimizer, ids: torch.Tensor, device: str) -> tuple[float, float]:
    """One forward, backward and optimizer step: its seconds (the GPU synchronised) and its loss."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4 x 128 tokens, 3 repeats")
    parser.add_argument("--model", default="smollm2-135m", choices=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    parser.add_argument("--label", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.length, args.repeats = 4, 128, 3
    label = args.label or args.device
    models = {m: build(m, args) for m in METHODS}
    optimizers = {
        m: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4) for m, model in models.items()
    }
    ids = torch.randint(0, MODELS[args.model]["vocab_size"], (args.batch, args.length), device=args.device)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for round_ in range(args.warmup + args.repeats):
        for method in METHODS:
            seconds = step_seconds(models[method], optimizers[method], ids, args.device)
            if round_ >= args.warmup:
                times[method].append(seconds)
    reference = statistics.median(times["peft_lora"])
    rows = [
        {"method": m, "median_s": statistics.median(t), "vs_peft_lora": statistics.median(t) / reference,
         "trainable": sum(p.numel() for p in models[m].parameters() if p.requires_grad)}
        for m, t in times.items()
    ]
    environment = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU: {cpu_description()}",
        "torch": torch.__version__, "model": args.model,
        "layers": args.layers or MODELS[args.model]["num_hidden_layers"], "dtype": args.dtype,
        "experts": args.experts, "r": args.r,
        "batch": args.batch, "length": args.length, "repeats": args.repeats,
    }
    lines = ["| method | median step s | x peft_lora | trainable params |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['median_s']:.3f} | {r['vs_peft_lora']:.2f} | {r['trainable']:,} |" for r in rows]
    name = f"model_{args.model}_{label}{'_quick' if args.quick else ''}"
    write_results(name, "Training-step benchmark", environment, rows, lines)


if __name__ == "__main__":
    main()
