"""Runs one method over a task sequence into a run folder (config.yaml, results.json, train_log.jsonl,
predictions.json, per-task checkpoints and the final adapter; runfolder.py keeps those books).

A run resumes after its last finished task; a finished run is not run again.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

import slao
from slao import checkpoint
from slao.config import RunConfig, to_dict
from slao.encoding import TaskEncoder
from slao.errors import ConfigError
from slao.evaluate import AnswerCache, evaluate_task, example_scores, score
from slao.lora import LoraAdapter
from slao.methods import build_method
from slao.metrics import all_metrics
from slao.runfolder import (  # noqa: F401 - tasks_sha256 and test_sha256 re-exported
    RunFolder,
    exclusive,
    run_meta,
    tasks_sha256,
    test_sha256,
    write_failure,
)
from slao.taskdata import TaskData
from slao.train import train_task

# Settings that cannot change a run's numbers; everything else must match to resume. data_dir is where
# the data lives, not what it is: a resumed checkpoint is checked against the data's content (its hash),
# and a comparison's pairs against their test examples' hashes, so a moved or remounted folder is the same.
NEUTRAL_KEYS = {"train.log_every", "log.trackers", "log.project", "data_dir"}


def make_accelerator(trackers: list[str] | None = None, out: str | Path | None = None) -> Accelerator:
    """The run's Accelerator. Accelerate joins several CPU processes (torchrun, mpirun) into one job only
    when asked for the CPU; otherwise each process would run alone, believe it is the main one, and
    they would overwrite each other's files. ``trackers`` (Accelerate's) write under ``out``/logs."""
    # A CUDA build of torch names cuda as its accelerator even on a machine without a GPU, and torch 2.6
    # raises there: ask whether one is available first.
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if trackers:
        check_trackers(trackers)
        return Accelerator(cpu=several and (device is None or device.type == "mps"), log_with=list(trackers),
                           project_dir=str(Path(out or ".") / "logs"))
    return Accelerator(cpu=several and (device is None or device.type == "mps"))


def check_trackers(trackers: list[str]) -> None:
    """Each tracker's package is installed, or one line naming the extra that brings it."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    found = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in trackers:
        if not found[name]():
            raise ConfigError(f"log.trackers={name} needs the {name} package: pip install 'slao[tracking]' "
                              f"(or pip install {name})")


def _tracker_config(cfg: RunConfig) -> dict:
    """The run's settings as flat scalars (trackers take numbers, strings and booleans)."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in _flat(to_dict(cfg)).items()}


@functools.cache
def versions() -> dict[str, str | bool | None]:
    """Package versions and, for a source checkout, its git commit and whether tracked files differed from
    it. Read once per process, when the run starts: a checkout that changes during a long run must not
    be named as the code that ran."""
    import peft
    import transformers

    commit, dirty = None, None
    try:
        here = Path(slao.__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
        if commit:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."], cwd=here,
                                    capture_output=True, text=True, timeout=5)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"slao": slao.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "git_commit": commit, "git_dirty": dirty}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between two resolved configs. A setting the old config lacks (it was written
    by a version before the setting existed) counts as its default, which is what that version did."""
    a, b = _flat(old), _flat(new)
    defaults = _flat(to_dict(RunConfig()))
    for k in set(b) - set(a):
        if k in defaults:
            a[k] = defaults[k]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NEUTRAL_KEYS and a.get(k) != b.get(k)]


def rows_to_evaluate(i: int, T: int, rows: str, zero_shot: bool, multi_task: bool) -> list[int]:
    """Tasks (0-based) scored after task i (1-based) under ``eval.rows``: ``all`` the tasks seen so far
    (the full matrix); ``diagonal-last`` only task i, and every task after the last (AA, BWT, LA);
    ``last`` every task after the last only (AA). With zero-shot scoring on, the next, not yet learned
    task too (FWT reads R[i-1][i]). What is not scored stays null, and a metric that needs it is n/a."""
    if multi_task or i == T:
        return list(range(T))
    tasks = {"all": list(range(i)), "diagonal-last": [i - 1], "last": []}[rows]
    return tasks + [i] if zero_shot else tasks


def resume_point(cfg: RunConfig, out: Path, meta: dict[str, str],
                 shapes: dict[str, tuple[int, int]] | None = None) -> checkpoint.Loaded | None:
    """The verified latest checkpoint of the run folder ``out``, or None when it has none.

    Refuses (ConfigError, listing every difference) a checkpoint made with settings that change results,
    and (CheckpointError) one that is truncated or was written for another method, model or data.
    """
    folder = checkpoint.latest(out)
    if folder is None:
        return None
    progress = checkpoint.read_progress(folder)
    diffs = config_differences(progress.get("config") or {}, to_dict(cfg))
    if diffs:
        raise ConfigError(
            f"{out} holds a run with another configuration; refusing to resume it. "
            "Differences (old -> new):\n  " + "\n  ".join(diffs)
            + f"\nUse another --output folder, run with the original settings (slao run --resume {out}), "
            f"or delete {out} to start over."
        )
    return checkpoint.load(folder, meta, shapes)  # with ``shapes``, every LoRA tensor must fit the model


class Run:
    """One method on one task sequence, writing into ``out``; the task loop is ``execute``."""

    def __init__(self, cfg: RunConfig, out: str | Path, tasks, model, tokenizer, model_id: str,
                 accelerator: Accelerator | None = None, echo=print, zero_shot_cache: str | Path | None = None):
        self.cfg, self.out, self.tasks = cfg, Path(out), tasks
        self.zero_shot_cache = zero_shot_cache
        self.acc = accelerator or make_accelerator()
        self.echo = echo if self.acc.is_main_process else (lambda *a, **k: None)
        self.tok, self.model_id = tokenizer, model_id
        self.names = [t.name for t in tasks]
        self.adapter = LoraAdapter(model.to(self.acc.device), cfg.lora)
        self.method = build_method(cfg.method, self.adapter.shapes(), cfg.lora.r, len(tasks))
        self.method.task_names = tuple(self.names)
        encoders = [TaskEncoder(tokenizer, t, cfg.data.max_prompt_tokens) for t in tasks]
        self.train_data = [[e.train_example(x) for x in t.train] for e, t in zip(encoders, tasks, strict=True)]
        self.test_prompts = [[e.prompt(x) for x in t.test] for e, t in zip(encoders, tasks, strict=True)]
        flags = {"data_free": self.method.data_free, "grows": self.method.grows}
        # versions(): the code that runs is the code of now
        self.books = RunFolder(out, cfg, tasks, model_id, self.acc.is_main_process, self.acc.num_processes,
                               flags, versions())
        self.tracking = bool(cfg.log.trackers) and bool(self.acc.log_with)

    # -- the run -----------------------------------------------------------------------------------
    def execute(self) -> dict:
        T = len(self.tasks)
        set_seed(self.cfg.seed)  # before _restore, which puts back the RNG state of the checkpoint
        start = self._restore()  # refuses a different configuration, method, model or data
        if start == T and (done := self.books.stored_results()) is not None:
            self.echo(f"{self.out} is already finished; nothing to do")
            return done
        if start:
            self.echo(f"resuming {self.out} after task {start} of {T} ({self.names[start - 1]})")
        self.books.open(start)
        self.acc.wait_for_everyone()
        if self.tracking:
            self.acc.init_trackers(self.cfg.log.project, config=_tracker_config(self.cfg))
        if self.cfg.eval.zero_shot and self.books.progress["zero_shot"] is None:
            self.zero_shot()
        if self.method.multi_task:  # one training on the union of the tasks, scored as the last row
            steps = [(1, [x for data in self.train_data for x in data], "all tasks", T)] if start == 0 else []
        else:
            steps = [(i, self.train_data[i - 1], self.names[i - 1], i) for i in range(start + 1, T + 1)]
        for i, examples, name, row in steps:
            clock = time.perf_counter()  # the method's own work: its statistics, its init and its merge
            data = TaskData(self.adapter, self.acc.device, self.train_data, i, self.tok.pad_token_id,
                            self.cfg.method.stats_examples, self.cfg.method.stats_batch_size)
            self.adapter.set(self.method.init_lora(i, self._default_init(i), data))
            method_seconds = time.perf_counter() - clock
            self._train(i, examples + self.method.extra_examples(i), name, row - 1)
            clock = time.perf_counter()
            deploy = self.method.after_task(i, self.adapter.get(), data)
            self.books.record_method_time(row - 1, method_seconds + time.perf_counter() - clock)
            self._finish_task(row, deploy)
        return self._finalize()

    def _default_init(self, i: int):
        return self.adapter.default_init(torch.Generator().manual_seed(self.cfg.seed * 7919 + i))

    def _train(self, i: int, examples, name: str, slot: int) -> None:
        stats = train_task(self.acc, self.adapter, self.method, i, name, examples, self.cfg.train,
                           self.cfg.seed, self.tok.pad_token_id, self._log)
        self.books.record_training(slot, stats)
        self.echo(f"task {i}/{len(self.tasks)} {name}: {stats['steps']} steps in {stats['seconds']:.1f}s, "
                  f"final loss {stats['final_loss']:.4f}")

    def _steps_done(self) -> int:
        """Optimiser steps of the tasks finished so far: trackers get one step axis over the whole run."""
        return sum(s for s in self.books.progress["train_steps"] if s)

    def _log(self, record: dict) -> None:
        self.books.log(record)
        if self.tracking:
            self.acc.log({"train/loss": record["loss"], "train/lr": record["lr"]},
                         step=self._steps_done() + record["step"])

    def _track_row(self, i: int, row) -> None:
        """After task i: each scored task, and AA, BWT and F over the tasks learned so far."""
        values = {f"eval/{n}": v for n, v in zip(self.names, row, strict=True) if v is not None}
        R = [r[:i] for r in self.books.progress["accuracy"][:i]]
        zero = self.books.progress["zero_shot"]
        running = all_metrics(R, zero[:i] if zero else None)
        values.update({f"metrics/{k}": v for k, v in running.items() if v is not None and k != "fwt"})
        self.acc.log(values, step=self._steps_done())

    def _finish_task(self, i: int, deploy) -> None:
        """Score row i with the deployed LoRA, then checkpoint (every process takes part in both)."""
        self.adapter.set(deploy)
        tasks = rows_to_evaluate(i, len(self.tasks), self.cfg.eval.rows, self.cfg.eval.zero_shot,
                                 self.method.multi_task)
        row, per_example, seconds = self.evaluate_row(tasks, f"after {i}")
        self.books.record_row(i - 1, row, per_example, seconds, self.method.state_bytes(), self.method.stats())
        if self.tracking:
            self._track_row(i, row)
        scored = [f"{n} {v:.1f}" for n, v in zip(self.names, row, strict=True) if v is not None]
        self.echo(f"after task {i}: " + (", ".join(scored) or f"nothing scored (eval.rows={self.cfg.eval.rows})"))
        mine = checkpoint.rng_state()
        every = gather_object([mine]) if self.acc.num_processes > 1 else [mine]
        self.books.save(i, self.method.state(), self.method.flatten("deploy", deploy), checkpoint.pack_rng(every))
        self.acc.wait_for_everyone()

    def evaluate_row(self, tasks: list[int], label: str) -> tuple[list[float | None], list, float]:
        """Scores of ``tasks`` (0-based) with the current (or the method's per-task) LoRA: the row of R,
        each test example's score per task (None where not evaluated), and the seconds it took."""
        row: list[float | None] = [None] * len(self.tasks)
        per_example: list[list[float] | None] = [None] * len(self.tasks)
        seconds = 0.0
        for j in tasks:
            with self.adapter.using(self.method.eval_weights(j)):
                value, answers, s = evaluate_task(self.acc, self.adapter.model, self.tok, self.tasks[j],
                                                  self.test_prompts[j], self.cfg.eval,
                                                  desc=f"eval {label} on {self.names[j]}")
            row[j], seconds = value, seconds + s
            per_example[j] = [round(v, 6) for v in example_scores(self.tasks[j], answers)]
            self.books.predictions[self.names[j]] = answers
        return row, per_example, seconds

    def _answer_cache(self) -> AnswerCache | None:
        """The shared store of the base model's answers, when given and the code that runs is committed."""
        v = self.books.versions
        if self.zero_shot_cache is None or v.get("git_dirty"):
            return None
        e = self.cfg.eval
        return AnswerCache(self.zero_shot_cache, {
            "model": self.model_id, "model_dtype": self.cfg.model_dtype,
            "trust_remote_code": self.cfg.trust_remote_code,
            "eval": {"batch_size": e.batch_size, "max_new_tokens": e.max_new_tokens, "bf16": e.bf16},
            "processes": self.acc.num_processes, "device": self.acc.device.type, "versions": v,
            "pad": self.tok.pad_token_id, "eos": self.tok.eos_token_id})

    def zero_shot(self) -> None:
        """The base model's score on every task (FWT's reference), read from the answer cache where the
        same base model already answered the same prompts."""
        cache, reused = self._answer_cache(), []
        with self.adapter.model.disable_adapter():
            scores = []
            for j, task in enumerate(self.tasks):
                answers = cache.get(self.test_prompts[j]) if cache and self.acc.is_main_process else None
                if self.acc.num_processes > 1:  # every process takes the main one's answer, or generates
                    answers = broadcast_object_list([answers])[0]
                if answers is None:
                    _, answers, _ = evaluate_task(self.acc, self.adapter.model, self.tok, task, self.test_prompts[j],
                                                  self.cfg.eval, desc=f"zero-shot on {task.name}")
                    if cache and self.acc.is_main_process:
                        cache.put(self.test_prompts[j], answers, task.name)
                else:
                    reused.append(task.name)
                scores.append(score(task, answers))
        self.books.progress["zero_shot"] = scores
        self.books.progress["zero_shot_reused"] = reused
        if reused:
            self.echo(f"zero-shot answers of {len(reused)} of {len(self.tasks)} tasks read from {cache.folder}")
        self.echo("zero-shot: " + ", ".join(f"{n} {v:.1f}" for n, v in zip(self.names, scores, strict=True)))

    # -- resume and the end -------------------------------------------------------------------------
    def _restore(self) -> int:
        """Load the latest checkpoint if any (method state, LoRA, scores, RNG); return the tasks done."""
        loaded = resume_point(self.cfg, self.out, self.books.meta, self.adapter.shapes())
        if loaded is None:
            return 0
        done = self.books.restore(loaded)
        self.method.load_state(loaded.state)
        self.adapter.set(self.method.unflatten("deploy", loaded.deploy))
        # Dropout draws from the global generator: continue its stream where the finished task left it.
        checkpoint.set_rng_state(checkpoint.unpack_rng(loaded.rng, self.acc.process_index))
        return done

    def _finalize(self) -> dict:
        if self.acc.is_main_process:
            deployed = self.adapter.get()
            for sub, weights in self.method.exports(deployed).items():
                self.adapter.export(weights, self.out / "adapter" / sub if sub else self.out / "adapter",
                                    self.model_id)
        results = self.books.finish()
        if self.tracking:
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return results


def run_experiment(cfg: RunConfig, out: str | Path, echo=print, zero_shot_cache: str | Path | None = None) -> dict:
    """Load the model and tasks that ``cfg`` names and run them into ``out``; ``zero_shot_cache``, a folder
    the runs of one comparison share, keeps the base model's answers for the next run (AnswerCache)."""
    from slao.models import load_model, model_id
    from slao.tasks import load_benchmark

    accelerator = make_accelerator(cfg.log.trackers, out)
    start = time.perf_counter()
    tasks = load_benchmark(cfg)
    base = model_id(cfg.model, seed=cfg.seed)
    with exclusive(out):  # one writer per run folder, for the life of the run
        resume_point(cfg, Path(out), run_meta(cfg, tasks, base))  # refuse a bad resume before loading the model
        model, tokenizer = load_model(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                                      dtype=getattr(torch, cfg.model_dtype))
        run = Run(cfg, out, tasks, model, tokenizer, base, accelerator, echo, zero_shot_cache)
        try:
            results = run.execute()
        except OSError as err:  # a full disk or a lost mount while writing: the last checkpoint is whole
            raise write_failure(err, Path(out), len(tasks)) from None
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results
