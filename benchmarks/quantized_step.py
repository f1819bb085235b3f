"""A quantized frozen base against the float one: the base's bytes and training tokens/s, side by side.

The real default model (SmolLM2-135M-Instruct, offline) is loaded the way a run loads it
(``model.quantization``: unquantized, 8-bit, 4-bit NF4 through bitsandbytes), a mixture goes on
every linear layer of attention and MLP, and one training step (forward, backward, AdamW) is timed
on the same random batch, the precisions interleaved round by round in one process. Bytes are those
of the base's state dict (tied tensors once; a 4-bit layer's scales included), in all and for the
linear layers that quantization replaces (embeddings, norms and the tied head stay in float32).

    python benchmarks/quantized_step.py --quick     # CPU, a few minutes (needs pip install 'radargate[quant]')
    python benchmarks/quantized_step.py --device-label h100 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from model_step import timed_step  # the same step as model_step.py (run as a script from benchmarks/)
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.methods import attach_method, load_base
from radargate.files import atomic_write_json, atomic_write_text
from radargate.hardware import hardware_description

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PRECISIONS = {"none": [], "8": ["model.quantization.bits=8"], "4": ["model.quantization.bits=4"]}
RESULTS = Path(__file__).parent / "results"


def build(precision: str, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, int]]:
    """The mixture on the base in ``precision``, and the base's bytes (all, linear layers)."""
    overrides = [f"method={args.method}", f"model.dtype={args.dtype}", f"adapter.num_experts={args.experts}",
                 f"adapter.r={args.r}", f"adapter.target_modules=[{','.join(TARGETS)}]", *PRECISIONS[precision]]
    config = ExperimentConfig.load(None, overrides)
    base, _ = load_base(config)
    sizes = state_dict_bytes(base)
    torch.manual_seed(0)
    model = attach_method(base, config)
    model.train()
    return model, sizes


def state_dict_bytes(base: torch.nn.Module) -> dict[str, int]:
    seen: set[int] = set()
    total = linear = 0
    for key, tensor in base.state_dict().items():
        if tensor.data_ptr() in seen:  # the tied output head is the embedding
            continue
        seen.add(tensor.data_ptr())
        size = tensor.numel() * tensor.element_size()
        total += size
        if any(f".{target}." in key for target in TARGETS):
            linear += size
    return {"base_bytes": total, "linear_bytes": linear}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 2 x 128 tokens, 1 warm-up, 3 repeats")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--method", default="radar")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.length, args.warmup, args.repeats = 2, 128, 1, 3
    built = {precision: build(precision, args) for precision in args.precisions}
    models = {precision: model for precision, (model, _) in built.items()}
    optimizers = {p: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)
                  for p, m in models.items()}
    device = next(iter(models.values())).base_model.device
    generator = torch.Generator().manual_seed(0)
    vocab = next(iter(models.values())).config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=generator).to(device)
    times: dict[str, list[float]] = {p: [] for p in models}
    first_loss: dict[str, float] = {}
    for round_ in range(args.warmup + args.repeats):
        for precision in models:
            seconds, loss = timed_step(models[precision], optimizers[precision], ids, device.type)
            first_loss.setdefault(precision, loss)
            if round_ >= args.warmup:
                times[precision].append(seconds)
    tokens = args.batch * args.length
    reference = built[args.precisions[0]][1]
    rows = []
    for precision, (model, sizes) in built.items():
        median = statistics.median(times[precision])
        rows.append({
            "quantization": {"none": "none", "8": "8-bit", "4": "4-bit nf4"}[precision],
            **sizes, "base_bytes_x": sizes["base_bytes"] / reference["base_bytes"],
            "linear_bytes_x": sizes["linear_bytes"] / reference["linear_bytes"],
            "median_step_s": median, "tokens_per_s": tokens / median,
            "first_step_loss": first_loss[precision],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        })
    environment = {
        "device": hardware_description(), "model": "smollm2-135m-instruct (real weights)", "method": args.method,
        "dtype": args.dtype, "experts": args.experts, "r": args.r, "batch": args.batch, "length": args.length,
        "warmup": args.warmup, "repeats": args.repeats, "bitsandbytes": _bitsandbytes_version(),
    }
    first = args.precisions[0]
    lines = [f"| base | base MB | x {first} | linear layers MB | x {first} | step s | tokens/s | first loss | "
             "trainable |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['quantization']} | {r['base_bytes'] / 2**20:.1f} | {r['base_bytes_x']:.2f} | "
              f"{r['linear_bytes'] / 2**20:.1f} | {r['linear_bytes_x']:.2f} | {r['median_step_s']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['first_step_loss']:.4f} | {r['trainable']:,} |" for r in rows]
    name = f"quantized_step_{args.label}{'_quick' if args.quick else ''}"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", {"environment": environment, "rows": rows})
    summary = f"# Quantized base, training step ({name})\n\n{json.dumps(environment)}\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / f"{name}.md", summary)
    print(summary)


def _bitsandbytes_version() -> str | None:
    try:
        import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes.__version__


if __name__ == "__main__":
    main()
