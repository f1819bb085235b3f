"""Layer benchmark: forward + backward time and memory of one adapted linear layer, side by side.

For each layer shape and number of experts ``n`` (rank ``r`` each) it times, in one process and
interleaved round by round (so machine noise hits every method alike):

- ``peft_lora``: PEFT's own LoRA layer at rank ``n * r`` (the arithmetic floor of a mixture);
- ``softmax``, ``topk`` (k=2), ``radar_span`` (default: span-space, recomputed in backward),
  ``radar_span_stored`` (span-space, intermediates stored), ``radar_materialized``: radargate layers;
- ``loop``: a per-expert Python loop with a softmax router (how X-LoRA and MoLE compute);
- ``topk_dispatch``: top-2 that runs each expert only on the tokens routed to it (gather, LoRA,
  weighted ``index_add``; how MixLoRA computes), against radargate's dense ``topk``.

Time is the median over repeats of forward + backward after warm-up; the base weight is frozen and
included, the input requires grad (as in a middle layer). Memory: on CUDA the peak allocated during
forward + backward above what was allocated before; everywhere, the bytes autograd saves for
backward (distinct storages), the part of training memory that grows with the adapter.

    python benchmarks/layer_speed.py --quick          # CPU, a few minutes
    python benchmarks/layer_speed.py                  # the full grid
    python benchmarks/layer_speed.py --device cuda --dtype bfloat16 --label h100
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from radargate import MoLoRAConfig
from radargate.hardware import cpu_description
from radargate.layer import MoLoRALinear
from results_table import write_results

SHAPES = {"smollm_attn": (576, 576), "smollm_mlp": (576, 1536), "7b_attn": (4096, 4096), "7b_mlp": (4096, 11008)}
METHODS = ("peft_lora", "softmax", "topk", "topk_dispatch", "radar_span", "radar_span_stored", "radar_materialized",
           "loop")


class LoopMixture(nn.Module):
    """The naive baseline: a softmax router and one LoRA module per expert, summed in a Python loop."""

    def __init__(self, base: nn.Linear, n: int, r: int, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.router = nn.Linear(base.in_features, n)
        self.down = nn.ModuleList(nn.Linear(base.in_features, r, bias=False) for _ in range(n))
        self.up = nn.ModuleList(nn.Linear(r, base.out_features, bias=False) for _ in range(n))
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.router(x).softmax(-1)
        out = self.base(x)
        for i, (down, up) in enumerate(zip(self.down, self.up, strict=True)):
            out = out + weights[..., i : i + 1] * up(down(x)) * self.scaling
        return out


class TopKDispatch(LoopMixture):
    """Top-k with token dispatch: expert ``i`` runs only on the tokens that chose it."""

    def __init__(self, base: nn.Linear, n: int, r: int, scaling: float, k: int = 2) -> None:
        super().__init__(base, n, r, scaling)
        self.k = min(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.router(x).softmax(-1)
        weights, chosen = probs.topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = self.base(x)
        for i, (down, up) in enumerate(zip(self.down, self.up, strict=True)):
            token, slot = (chosen == i).nonzero(as_tuple=True)
            if token.numel():
                delta = up(down(x[token])) * (weights[token, slot, None] * self.scaling)
                out = out.index_add(0, token, delta.to(out.dtype))
        return out


def build(method: str, d_in: int, d_out: int, n: int, r: int, device: str, dtype: torch.dtype) -> nn.Module:
    base = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
    if method == "peft_lora":
        holder = nn.Sequential()
        holder.add_module("proj", base)
        model = get_peft_model(holder, LoraConfig(r=n * r, lora_alpha=2 * n * r, target_modules=["proj"]))
        layer = model.base_model.model.proj
    elif method == "loop":
        layer = LoopMixture(base, n, r, scaling=2.0)
    elif method == "topk_dispatch":
        layer = TopKDispatch(base, n, r, scaling=2.0)
    else:
        gate = "radar" if method.startswith("radar") else method
        impl = "materialized" if method == "radar_materialized" else "span"
        config = MoLoRAConfig(num_experts=n, r=r, alpha=2 * r, gate=gate, top_k=min(2, n), radar_impl=impl,
                              radar_recompute=method != "radar_span_stored", target_modules=["proj"])
        layer = MoLoRALinear(base, config)
    layer = layer.to(device)
    _randomize(layer, dtype)
    return layer


def _randomize(layer: nn.Module, dtype: torch.dtype) -> None:
    """Nonzero adapter weights (B starts at zero), so no path takes a shortcut on zeros."""
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.02)
    if dtype != torch.float32:  # the half-precision case: adapters too, as autocast would run them
        layer.to(dtype)


def saved_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run the forward, counting the distinct storages autograd saves for backward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(storages.values())


def measure(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, device: str) -> dict[str, float]:
    """One forward + backward: seconds, saved bytes and (CUDA) peak bytes above the start."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out, saved = saved_bytes(lambda: layer(x))
    out.backward(grad)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if device == "cuda" else float("nan")
    return {"seconds": seconds, "saved_bytes": saved, "peak_bytes": peak}


def run_case(shape: str, n: int, args: argparse.Namespace) -> list[dict]:
    d_in, d_out = SHAPES[shape]
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(args.tokens, d_in, device=args.device, dtype=dtype, generator=generator)
    x.requires_grad_(not args.frozen_input)
    grad = torch.randn(args.tokens, d_out, device=args.device, dtype=dtype, generator=generator)
    methods = [m for m in args.methods if not (m == "radar_materialized" and n > args.max_materialized_n)]
    layers = {m: build(m, d_in, d_out, n, args.r, args.device, dtype) for m in methods}
    samples: dict[str, list[dict]] = {m: [] for m in methods}
    for round_ in range(args.warmup + args.repeats):
        for method in methods:  # interleaved, so noise hits every method alike
            sample = measure(layers[method], x, grad, args.device)
            if round_ >= args.warmup:
                samples[method].append(sample)
    rows = []
    for method in methods:
        times = [s["seconds"] for s in samples[method]]
        rows.append({
            "shape": shape, "d_in": d_in, "d_out": d_out, "n": n, "r": args.r, "tokens": args.tokens,
            "method": method, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "saved_mib": samples[method][-1]["saved_bytes"] / 2**20,
            "peak_mib": samples[method][-1]["peak_bytes"] / 2**20,
        })
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each method's time and memory over the softmax gate's and PEFT LoRA's in the same case."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cases.setdefault((row["shape"], row["n"]), {})[row["method"]] = row
    for case in cases.values():
        for row in case.values():
            for reference in ("softmax", "peft_lora"):
                if reference in case:
                    row[f"time_vs_{reference}"] = row["median_ms"] / case[reference]["median_ms"]
                    row[f"saved_vs_{reference}"] = row["saved_mib"] / case[reference]["saved_mib"]
            if "loop" in case:
                row["speedup_vs_loop"] = case["loop"]["median_ms"] / row["median_ms"]


def table(rows: list[dict]) -> str:
    header = "| shape | n | method | median ms | x softmax | x peft_lora | saved MiB | mem x softmax | vs loop |"
    lines = [header, "|---" * 9 + "|"]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['n']} | {row['method']} | {row['median_ms']:.2f} | "
            f"{_ratio(row, 'time_vs_softmax')} | {_ratio(row, 'time_vs_peft_lora')} | "
            f"{row['saved_mib']:.1f} | {_ratio(row, 'saved_vs_softmax')} | {_ratio(row, 'speedup_vs_loop', 'x')} |"
        )
    return "\n".join(lines)


def _ratio(row: dict, key: str, unit: str = "") -> str:
    """A ratio to a method that ran in this table, or ``-`` when that method was left out (``--methods``)."""
    return f"{row[key]:.2f}{unit}" if key in row else "-"


def environment(args: argparse.Namespace) -> dict:
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU: {cpu_description()}"
    return {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "dtype": args.dtype, "label": args.label, "input_requires_grad": not args.frozen_input}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 shapes, n in 2 8 64, fewer repeats")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-materialized-n", type=int, default=64)
    parser.add_argument("--frozen-input", action="store_true", help="the layer input does not require grad (the "
                        "first adapted layer after frozen embeddings): no input gradient is computed")
    parser.add_argument("--label", default=None, help="name of the results files (default: device)")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.experts, args.warmup, args.repeats = ["smollm_attn", "smollm_mlp"], [2, 8, 64], 1, 5
    args.label = args.label or ("cpu" if args.device == "cpu" else "cuda")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for shape in args.shapes:
        for n in args.experts:
            rows += run_case(shape, n, args)
            print(f"done {shape} n={n}", flush=True)
    add_ratios(rows)
    write_results(f"layer_{args.label}{'_quick' if args.quick else ''}", "Layer benchmark", environment(args), rows,
                  [table(rows)])


if __name__ == "__main__":
    main()
