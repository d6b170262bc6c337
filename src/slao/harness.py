"""Runs one method over a task sequence and writes the run folder: config.yaml, results.json,
train_log.jsonl, predictions.json, per-task checkpoints and the final adapter.

A run resumes after its last finished task; a finished run is not run again.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

import slao
from slao import checkpoint
from slao.config import RunConfig, dump_yaml, to_dict
from slao.encoding import TaskEncoder
from slao.errors import ConfigError
from slao.evaluate import evaluate_task
from slao.lora import LoraAdapter
from slao.methods import get_method
from slao.metrics import all_metrics
from slao.train import train_task

# Settings that cannot change a run's numbers; everything else must match to resume.
NEUTRAL_KEYS = {"train.log_every"}


def versions() -> dict[str, str | None]:
    import peft
    import transformers

    commit = None
    try:
        here = Path(slao.__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"slao": slao.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "git_commit": commit}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NEUTRAL_KEYS and a.get(k) != b.get(k)]


class Run:
    """One method on one task sequence, writing into ``out``."""

    def __init__(self, cfg: RunConfig, out: str | Path, tasks, model, tokenizer, model_id: str,
                 accelerator: Accelerator | None = None, echo=print):
        self.cfg, self.out, self.tasks = cfg, Path(out), tasks
        self.acc = accelerator or Accelerator()
        self.main = self.acc.is_main_process
        self.echo = echo if self.main else (lambda *a, **k: None)
        self.tok, self.model_id = tokenizer, model_id
        self.names = [t.name for t in tasks]
        self.adapter = LoraAdapter(model.to(self.acc.device), cfg.lora)
        self.method = get_method(cfg.method.name)(cfg.method, self.adapter.shapes(), cfg.lora.r)
        encoders = [TaskEncoder(tokenizer, t, cfg.data.max_prompt_tokens) for t in tasks]
        self.train_data = [[e.train_example(x) for x in t.train] for e, t in zip(encoders, tasks, strict=True)]
        self.test_prompts = [[e.prompt(x) for x in t.test] for e, t in zip(encoders, tasks, strict=True)]
        T = len(tasks)
        self.progress = {"accuracy": [[None] * T for _ in range(T)], "zero_shot": None,
                         "adapter_state_bytes": [None] * T, "train_seconds": [None] * T,
                         "eval_seconds": [None] * T, "train_steps": [None] * T, "train_tokens": [None] * T}
        self.meta = {"method": cfg.method.name, "base_model": model_id, "tasks": ",".join(self.names)}
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
            "seed": self.cfg.seed, "tasks": self.names, "finished": finished,
            "num_processes": self.acc.num_processes,
            "task_info": {t.name: {"metric": t.metric, "train": len(t.train), "test": len(t.test), **t.info}
                          for t in self.tasks},
            "accuracy": p["accuracy"], "zero_shot": p["zero_shot"],
            "metrics": all_metrics(p["accuracy"], p["zero_shot"]) if finished else None,
            "adapter_state_bytes": p["adapter_state_bytes"],
            "train_seconds": p["train_seconds"], "eval_seconds": p["eval_seconds"],
            "train_steps": p["train_steps"], "train_tokens": p["train_tokens"],
            "versions": versions(),
        }

    # -- resume ---------------------------------------------------------------------------------------
    def _restore(self) -> int:
        """Load the latest checkpoint if any; return the number of finished tasks."""
        folder = checkpoint.latest(self.out)
        if folder is None:
            return 0
        config_file = self.out / "config.yaml"
        if config_file.exists():
            import yaml

            old = yaml.safe_load(config_file.read_text()) or {}
            diffs = config_differences(old, to_dict(self.cfg))
            if diffs:
                raise ConfigError(
                    f"{self.out} holds a run with another configuration; refusing to resume it. "
                    "Differences (old -> new):\n  " + "\n  ".join(diffs)
                    + "\nUse another --output folder, or run with the original settings."
                )
        progress, state, deploy = checkpoint.load(folder, self.meta)
        self.progress = {k: progress[k] for k in self.progress}
        self.method.load_state(state)
        self.adapter.set(self.method.unflatten("deploy", deploy))
        done = progress["tasks_done"]
        self.echo(f"resuming {self.out} after task {done} of {len(self.tasks)} ({self.names[done - 1]})")
        return done

    # -- the run -----------------------------------------------------------------------------------
    def evaluate_row(self, upto: int, label: str) -> tuple[list[float | None], float]:
        """Scores of tasks 0..upto-1 with the current (or the method's per-task) LoRA."""
        row: list[float | None] = [None] * len(self.tasks)
        seconds, deployed = 0.0, None
        for j in range(upto):
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
            self.predictions[self.names[j]] = answers
        return row, seconds

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
        self.echo(f"task {i}/{len(self.tasks)} {name}: {stats['steps']} steps in {stats['seconds']:.1f}s, "
                  f"final loss {stats['final_loss']:.4f}")

    def _finish_task(self, i: int, deploy) -> None:
        k = i - 1
        self.progress["adapter_state_bytes"][k] = self.method.state_bytes()
        self.adapter.set(deploy)
        upto = len(self.tasks) if self.method.multi_task else i
        row, seconds = self.evaluate_row(upto, f"after {i}")
        self.progress["accuracy"][k] = row
        self.progress["eval_seconds"][k] = round(seconds, 3)
        self.echo(f"after task {i}: " + ", ".join(
            f"{n} {v:.1f}" for n, v in zip(self.names, row, strict=True) if v is not None))
        if self.main:
            checkpoint.save(self.out, i, self.progress, self.method.state(),
                            self.method.flatten("deploy", deploy), self.meta)
            self._write_json("results.json", self.results(finished=False))
        self.acc.wait_for_everyone()

    def execute(self) -> dict:
        results_file = self.out / "results.json"
        if results_file.exists() and checkpoint.latest(self.out) is not None:
            done = json.loads(results_file.read_text())
            if done.get("finished"):
                self._restore()  # refuses a different configuration
                self.echo(f"{self.out} is already finished; nothing to do")
                return done
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        start = self._restore()
        if self.main:
            checkpoint.write_atomic(self.out / "config.yaml", dump_yaml(self.cfg))
        set_seed(self.cfg.seed)
        if self.cfg.eval.zero_shot and self.progress["zero_shot"] is None:
            self.zero_shot()
        T = len(self.tasks)
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
    from slao.data import load_tasks
    from slao.models import load_model, model_id
    from slao.tasks import benchmark_source, resolve_task_names

    accelerator = Accelerator()
    start = time.perf_counter()
    names = resolve_task_names(cfg)
    tasks = load_tasks(benchmark_source(cfg.benchmark), names, cfg.data_dir, cfg.seed, cfg.data.train_per_task,
                       cfg.data.test_per_task, cfg.data.carve_test)
    model, tokenizer = load_model(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
    run = Run(cfg, out, tasks, model, tokenizer, model_id(cfg.model, seed=cfg.seed), accelerator, echo)
    results = run.execute()
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results
