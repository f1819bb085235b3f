"""Load on `radargate serve`, over loopback: generated tokens/s, time to first token and inter-token latency.

Each model gets its own `radargate serve` process on 127.0.0.1 (a port picked free); all are started first,
then every concurrency level is run on each model in turn, round after round, so that a shared machine's
changing load falls on all of them alike. A level sends a bounded number of streamed, greedy completions
(`--requests` per level, at most `--level-seconds` of sending) with `concurrency` of them in flight at once,
through the official openai client; times are taken on the client as the chunks arrive. Each answer runs to
`--max-tokens` (`ignore_eos`): models that stop early would otherwise spend a larger share of their time
prefilling, and their tokens/s would compare answer lengths, not speed.

    python benchmarks/serve_load.py --model radar=runs/quickstart/radar --model softmax=runs/quickstart/softmax \\
        --model base=configs/quickstart.yaml            # a run folder, or a config for its base model
        [--transformers-serve ~/.cache/radargate/smollm2-135m-instruct-q4_1-fp32]   # the anchor, base model only

`--transformers-serve PATH` adds transformers' own `transformers serve --continuous-batching` on the base model
folder PATH (it cannot load a mixture), sized like radargate's server and on as many threads; it does not return
token ids, so there a streamed chunk with text counts as one token, and refuses `ignore_eos`, so its answers
end at the end-of-sequence token.

Reported per model and concurrency (median over rounds): generated tokens/s (all requests' tokens over the
level's wall time), p50 and p95 time to first token and inter-token latency (pooled over the rounds).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
import torch

from radargate.hardware import cpu_description
from results_table import write_results

RADARGATE = str(Path(sys.executable).parent / "radargate")
PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how a rainbow forms.", "List five uses of copper.",
    "What is the capital of Australia, and why was it chosen?", "Describe the taste of a lemon to someone who "
    "has never had one.", "Give three tips for learning to play the piano.",
    "Tell me about the history of the bicycle.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
]


@dataclass
class Level:
    """What one concurrency level measured on one model in one round."""

    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)


class Server:
    """`radargate serve SOURCE --port 0` on loopback; its URL read from the line saying where it listens."""

    def __init__(self, source: str, max_batch: int, threads: int) -> None:
        served = ["--config", source] if source.endswith((".yaml", ".yml")) else [source]
        self.process = subprocess.Popen([RADARGATE, "serve", *served, "--host", "127.0.0.1", "--port", "0",
                                         "--max-batch", str(max_batch), "--max-queue", str(4 * max_batch),
                                         "--threads", str(threads)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:
            found = re.search(r"listening on (http://\S+) ", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError(f"radargate serve {source} exited with {self.process.wait()} before listening")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id
        self.extra_body = {"return_token_ids": True, "ignore_eos": True}  # every answer max_tokens long

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


class TransformersServe(Server):
    """`transformers serve --continuous-batching MODEL_DIR` on a free loopback port, sized like radargate's."""

    def __init__(self, model_dir: str, max_batch: int, threads: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        pages = 2048 // 64 * max_batch
        command = [str(Path(sys.executable).parent / "transformers"), "serve", "--continuous-batching",
                   "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--cb-block-size", "64",
                   "--cb-num-blocks", str(pages), "--cb-max-batch-tokens", "512", model_dir]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=600)
        self.extra_body = {}  # it refuses fields it does not know (422)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.model = self.client.models.list().data[0].id
                return
            except openai.APIConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve {model_dir} did not start") from None
                time.sleep(1)


def one_request(server: Server, prompt: str, max_tokens: int) -> tuple[int, float, list[float]]:
    """Tokens generated, time to the first token, and the gaps between tokens, of one streamed completion."""
    start = time.perf_counter()
    stream = server.client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens,
                                              temperature=0, stream=True, extra_body=server.extra_body)
    arrivals: list[tuple[float, int]] = []
    for chunk in stream:
        if not chunk.choices:
            continue
        ids = getattr(chunk.choices[0], "token_ids", None)
        count = len(ids) if ids is not None else int(bool(chunk.choices[0].text))
        if count:
            arrivals.append((time.perf_counter(), count))
    tokens = sum(count for _, count in arrivals)
    gaps = [(later - earlier) / count for (earlier, _), (later, count) in itertools.pairwise(arrivals)]
    return tokens, arrivals[0][0] - start if arrivals else float("nan"), gaps


def run_level(server: Server, concurrency: int, requests: int, max_tokens: int, level_seconds: float) -> Level:
    """``requests`` completions, ``concurrency`` at a time; none is started after ``level_seconds``."""
    level, deadline = Level(), time.perf_counter() + level_seconds
    start = time.perf_counter()

    def worker(index: int) -> tuple[int, float, list[float]] | None:
        if time.perf_counter() > deadline:
            return None
        return one_request(server, PROMPTS[index % len(PROMPTS)], max_tokens)

    with ThreadPoolExecutor(concurrency) as pool:
        for result in pool.map(worker, range(requests)):
            if result is not None:
                level.tokens += result[0]
                level.ttft.append(result[1])
                level.itl.extend(result[2])
    level.seconds = time.perf_counter() - start
    return level


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile, leaving out requests that streamed no token (no time to a first one)."""
    values = [value for value in values if value == value]
    return float(torch.tensor(values, dtype=torch.float64).quantile(q)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=SOURCE",
                        help="a run folder or a config (its base model), with a label for the table")
    parser.add_argument("--transformers-serve", metavar="MODEL_DIR",
                        help="also load `transformers serve` on this base model folder, as the anchor")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--level-seconds", type=float, default=300, help="start no request of a level after this")
    parser.add_argument("--threads", type=int, default=1,
                        help="each server's torch threads (default 1: steadier on a shared machine, as `make bench`)")
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.model)
    servers = {label: Server(source, max_batch=max(args.concurrency), threads=args.threads)
               for label, source in sources.items()}
    if args.transformers_serve:
        sources["transformers serve (base)"] = args.transformers_serve
        servers["transformers serve (base)"] = TransformersServe(args.transformers_serve, max(args.concurrency),
                                                                 args.threads)
    try:
        for server in servers.values():  # warm-up: first calls pay for allocations
            one_request(server, PROMPTS[0], 4)
        results: dict[tuple[str, int], list[Level]] = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for label, server in servers.items():
                    level = run_level(server, concurrency, max(args.requests, concurrency), args.max_tokens,
                                      args.level_seconds)
                    results.setdefault((label, concurrency), []).append(level)
                    print(f"round {round_} {label} c={concurrency}: {level.tokens / level.seconds:.1f} tokens/s",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report(results, sources, args)


def report(results: dict[tuple[str, int], list[Level]], sources: dict[str, str], args: argparse.Namespace) -> None:
    rows = []
    for (label, concurrency), levels in results.items():
        speed = statistics.median(level.tokens / level.seconds for level in levels)
        ttft = [t for level in levels for t in level.ttft]
        itl = [t for level in levels for t in level.itl]
        rows.append({"model": label, "concurrency": concurrency, "tokens_per_s": speed,
                     "requests": sum(len(level.ttft) for level in levels),
                     "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
                     "itl_p50_s": percentile(itl, 0.5), "itl_p95_s": percentile(itl, 0.95)})
    by_key = {(row["model"], row["concurrency"]): row for row in rows}
    lowest = min(args.concurrency)
    for row in rows:
        row["speedup_vs_lowest_concurrency"] = row["tokens_per_s"] / by_key[(row["model"], lowest)]["tokens_per_s"]
        if "softmax" in sources:
            row["vs_softmax"] = row["tokens_per_s"] / by_key[("softmax", row["concurrency"])]["tokens_per_s"]
    environment = {"device": f"CPU: {cpu_description()}", "torch": torch.__version__, "models": sources,
                   "max_tokens": args.max_tokens, "requests_per_level": args.requests, "rounds": args.rounds,
                   "max_batch": max(args.concurrency), "threads_per_server": args.threads}
    lines = ["| model | concurrency | requests | tokens/s | x c=1 | x softmax | TTFT p50 / p95 (s) | "
             "inter-token p50 / p95 (s) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
              f"{r['speedup_vs_lowest_concurrency']:.2f} | {r.get('vs_softmax', float('nan')):.2f} | "
              f"{r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f} | {r['itl_p50_s']:.3f} / {r['itl_p95_s']:.3f} |"
              for r in sorted(rows, key=lambda r: (r["model"], r["concurrency"]))]
    write_results(f"serve_load_{args.label}", "Serving load benchmark", environment, rows, lines)


if __name__ == "__main__":
    main()
