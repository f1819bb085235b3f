"""Where one layer's extra time goes: a profile of two methods' forward + backward, op by op, side by side.

``layer_speed.py`` says *how much* slower one gate's layer is than another's; this says *where*: each aten
op (grouped by name and input shapes) with its calls and milliseconds per forward + backward for both
methods and the difference, largest first, plus each method's total number of ops and median wall time.
Both methods are profiled in alternating rounds in one process and each op keeps its fastest round, so a
burst of noise on this shared machine does not land on one side only.

    python benchmarks/layer_profile.py                                    # 576 -> 576, n = 8, r = 8, 2048 tokens
    python benchmarks/layer_profile.py --shape smollm_mlp --tokens 512 --r 4   # one layer of model_step.py --quick
    python benchmarks/layer_profile.py --methods peft_lora softmax
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from layer_speed import METHODS, SHAPES, build, environment
from results_table import write_results

Key = tuple[str, str]
"""An op's name and its input shapes."""


def profile_round(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, iterations: int
                  ) -> tuple[dict[Key, tuple[int, float]], float]:
    """Per op, calls and self milliseconds per forward + backward over ``iterations``; and the median wall ms
    of an unprofiled forward + backward (the profiler's own overhead is not in it)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(iterations):
            layer(x).backward(grad)
    ops = {(event.key, str(event.input_shapes)): (event.count // iterations,
                                                  event.self_cpu_time_total / 1e3 / iterations)
           for event in prof.key_averages(group_by_input_shape=True) if event.key.startswith("aten::")}
    walls = []
    for _ in range(iterations):
        start = time.perf_counter()
        layer(x).backward(grad)
        walls.append(1e3 * (time.perf_counter() - start))
    return ops, statistics.median(walls)


def fastest(rounds: list[dict[Key, tuple[int, float]]]) -> dict[Key, tuple[int, float]]:
    """Each op's fastest round (calls are the same in every round)."""
    best: dict[Key, tuple[int, float]] = {}
    for ops in rounds:
        for key, (calls, ms) in ops.items():
            if key not in best or ms < best[key][1]:
                best[key] = (calls, ms)
    return best


def compare(first: dict[Key, tuple[int, float]], second: dict[Key, tuple[int, float]], top: int) -> list[dict]:
    """Ops sorted by how much more time the second method spends in them, the ``top`` largest."""
    rows = []
    for key in set(first) | set(second):
        calls_a, ms_a = first.get(key, (0, 0.0))
        calls_b, ms_b = second.get(key, (0, 0.0))
        rows.append({"op": key[0].removeprefix("aten::"), "shapes": key[1], "calls_a": calls_a, "ms_a": ms_a,
                     "calls_b": calls_b, "ms_b": ms_b, "extra_ms": ms_b - ms_a})
    return sorted(rows, key=lambda row: -row["extra_ms"])[:top]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm_attn", choices=list(SHAPES))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--methods", nargs=2, default=["softmax", "radar_span"], choices=METHODS,
                        help="the reference and the method whose extra time is broken down")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=5, help="forward + backward passes per round")
    parser.add_argument("--top", type=int, default=25, help="ops listed")
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    args.device, args.dtype, args.frozen_input = "cpu", "float32", False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    d_in, d_out = SHAPES[args.shape]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.tokens, d_in, generator=generator, requires_grad=True)
    grad = torch.randn(args.tokens, d_out, generator=generator)
    layers = {m: build(m, d_in, d_out, args.experts, args.r, "cpu", torch.float32) for m in args.methods}
    rounds: dict[str, list] = {m: [] for m in args.methods}
    walls: dict[str, list[float]] = {m: [] for m in args.methods}
    for layer in layers.values():  # warm-up
        layer(x).backward(grad)
    for _ in range(args.rounds):
        for method, layer in layers.items():
            ops, wall = profile_round(layer, x, grad, args.iterations)
            rounds[method].append(ops)
            walls[method].append(wall)
    a, b = args.methods
    best = {m: fastest(rounds[m]) for m in args.methods}
    totals = {m: {"ops": sum(calls for calls, _ in best[m].values()), "wall_ms": statistics.median(walls[m]),
                  "op_ms": sum(ms for _, ms in best[m].values())} for m in args.methods}
    rows = compare(best[a], best[b], args.top)
    lines = [
        f"{args.shape} ({d_in} -> {d_out}), n = {args.experts}, r = {args.r}, {args.tokens} tokens, "
        "forward + backward:",
        "",
        "| method | aten calls (composite ones too) | self ms in ops (fastest round each) | median wall ms |",
        "|---|---|---|---|",
        *(f"| {m} | {t['ops']} | {t['op_ms']:.2f} | {t['wall_ms']:.2f} |" for m, t in totals.items()),
        "",
        f"| op | input shapes | calls {a} | ms {a} | calls {b} | ms {b} | extra ms ({b} - {a}) |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['op']} | {r['shapes']} | {r['calls_a']} | {r['ms_a']:.3f} | {r['calls_b']} | {r['ms_b']:.3f} | "
          f"{r['extra_ms']:+.3f} |" for r in rows),
    ]
    settings = {**environment(args), "shape": args.shape, "n": args.experts, "r": args.r, "tokens": args.tokens,
                "methods": args.methods, "totals": totals}
    name = f"profile_{args.label}_{args.shape}_n{args.experts}_r{args.r}_t{args.tokens}_{a}_vs_{b}"
    write_results(name, "Layer profile", settings, rows, lines)


if __name__ == "__main__":
    main()
