"""The ``slao`` command: run, demo, compare, report, eval, export, list, config.

Errors a user can fix print one clear line, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import warnings
from pathlib import Path

from slao.errors import SlaoError

DEMO_SETTINGS = {
    "model": "smollm2-135m",
    "benchmark": "packaged",
    "data": {"train_per_task": 240, "test_per_task": 64, "max_prompt_tokens": 96},
    "train": {"lr": 3e-4, "batch_size": 8, "bf16": True},
    "eval": {"zero_shot": True, "max_new_tokens": 12},
}


def _run_flags(p: argparse.ArgumentParser, single: bool = True) -> None:
    if single:  # slao compare takes --methods and --seeds instead
        p.add_argument("--method", help="method name (slao list shows them)")
    p.add_argument("--model", help="tiny-random | smollm2-135m | a local folder | a hub id")
    p.add_argument("--benchmark", help="benchmark name (slao list shows them)")
    p.add_argument("--order", type=int, help="task order of the benchmark")
    p.add_argument("--tasks", help="comma-separated task names, in training order")
    p.add_argument("--exclude", help="comma-separated task names to leave out of the order (e.g. yahoo)")
    p.add_argument("--data-dir", help="folder holding the benchmark's files")
    if single:
        p.add_argument("--seed", type=int, help="seed (same as --set seed=N)")
    p.add_argument("--config", help="YAML file of settings (slao config lists them)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--trust-remote-code", action="store_true", help="let a hub model run its own code")


def _flag_layer(args) -> dict:
    layer: dict = {}
    for key in ("model", "benchmark", "order", "data_dir", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            layer[key] = value
    if getattr(args, "method", None):
        layer["method"] = {"name": args.method}
    if getattr(args, "tasks", None):
        layer["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if getattr(args, "exclude", None):
        layer["exclude"] = [t.strip() for t in args.exclude.split(",") if t.strip()]
    if getattr(args, "trust_remote_code", False):
        layer["trust_remote_code"] = True
    return layer


def build_from_args(args, base: dict | None = None):
    from slao.config import build_config, parse_sets, read_yaml
    from slao.errors import ConfigError

    layers = [base or {}]
    if args.config:
        layers.append(read_yaml(args.config))
    layers += [_flag_layer(args), parse_sets(args.set)]
    try:
        return build_config(*layers)
    except ConfigError as err:
        if args.config:  # name the file when its own settings are the bad ones
            try:
                build_config(*layers[:2])
            except ConfigError:
                raise ConfigError(f"config file {args.config}: {err}") from None
        raise


def _is_main_process() -> bool:
    """Under torchrun every process runs the CLI; only the first prints the summary."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_table(results: dict) -> None:
    from slao.tables import results_table

    if _is_main_process():
        print(results_table(results))


def cmd_run(args) -> int:
    out = Path(args.resume or args.output or "")
    if not args.resume and not args.output:
        raise SlaoError("slao run needs --output RUN (or --resume RUN)")
    base = None
    if args.resume:
        if args.output and Path(args.output) != out:
            raise SlaoError(f"give the run folder once: --resume {args.resume} or --output {args.output}, not both")
        cfg_file = out / "config.yaml"
        if not cfg_file.exists():
            raise SlaoError(f"{out} holds no run to resume (no config.yaml)")
        from slao.config import read_yaml

        base = read_yaml(cfg_file)
    cfg = build_from_args(args, base)  # settings checked before the model, the data or PEFT load
    from slao.harness import run_experiment

    results = run_experiment(cfg, out, zero_shot_cache=args.zero_shot_cache)
    _print_table(results)
    if _is_main_process():
        print(f"run folder: {out}")
    return 0


def cmd_demo(args) -> int:
    out = Path(args.output)
    cfg = build_from_args(args, DEMO_SETTINGS)
    from slao.harness import run_experiment

    print(f"slao demo: {cfg.method.name} on {cfg.model}, benchmark {cfg.benchmark}, "
          f"{cfg.data.train_per_task} training examples a task; output in {out}", flush=True)
    results = run_experiment(cfg, out)
    _print_table(results)
    if _is_main_process():
        print(f"wall time {results.get('wall_seconds', 0):.0f} s; run folder: {out}")
    return 0


def cmd_eval(args) -> int:
    from slao.deploy import evaluate_adapter

    cfg = build_from_args(args)
    result = evaluate_adapter(cfg, args.adapter, args.output)
    if _is_main_process():
        print(f"average over {len(result['scores'])} tasks: {result['average']:.1f}")
    return 0


def cmd_export(args) -> int:
    from slao.deploy import merge_into_base

    merge_into_base(args.run, args.merge_into_base, force=args.force, dtype=args.dtype)
    return 0


def cmd_compare(args) -> int:
    from slao.compare import parse_methods, parse_orders, parse_seeds, run_comparison
    from slao.launch import CellsFailed, failure_message
    from slao.tables import comparison_table

    methods = parse_methods(args.methods)  # every name checked before anything runs
    cfg = build_from_args(args)
    seeds = parse_seeds(args.seeds, default=cfg.seed)
    orders = parse_orders(args.orders, cfg.benchmark)
    launcher = make_launcher(args)
    comp = run_comparison(cfg, methods, seeds, Path(args.output), orders=orders, collect=args.collect,
                          launcher=launcher)
    print(comparison_table(comp))
    print(f"comparison folder: {args.output} (comparison.json, comparison.md); figures: slao report {args.output}")
    if comp.get("failed"):
        raise CellsFailed(failure_message(comp["failed"], comp["runs_total"]))
    return 0


SLURM_FLAGS = ("slurm_time", "slurm_partition", "slurm_gpus", "slurm_cpus", "slurm_mem_gb", "slurm_setup",
               "slurm_param", "slurm_array_parallelism")


def make_launcher(args):
    """The launcher that --launcher names (None: in this process, one run after another), its flags checked."""
    from slao.launch import LocalLauncher, SlurmLauncher, visible_gpus

    given = [f"--{name.replace('_', '-')}" for name in SLURM_FLAGS if getattr(args, name) not in (None, [])]
    if args.launcher != "slurm" and given:
        raise SlaoError(f"{given[0]} is a setting of --launcher slurm")
    if args.launcher != "local" and args.jobs is not None:
        raise SlaoError("--jobs is a setting of --launcher local")
    if args.launcher == "local":
        return LocalLauncher(jobs=args.jobs if args.jobs is not None else max(1, len(visible_gpus())))
    if args.launcher == "slurm":
        extra = {}
        for pair in args.slurm_param:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise SlaoError(f"--slurm-param expects KEY=VALUE (an sbatch option), got {pair!r}")
            extra[key.strip()] = value
        return SlurmLauncher(time_min=args.slurm_time, partition=args.slurm_partition, gpus=args.slurm_gpus or 0,
                             cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb, setup=list(args.slurm_setup),
                             extra=extra, array_parallelism=args.slurm_array_parallelism)
    return None


def cmd_report(args) -> int:
    from slao.report import report_path

    report_path(args.path)
    return 0


def cmd_claims(args) -> int:
    from slao.claims import write_ledger

    _, text = write_ledger(args.path, args.replicates, args.mtl_margin)
    print(text, end="")
    print(f"(also written to {Path(args.path) / 'claims.md'} and claims.json)", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from slao.data import PACKAGED_TASKS
    from slao.methods.base import METHODS, get_method
    from slao.tasks import BENCHMARK_ORDERS

    get_method("slao")
    print("methods:")
    for name, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"  {name:15s} {doc[0] if doc else ''}")
    print("benchmarks:")
    for name, spec in BENCHMARK_ORDERS.items():
        print(f"  {name:15s} {spec['about']}")
        if spec.get("data"):
            print(f"    data: {spec['data']}")
        for order, tasks in spec["orders"].items():
            print(f"    order {order}: {', '.join(tasks)}")
    print("packaged tasks:\n  " + ", ".join(PACKAGED_TASKS))
    print("models:\n  tiny-random, smollm2-135m, or any local folder / hub id of a causal LM")
    return 0


def cmd_config(args) -> int:
    import typing

    from slao.config import RunConfig

    def walk(obj, prefix=""):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(value, f"{prefix}{f.name}.")
            else:
                print(f"  {prefix + f.name:26s} {value!s:16s} {f.metadata.get('help', '')}")

    print("settings (--set KEY=VALUE or a --config YAML file):")
    walk(RunConfig())
    return 0


def make_parser() -> argparse.ArgumentParser:
    from slao import __version__
    from slao.launch import LAUNCHERS

    parser = argparse.ArgumentParser(prog="slao", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slao {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one method over a task sequence")
    _run_flags(p)
    p.add_argument("--output", help="run folder (created; an unfinished run there is resumed)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN after its last finished task")
    p.add_argument("--zero-shot-cache", metavar="DIR",
                   help="reuse the base model's zero-shot answers kept in DIR by runs of the same base model, "
                        "prompts, generation settings and code, and keep this run's there (slao compare gives "
                        "its cells DIR/zero-shot)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="SLAO on the shipped model and the packaged tasks, small budgets")
    _run_flags(p)
    p.add_argument("--output", default="runs/demo", help="run folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("compare", help="run several methods over seeds under one config, side by side")
    _run_flags(p, single=False)
    p.add_argument("--methods", required=True, help="comma-separated method names (slao list shows them)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the config's seed)")
    p.add_argument("--orders", help="comma-separated task orders of the benchmark, e.g. 4,5,6: the grid is "
                                    "method x order x seed (default: the one order of --order)")
    p.add_argument("--output", required=True,
                   help="comparison folder: DIR/<method>/[order-<o>/]seed-<n>/ and comparison.*")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: gather the grid's finished runs (made by separate jobs into the same "
                        "folder) into comparison.json/.md and list the missing ones")
    g = p.add_argument_group("running the grid's cells elsewhere (each a resumable slao run on its folder; "
                             "finished cells are skipped, a failed one is reported with its log)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="sequential",
                   help="sequential: in this process, one run after another (default); local: --jobs runs at "
                        "once as subprocesses; slurm: one SLURM job per cell through submitit")
    g.add_argument("--jobs", type=int, help="local: runs at once, each with cores/N threads, or its own GPU "
                                            "(round-robin over CUDA_VISIBLE_DEVICES) (default: the GPUs, or 1)")
    g.add_argument("--slurm-time", type=int, metavar="MINUTES",
                   help="slurm: each job's time limit (required); a job that runs out is requeued and resumes")
    g.add_argument("--slurm-partition", help="slurm: the partition to submit to")
    g.add_argument("--slurm-gpus", type=int, metavar="N",
                   help="slurm: GPUs per job (one process each: N > 1 makes each cell one DDP run)")
    g.add_argument("--slurm-cpus", type=int, metavar="N", help="slurm: CPUs per process")
    g.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="slurm: memory per job")
    g.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="slurm: a shell line run before the job, e.g. 'source .venv/bin/activate' (repeatable)")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: any other sbatch option, e.g. account=myproj or qos=high (repeatable)")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="N", help="slurm: most jobs running at once")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="print the tables of a run or comparison folder and draw its figures")
    p.add_argument("path", help="a run folder (slao run) or a comparison folder (slao compare)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("claims", help="test the SLAO paper's five claims on a comparison folder's runs (paired)")
    p.add_argument("path", help="a slao compare output folder holding slao, its baselines and its variants")
    p.add_argument("--replicates", type=int, default=2000, help="paired bootstrap replicates (default 2000)")
    p.add_argument("--mtl-margin", type=float, metavar="POINTS",
                   help="how far below multi-task training still counts as close (default: the paper's gap "
                        "on the benchmark)")
    p.set_defaults(func=cmd_claims)
    p = sub.add_parser("eval", help="score an exported adapter (RUN/adapter) on a benchmark's tasks")
    _run_flags(p)
    p.add_argument("--adapter", required=True, help="a PEFT LoRA folder (adapter_config.json + safetensors)")
    p.add_argument("--output", help="write the scores to this JSON file")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="fold a run's final LoRA into its base model: a plain transformers model")
    p.add_argument("run", metavar="RUN", help="a finished run folder (its adapter/ and config.yaml are read)")
    p.add_argument("--merge-into-base", metavar="OUT", required=True,
                   help="write the base model with the LoRA folded into its weights here (safetensors, config, "
                        "tokenizer): AutoModelForCausalLM.from_pretrained(OUT) loads it without PEFT")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the fold and of the saved weights (default: the run's model_dtype)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("list", help="list methods, benchmarks and tasks")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("config", help="list every setting with its default and meaning")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices raised inside PEFT/transformers, not actionable by a user of slao.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = make_parser().parse_args(argv)
    previous = _on_sigterm()
    try:
        return args.func(args)
    except SlaoError as err:
        print(f"slao: error: {err}", file=sys.stderr)
        return err.exit_status
    except Terminated:
        print(f"\nslao: terminated (SIGTERM). {_interrupt_hint(args)}", file=sys.stderr, flush=True)
        return 143
    except KeyboardInterrupt:
        print(f"\nslao: interrupted. {_interrupt_hint(args)}", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send before SIGKILL), handled like Ctrl-C: nothing new is finished, the last
    checkpoint stays, the resume command is printed."""


def _on_sigterm():
    """Turn SIGTERM into ``Terminated`` in the main thread; return the handler it replaced (or None)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def raise_terminated(signum, frame):
        raise Terminated

    return signal.signal(signal.SIGTERM, raise_terminated)


def _interrupt_hint(args) -> str:
    """Where the finished work is and the command that continues it (checkpoints are never half-written)."""
    if args.command == "compare" and getattr(args, "launcher", None) == "slurm" and not args.collect:
        return ("Jobs already submitted keep running (logs in OUT/launch/submitit); once they end, the same "
                "command with --collect gathers them. Running it again without --collect would submit the "
                "unfinished cells a second time.")
    if args.command == "compare":
        return "Finished runs and tasks are kept; run the same slao compare command again to continue."
    target = getattr(args, "resume", None) or getattr(args, "output", None)
    if args.command not in ("run", "demo") or not target:
        return "Nothing was left half-written."
    from slao.checkpoint import latest

    if not (Path(target) / "config.yaml").exists():
        return "The run had not started; run the same command again."
    last = latest(Path(target))
    kept = f"The checkpoint {last} is kept" if last else "No task had finished yet"
    return f"{kept}; continue with: slao run --resume {target}"


if __name__ == "__main__":
    sys.exit(main())
