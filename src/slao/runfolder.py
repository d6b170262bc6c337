"""The files of one run folder: config.yaml, results.json, train_log.jsonl, predictions.json and the
per-task checkpoints, and the progress they record (scores, seconds, state sizes).

``Run`` (harness.py) decides what happens; this module only keeps the books. Only the main process
writes; every process keeps the same progress.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
from pathlib import Path

from slao import checkpoint
from slao.config import RunConfig, dump_yaml, to_dict
from slao.errors import SlaoError
from slao.metrics import all_metrics

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented in the README)
    fcntl = None

LOCK_FILE = ".lock"


class RunInUse(SlaoError):
    """Another live process holds the run folder."""


class WriteFailed(SlaoError):
    """A file of the run folder could not be written (a full disk, a lost mount, no permission)."""


@contextlib.contextmanager
def exclusive(out: str | Path):
    """Hold the run folder for this process: an OS lock on ``out/.lock`` that dies with the process (a
    killed run leaves no stale lock). Under several processes (torchrun) the first holds it for the job.
    A second holder is refused with the folder and the process that has it."""
    out = Path(out)
    if fcntl is None or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the life of the run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            f.seek(0)
            holder = f.read().strip() or "a process that did not say its id"
            raise RunInUse(f"{out} is in use by {holder}; wait for it to end or stop it (a stopped or killed "
                           "run frees the folder at once), or use another --output folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"slao process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock


def write_failure(err: OSError, out: Path, tasks: int) -> WriteFailed:
    """One line: the path, the cause, the checkpoint that is kept and the command that continues."""
    from slao.checkpoint import latest

    path = err.filename or out
    cause = err.strerror or str(err)
    last = latest(out)
    kept = (f"the checkpoint after task {int(last.name.split('-')[1])} of {tasks} is intact" if last
            else "no task had finished")
    return WriteFailed(f"could not write {path}: {cause}; {kept}. Free space (or fix the folder), then continue "
                       f"with: slao run --resume {out}")


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


def run_meta(cfg: RunConfig, tasks, model_id: str) -> dict[str, str]:
    """What a checkpoint must have been written for to be resumed by this run."""
    return {"method": cfg.method.name, "base_model": model_id, "tasks": ",".join(t.name for t in tasks),
            "tasks_sha256": tasks_sha256(tasks)}


class RunFolder:
    """The books of one run: what is recorded per task, and the files it is written to."""

    def __init__(self, out: str | Path, cfg: RunConfig, tasks, model_id: str, main: bool, num_processes: int,
                 method_flags: dict, versions: dict):
        self.out, self.cfg, self.tasks, self.model_id = Path(out), cfg, tasks, model_id
        self.main, self.num_processes = main, num_processes
        self.method_flags, self.versions = method_flags, versions
        self.names = [t.name for t in tasks]
        T = len(tasks)
        self.progress = {"accuracy": [[None] * T for _ in range(T)], "zero_shot": None,
                         "adapter_state_bytes": [None] * T, "method_stats": [None] * T,
                         "train_seconds": [None] * T, "method_seconds": [None] * T, "eval_seconds": [None] * T,
                         "train_steps": [None] * T,
                         "train_tokens": [None] * T, "data_order": [None] * T, "zero_shot_reused": None,
                         "example_scores": [[None] * T for _ in range(T)]}
        self.predictions: dict[str, list[str]] = {}
        self.meta = run_meta(cfg, tasks, model_id)
        self.test_hashes = [test_sha256(t) for t in tasks]

    # -- recording -----------------------------------------------------------------------------------
    def record_training(self, k: int, stats: dict) -> None:
        """Task slot k (0-based) trained: its seconds, steps, tokens and data order."""
        p = self.progress
        p["train_seconds"][k] = round(stats["seconds"], 3)
        p["train_steps"][k] = stats["steps"]
        p["train_tokens"][k] = stats["tokens"]
        p["data_order"][k] = stats.get("data_order")

    def record_method_time(self, k: int, seconds: float) -> None:
        """Task slot k: seconds the method spent outside training (statistics, its init, its merge)."""
        self.progress["method_seconds"][k] = round(seconds, 3)

    def record_row(self, k: int, row, per_example, seconds: float, state_bytes: int, method_stats: dict) -> None:
        """Row k (0-based) of the accuracy matrix and what the method kept after that task."""
        p = self.progress
        p["accuracy"][k], p["example_scores"][k] = row, per_example
        p["eval_seconds"][k] = round(seconds, 3)
        p["adapter_state_bytes"][k], p["method_stats"][k] = state_bytes, method_stats

    # -- files --------------------------------------------------------------------------------------
    def write_json(self, name: str, data) -> None:
        if self.main:
            checkpoint.write_atomic(self.out / name, json.dumps(data, indent=1) + "\n")

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def open(self, done: int) -> None:
        """Before training: the folder exists, the log holds no line of an unfinished task, config.yaml."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._trim_log(done)
        checkpoint.write_atomic(self.out / "config.yaml", dump_yaml(self.cfg))

    def _trim_log(self, done: int) -> None:
        """Drop train_log lines of tasks after the checkpoint (an interrupted task is trained again)."""
        path = self.out / "train_log.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["task_index"] <= done:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut by a kill
                continue
        checkpoint.write_atomic(path, "".join(kept))

    def results(self, finished: bool) -> dict:
        p = self.progress
        return {
            "method": self.cfg.method.name, "model": self.model_id, "benchmark": self.cfg.benchmark,
            "seed": self.cfg.seed, "order": self.cfg.order, "tasks": self.names,
            "excluded": list(self.cfg.exclude), "finished": finished,
            "num_processes": self.num_processes, **self.method_flags,
            "task_info": {t.name: {"metric": t.metric, "train": len(t.train), "test": len(t.test), "test_sha256": h,
                                   **t.info} for t, h in zip(self.tasks, self.test_hashes, strict=True)},
            "accuracy": p["accuracy"], "zero_shot": p["zero_shot"],
            # tasks whose zero-shot answers a run of the same comparison generated (the answer cache)
            "zero_shot_reused": p["zero_shot_reused"],
            "metrics": all_metrics(p["accuracy"], p["zero_shot"]) if finished else None,
            "adapter_state_bytes": p["adapter_state_bytes"], "method_stats": p["method_stats"],
            "train_seconds": p["train_seconds"], "method_seconds": p["method_seconds"],
            "eval_seconds": p["eval_seconds"],
            "train_steps": p["train_steps"], "train_tokens": p["train_tokens"],
            "eval_rows": self.cfg.eval.rows,
            # per cell of the matrix, each test example's score in [0, 1] (null where not evaluated)
            "example_scores": p["example_scores"],
            "versions": self.versions,
        }

    def save(self, i: int, method_state: dict, deploy_flat: dict, rng: dict) -> None:
        """After task i: the checkpoint (progress, method state, deployed LoRA, RNG), then results.json."""
        if not self.main:
            return
        body = {**self.progress, "predictions": self.predictions, "config": to_dict(self.cfg)}
        checkpoint.save(self.out, i, body, method_state, deploy_flat, self.meta, rng=rng)
        self.write_json("results.json", self.results(finished=False))

    def restore(self, loaded: checkpoint.Loaded) -> int:
        """Take the progress of a verified checkpoint; return the number of tasks it finished."""
        progress = loaded.progress
        self.progress = {k: progress.get(k, v) for k, v in self.progress.items()}
        self.predictions = dict(progress["predictions"])
        return progress["tasks_done"]

    def stored_results(self) -> dict | None:
        """results.json of a finished run, or None (not finished, or unreadable: then finalize again)."""
        try:
            done = json.loads((self.out / "results.json").read_text())
        except (OSError, ValueError):
            return None
        return done if isinstance(done, dict) and done.get("finished") else None

    def finish(self) -> dict:
        """predictions.json and the final results.json."""
        self.write_json("predictions.json", {
            t.name: [{"prediction": p, "answers": list(x.answers)}
                     for p, x in zip(self.predictions[t.name], t.test, strict=True)]
            for t in self.tasks if t.name in self.predictions})
        results = self.results(finished=True)
        self.write_json("results.json", results)
        return results
