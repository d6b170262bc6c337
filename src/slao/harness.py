"""Runs one method over a task sequence and writes the run folder: config.yaml, results.json,
train_log.jsonl, predictions.json, per-task checkpoints and the final adapter.

A run resumes after its last finished task; a finished run is not run again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

import slao
from slao import checkpoint
from slao.config import RunConfig, dump_yaml, to_dict
from slao.encoding import TaskEncoder
from slao.errors import ConfigError
from slao.evaluate import evaluate_task, example_scores
from slao.lora import LoraAdapter
from slao.methods import get_method
from slao.metrics import all_metrics
from slao.train import train_task

# Settings that cannot change a run's numbers; everything else must match to resume.
NEUTRAL_KEYS = {"train.log_every"}


def make_accelerator() -> Accelerator:
    """The run's Accelerator. Accelerate joins several CPU processes (torchrun, mpirun) into one job only
    when asked for the CPU; otherwise each process would run alone, believe it is the main one, and
    they would overwrite each other's files."""
    # A CUDA build of torch names cuda as its accelerator even on a machine without a GPU, and torch 2.6
    # raises there: ask whether one is available first.
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=several and (device is None or device.type == "mps"))


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


def tasks_sha256(tasks) -> str:
    """One hash of every task's name, prompt frame, metric and examples: a resume must see the same data."""
    h = hashlib.sha256()
    for t in tasks:
        record = [t.name, t.prefix, t.suffix, t.options, t.metric,
                  [[x.text, list(x.answers)] for x in t.train], [[x.text, list(x.answers)] for x in t.test]]
        h.update(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def test_sha256(task) -> str:
    """Hash of a task's test examples: paired comparisons check that two runs scored the same examples."""
    record = [[x.text, list(x.answers)] for x in task.test]
    return hashlib.sha256(json.dumps(record, ensure_ascii=False).encode()).hexdigest()


def rows_to_evaluate(i: int, T: int, rows: str, zero_shot: bool, multi_task: bool) -> list[int]:
    """Tasks (0-based) scored after task i (1-based) under ``eval.rows``: ``all`` the tasks seen so far
    (the full matrix); ``diagonal-last`` only task i, and every task after the last (AA, BWT, LA);
    ``last`` every task after the last only (AA). With zero-shot scoring on, the next, not yet learned
    task too (FWT reads R[i-1][i]). What is not scored stays null, and a metric that needs it is n/a."""
    if multi_task or i == T:
        return list(range(T))
    tasks = {"all": list(range(i)), "diagonal-last": [i - 1], "last": []}[rows]
    return tasks + [i] if zero_shot else tasks


def run_meta(cfg: RunConfig, tasks, model_id: str) -> dict[str, str]:
    """What a checkpoint must have been written for to be resumed by this run."""
    return {"method": cfg.method.name, "base_model": model_id, "tasks": ",".join(t.name for t in tasks),
            "tasks_sha256": tasks_sha256(tasks)}


def resume_point(cfg: RunConfig, out: Path, meta: dict[str, str]) -> checkpoint.Loaded | None:
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
    return checkpoint.load(folder, meta)


class Run:
    """One method on one task sequence, writing into ``out``."""

    def __init__(self, cfg: RunConfig, out: str | Path, tasks, model, tokenizer, model_id: str,
                 accelerator: Accelerator | None = None, echo=print):
        self.cfg, self.out, self.tasks = cfg, Path(out), tasks
        self.acc = accelerator or make_accelerator()
        self.main = self.acc.is_main_process
        self.echo = echo if self.main else (lambda *a, **k: None)
        self.tok, self.model_id = tokenizer, model_id
        self.names = [t.name for t in tasks]
        self.adapter = LoraAdapter(model.to(self.acc.device), cfg.lora)
        self.method = get_method(cfg.method.name)(cfg.method, self.adapter.shapes(), cfg.lora.r)
        self.method.task_names = tuple(self.names)
        encoders = [TaskEncoder(tokenizer, t, cfg.data.max_prompt_tokens) for t in tasks]
        self.train_data = [[e.train_example(x) for x in t.train] for e, t in zip(encoders, tasks, strict=True)]
        self.test_prompts = [[e.prompt(x) for x in t.test] for e, t in zip(encoders, tasks, strict=True)]
        T = len(tasks)
        self.progress = {"accuracy": [[None] * T for _ in range(T)], "zero_shot": None,
                         "adapter_state_bytes": [None] * T, "train_seconds": [None] * T,
                         "eval_seconds": [None] * T, "train_steps": [None] * T, "train_tokens": [None] * T,
                         "data_order": [None] * T, "example_scores": [[None] * T for _ in range(T)]}
        self.meta = run_meta(cfg, tasks, model_id)
        self.test_hashes = [test_sha256(t) for t in tasks]
        versions()  # the code that runs is the code of now
        self.predictions: dict[str, list[str]] = {}

    # -- files --------------------------------------------------------------------------------------
    def _write_json(self, name: str, data) -> None:
        if self.main:
            checkpoint.write_atomic(self.out / name, json.dumps(data, indent=1) + "\n")

    def _log(self, record: dict) -> None:
        if self.main:
            with open(self.out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def results(self, finished: bool) -> dict:
        p = self.progress
        return {
            "method": self.cfg.method.name, "model": self.model_id, "benchmark": self.cfg.benchmark,
            "seed": self.cfg.seed, "order": self.cfg.order, "tasks": self.names,
            "excluded": list(self.cfg.exclude), "finished": finished,
            "num_processes": self.acc.num_processes,
            "task_info": {t.name: {"metric": t.metric, "train": len(t.train), "test": len(t.test), "test_sha256": h,
                                   **t.info} for t, h in zip(self.tasks, self.test_hashes, strict=True)},
            "accuracy": p["accuracy"], "zero_shot": p["zero_shot"],
            "metrics": all_metrics(p["accuracy"], p["zero_shot"]) if finished else None,
            "adapter_state_bytes": p["adapter_state_bytes"],
            "train_seconds": p["train_seconds"], "eval_seconds": p["eval_seconds"],
            "train_steps": p["train_steps"], "train_tokens": p["train_tokens"],
            "eval_rows": self.cfg.eval.rows,
            # per cell of the matrix, each test example's score in [0, 1] (null where not evaluated)
            "example_scores": p["example_scores"],
            "versions": versions(),
        }

    # -- resume ---------------------------------------------------------------------------------------
    def _restore(self) -> int:
        """Load the latest checkpoint if any (method state, LoRA, scores, RNG); return the tasks done."""
        loaded = resume_point(self.cfg, self.out, self.meta)
        if loaded is None:
            return 0
        progress = loaded.progress
        self.progress = {k: progress.get(k, v) for k, v in self.progress.items()}
        self.predictions = dict(progress["predictions"])
        self.method.load_state(loaded.state)
        self.adapter.set(self.method.unflatten("deploy", loaded.deploy))
        # Dropout draws from the global generator: continue its stream where the finished task left it.
        checkpoint.set_rng_state(checkpoint.unpack_rng(loaded.rng, self.acc.process_index))
        return progress["tasks_done"]

    def _trim_log(self, done: int) -> None:
        """Drop train_log lines of tasks after the checkpoint (an interrupted task is trained again)."""
        path = self.out / "train_log.jsonl"
        if not (self.main and path.exists()):
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["task_index"] <= done:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut by a kill
                continue
        checkpoint.write_atomic(path, "".join(kept))

    # -- the run -----------------------------------------------------------------------------------
    def evaluate_row(self, tasks: list[int], label: str) -> tuple[list[float | None], list, float]:
        """Scores of ``tasks`` (0-based) with the current (or the method's per-task) LoRA: the row of R,
        each test example's score per task (None where not evaluated), and the seconds it took."""
        row: list[float | None] = [None] * len(self.tasks)
        per_example: list[list[float] | None] = [None] * len(self.tasks)
        seconds, deployed = 0.0, None
        for j in tasks:
            weights = self.method.eval_weights(j)
            if weights is not None:
                deployed = deployed or self.adapter.get()
                self.adapter.set(weights)
            value, answers, s = evaluate_task(self.acc, self.adapter.model, self.tok, self.tasks[j],
                                              self.test_prompts[j], self.cfg.eval,
                                              desc=f"eval {label} on {self.names[j]}")
            if weights is not None:
                self.adapter.set(deployed)
            row[j], seconds = value, seconds + s
            per_example[j] = [round(v, 6) for v in example_scores(self.tasks[j], answers)]
            self.predictions[self.names[j]] = answers
        return row, per_example, seconds

    def zero_shot(self) -> None:
        with self.adapter.model.disable_adapter():
            scores = []
            for j, task in enumerate(self.tasks):
                value, _, _ = evaluate_task(self.acc, self.adapter.model, self.tok, task, self.test_prompts[j],
                                            self.cfg.eval, desc=f"zero-shot on {task.name}")
                scores.append(value)
        self.progress["zero_shot"] = scores
        self.echo("zero-shot: " + ", ".join(f"{n} {v:.1f}" for n, v in zip(self.names, scores, strict=True)))

    def _train(self, i: int, examples, name: str, slot: int) -> None:
        default = self.adapter.default_init(torch.Generator().manual_seed(self.cfg.seed * 7919 + i))
        self.adapter.set(self.method.init_lora(i, default))
        stats = train_task(self.acc, self.adapter, self.method, i, name, examples, self.cfg.train,
                           self.cfg.seed, self.tok.pad_token_id, self._log)
        k = slot
        self.progress["train_seconds"][k] = round(stats["seconds"], 3)
        self.progress["train_steps"][k] = stats["steps"]
        self.progress["train_tokens"][k] = stats["tokens"]
        self.progress["data_order"][k] = stats.get("data_order")
        self.echo(f"task {i}/{len(self.tasks)} {name}: {stats['steps']} steps in {stats['seconds']:.1f}s, "
                  f"final loss {stats['final_loss']:.4f}")

    def _finish_task(self, i: int, deploy) -> None:
        k = i - 1
        self.progress["adapter_state_bytes"][k] = self.method.state_bytes()
        self.adapter.set(deploy)
        tasks = rows_to_evaluate(i, len(self.tasks), self.cfg.eval.rows, self.cfg.eval.zero_shot,
                                 self.method.multi_task)
        row, per_example, seconds = self.evaluate_row(tasks, f"after {i}")
        self.progress["accuracy"][k] = row
        self.progress["example_scores"][k] = per_example
        self.progress["eval_seconds"][k] = round(seconds, 3)
        scored = [f"{n} {v:.1f}" for n, v in zip(self.names, row, strict=True) if v is not None]
        self.echo(f"after task {i}: " + (", ".join(scored) or f"nothing scored (eval.rows={self.cfg.eval.rows})"))
        mine = checkpoint.rng_state()
        every = gather_object([mine]) if self.acc.num_processes > 1 else [mine]  # all processes take part
        if self.main:
            body = {**self.progress, "predictions": self.predictions, "config": to_dict(self.cfg)}
            checkpoint.save(self.out, i, body, self.method.state(), self.method.flatten("deploy", deploy),
                            self.meta, rng=checkpoint.pack_rng(every))
            self._write_json("results.json", self.results(finished=False))
        self.acc.wait_for_everyone()

    def execute(self) -> dict:
        T = len(self.tasks)
        set_seed(self.cfg.seed)  # before _restore, which puts back the RNG state of the checkpoint
        start = self._restore()  # refuses a different configuration, method, model or data
        if start == T:
            done = self._stored_results()
            if done is not None:
                self.echo(f"{self.out} is already finished; nothing to do")
                return done
        if start:
            self.echo(f"resuming {self.out} after task {start} of {T} ({self.names[start - 1]})")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._trim_log(start)
        self.acc.wait_for_everyone()
        if self.main:
            checkpoint.write_atomic(self.out / "config.yaml", dump_yaml(self.cfg))
        if self.cfg.eval.zero_shot and self.progress["zero_shot"] is None:
            self.zero_shot()
        if self.method.multi_task:
            if start == 0:
                union = [x for data in self.train_data for x in data]
                self._train(1, union, "all tasks", T - 1)
                deploy = self.method.after_task(1, self.adapter.get())
                self._finish_task(T, deploy)
        else:
            for i in range(start + 1, T + 1):
                self._train(i, self.train_data[i - 1], self.names[i - 1], i - 1)
                deploy = self.method.after_task(i, self.adapter.get())
                self._finish_task(i, deploy)
        return self._finalize()

    def _stored_results(self) -> dict | None:
        """results.json of a finished run, or None (not finished, or unreadable: then finalize again)."""
        try:
            done = json.loads((self.out / "results.json").read_text())
        except (OSError, ValueError):
            return None
        return done if isinstance(done, dict) and done.get("finished") else None

    def _finalize(self) -> dict:
        deployed = self.adapter.get()
        if self.main:
            for sub, weights in self.method.exports(deployed).items():
                self.adapter.export(weights, self.out / "adapter" / sub if sub else self.out / "adapter",
                                    self.model_id)
            self.adapter.set(deployed)
            self._write_json("predictions.json", {
                t.name: [{"prediction": p, "answers": list(x.answers)}
                         for p, x in zip(self.predictions[t.name], t.test, strict=True)]
                for t in self.tasks if t.name in self.predictions})
        results = self.results(finished=True)
        self._write_json("results.json", results)
        self.acc.wait_for_everyone()
        return results


def run_experiment(cfg: RunConfig, out: str | Path, echo=print) -> dict:
    """Load the model and tasks that ``cfg`` names and run them into ``out``."""
    from slao.models import load_model, model_id
    from slao.tasks import load_benchmark

    accelerator = make_accelerator()
    start = time.perf_counter()
    tasks = load_benchmark(cfg)
    base = model_id(cfg.model, seed=cfg.seed)
    resume_point(cfg, Path(out), run_meta(cfg, tasks, base))  # refuse a bad resume before loading the model
    model, tokenizer = load_model(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                                  dtype=getattr(torch, cfg.model_dtype))
    run = Run(cfg, out, tasks, model, tokenizer, base, accelerator, echo)
    results = run.execute()
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results
