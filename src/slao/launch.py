"""Running the cells of a comparison grid outside this process: N local ``slao run`` subprocesses at once
(concurrent.futures), or one SLURM job per cell (submitit). Each cell is a plain, resumable ``slao run``
on its own folder, started from a config file written next to the grid; a cell that fails is reported
with its log and does not stop the others. Gathering the finished cells is compare.py's business."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from slao.errors import ConfigError, SlaoError

LAUNCHERS = ("sequential", "local", "slurm")
LAUNCH_DIR = "launch"  # <comparison>/launch/: each cell's config and log, submitit's files
ZERO_SHOT_DIR = "zero-shot"  # <comparison>/zero-shot/: the base model's answers, shared by its runs (AnswerCache)


class Cell(NamedTuple):
    """One run of a grid: its method, seed and order, its resolved config and its run folder."""

    method: str
    seed: int
    order: int | None
    cfg: object  # RunConfig
    folder: Path
    label: str  # for people: "slao, order 4, seed 1"
    key: str  # for file names: "slao-order-4-seed-1"


@dataclass
class CellFailure:
    """A cell that ended without a finished run: which one, why (the log's last line) and where its log is."""

    label: str
    folder: Path
    log: Path | None
    reason: str

    def record(self) -> dict:
        return {"cell": self.label, "folder": str(self.folder), "log": str(self.log) if self.log else None,
                "reason": self.reason}


class CellsFailed(SlaoError):
    """Some cells of a grid failed; the others ran, and what finished is gathered."""

    exit_status = 1


def failure_message(failed: Sequence[dict], total: int) -> str:
    """The closing error of a grid with failed cells (``failed``: CellFailure.record() dicts)."""
    lines = [f"{r['cell']} ({r['folder']}): {r['reason']}" + (f"; log: {r['log']}" if r.get("log") else "")
             for r in failed]
    return (f"{len(failed)} of {total} cells failed (the others ran; the same command again runs only what "
            "is not finished):\n  " + "\n  ".join(lines))


def write_cell_config(cell: Cell, out: Path) -> Path:
    """The cell's resolved config as a YAML file that ``slao run --config`` reads back to the same config."""
    from slao.checkpoint import write_atomic
    from slao.config import dump_yaml

    path = Path(out) / LAUNCH_DIR / f"{cell.key}.yaml"
    write_atomic(path, dump_yaml(cell.cfg))
    return path


def run_argv(cell: Cell, out: Path) -> list[str]:
    """``slao run`` arguments for the cell: a run that resumes when unfinished and does nothing when done."""
    return ["run", "--config", str(write_cell_config(cell, out)), "--output", str(cell.folder),
            "--zero-shot-cache", str(Path(out) / ZERO_SHOT_DIR)]


def _last_line(path: Path, prefix: str = "") -> str:
    """The log's last non-empty line (that starts with ``prefix``), or ''."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln.startswith(prefix)]
    return lines[-1][:300] if lines else ""


# -- N local subprocesses at once ---------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set (possibly empty), else every CUDA device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(k) for k in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def threads_per_job(jobs: int) -> int:
    """This machine's cores shared out among ``jobs`` runs (at least 1 each); never more than an
    OMP_NUM_THREADS the launching shell set, which is taken as a cap."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def child_env(slot: int, threads: int, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of the run in slot ``slot``: its thread count, its GPU (round-robin over the
    visible ones) and this slao on the import path."""
    import slao

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    package_root = str(Path(slao.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class LocalLauncher:
    """Up to ``jobs`` cells at once, each a ``python -m slao run`` subprocess with its own threads or GPU."""

    jobs: int = 1
    python: str = sys.executable
    _procs: set = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self):
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")

    def describe(self) -> str:
        gpus = visible_gpus()
        where = f"GPUs {','.join(gpus)} round-robin" if gpus else f"{threads_per_job(self.jobs)} threads each"
        return f"{self.jobs} local process{'es' if self.jobs > 1 else ''} at once ({where})"

    def run(self, cells: Sequence[Cell], out: Path, echo: Callable = print) -> list[CellFailure]:
        if not cells:
            return []
        gpus, threads = visible_gpus(), threads_per_job(self.jobs)
        slots = list(range(min(self.jobs, len(cells))))
        free = list(slots)
        say_lock = threading.Lock()

        def say(text: str) -> None:
            with say_lock:
                echo(text)

        def one(cell: Cell) -> CellFailure | None:
            with self._lock:
                slot = free.pop(0)
            try:
                gpu = gpus[slot % len(gpus)] if gpus else None
                return self._run_cell(cell, out, child_env(slot, threads, gpus), say, gpu)
            except Exception as err:  # the cell could not be started: report it, keep the others going
                return CellFailure(cell.label, cell.folder, None, f"could not start: {err!r}")
            finally:
                with self._lock:
                    free.append(slot)

        failures: list[CellFailure] = []
        pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="slao-cell")
        try:
            futures = [pool.submit(one, cell) for cell in cells]
            for future in as_completed(futures):
                failure = future.result()
                if failure is not None:
                    failures.append(failure)
        except BaseException:  # Ctrl-C: no run is left behind
            self._stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return failures

    def _run_cell(self, cell: Cell, out: Path, env: dict, say: Callable, gpu: str | None) -> CellFailure | None:
        argv = [self.python, "-m", "slao", *run_argv(cell, out)]
        log = Path(out) / LAUNCH_DIR / f"{cell.key}.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            with self._lock:
                if self._stopping.is_set():
                    return CellFailure(cell.label, cell.folder, log, "not started: interrupted")
                proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
                self._procs.add(proc)
            say(f"started {cell.label}{f' on GPU {gpu}' if gpu else ''} -> {cell.folder} (log: {log})")
            status = proc.wait()
            with self._lock:
                self._procs.discard(proc)
        seconds = time.perf_counter() - start
        if status == 0:
            say(f"finished {cell.label} in {seconds:.0f} s")
            return None
        reason = f"exit status {status}" + (f": {_last_line(log)}" if _last_line(log) else "")
        say(f"FAILED {cell.label} after {seconds:.0f} s ({reason}); log: {log}")
        return CellFailure(cell.label, cell.folder, log, reason)

    def _stop_all(self, grace_seconds: float = 5.0) -> None:
        """Ctrl-C: no cell starts after it, and every running cell is interrupted (it keeps its finished
        tasks). A Ctrl-C at a terminal reaches the children too; one sent to this process alone does not,
        so whatever still runs after a grace period gets its own SIGINT."""
        with self._lock:
            self._stopping.set()
            procs = list(self._procs)
        deadline = time.monotonic() + grace_seconds
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)


# -- one SLURM job per cell (submitit) ----------------------------------------------------------------
def import_submitit():
    """submitit, imported without its logging set-up: when first imported it calls logging's dictConfig,
    which closes every logging handler already open in the process (a library's handler may hold this
    process's stderr). Its own documented switch, SUBMITIT_LOG_LEVEL=NOCONFIG, is set for the import only,
    so the jobs, started later, keep submitit's logging."""
    import importlib

    if "submitit" in sys.modules:
        return sys.modules["submitit"]
    previous = os.environ.get("SUBMITIT_LOG_LEVEL")
    os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
    try:
        return importlib.import_module("submitit")
    except ImportError:
        raise ConfigError("--launcher slurm needs the submitit package: pip install 'slao[slurm]' "
                          "(or pip install submitit)") from None
    finally:
        if previous is None:
            os.environ.pop("SUBMITIT_LOG_LEVEL", None)
        else:
            os.environ["SUBMITIT_LOG_LEVEL"] = previous


class CellJob:
    """What one submitit job runs: ``slao run`` on its cell, in the job's own process. On a timeout or a
    preemption submitit calls ``checkpoint``, which requeues the same call: the run resumes after its last
    finished task. (submitit requeues any callable that has a ``checkpoint`` method.)"""

    def __call__(self, argv: list[str]) -> str:
        _distributed_env()
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and cpus.isdigit():
            import torch

            torch.set_num_threads(int(cpus))
        from slao.cli import main

        status = main(list(argv))
        if status != 0:
            raise RuntimeError(f"slao run exited with status {status} (its message is above, in this log)")
        return argv[-1]

    def checkpoint(self, argv: list[str]):
        return import_submitit().helpers.DelayedSubmission(self, argv)


def _distributed_env() -> None:
    """A job of several tasks (one per GPU) is one DDP run: export RANK, WORLD_SIZE, MASTER_ADDR... for
    Accelerate, as torchrun would."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        import_submitit().helpers.TorchDistributedEnvironment().export()


@dataclass
class SlurmLauncher:
    """One submitit job per cell, submitted as one job array, then waited for. ``cluster`` is submitit's
    executor: ``slurm``, or ``local`` (the same jobs as local processes, for trying a set-up)."""

    time_min: int | None = None
    partition: str | None = None
    gpus: int = 0
    cpus: int | None = None
    mem_gb: float | None = None
    setup: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    array_parallelism: int | None = None
    cluster: str = "slurm"
    poll_seconds: float = 10.0

    def __post_init__(self):
        if self.time_min is None or self.time_min < 1:
            raise ConfigError("--launcher slurm needs --slurm-time MINUTES, each job's time limit (submitit's own "
                              "default is 5 minutes); a job that runs out is requeued and resumes its run")
        if self.gpus < 0:
            raise ConfigError(f"--slurm-gpus must be 0 or more, got {self.gpus}")

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "the default partition"
        return f"one {self.cluster} job per cell on {where}, {self.time_min} min, {self.gpus} GPU(s) each"

    def parameters(self) -> dict:
        """submitit AutoExecutor parameters (its shared names, and ``slurm_*`` for SLURM-only ones)."""
        params: dict = {"name": "slao", "timeout_min": int(self.time_min), "nodes": 1,
                        # one process per GPU: several GPUs make one DDP run of the cell
                        "tasks_per_node": max(1, self.gpus), "gpus_per_node": self.gpus,
                        "cpus_per_task": self.cpus, "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                        "slurm_setup": list(self.setup) or None,
                        "slurm_additional_parameters": dict(self.extra) or None,
                        "slurm_array_parallelism": self.array_parallelism}
        return {k: v for k, v in params.items() if v is not None}

    def executor(self, folder: Path):
        submitit = import_submitit()
        try:
            executor = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        except RuntimeError as err:  # no srun/sbatch here
            raise ConfigError(f"--launcher slurm: {err} (submit from a machine of the cluster)") from None
        executor.update_parameters(**self.parameters())
        return executor

    def run(self, cells: Sequence[Cell], out: Path, echo: Callable = print) -> list[CellFailure]:
        if not cells:
            return []
        submitit = import_submitit()
        executor = self.executor(Path(out) / LAUNCH_DIR / "submitit" / "%j")
        argvs = [run_argv(cell, out) for cell in cells]
        try:
            with executor.batch():
                jobs = [executor.submit(CellJob(), argv) for argv in argvs]
        except Exception as err:  # sbatch refused the array: a bad partition, account or time limit
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            raise SlaoError(f"submitting {len(argvs)} jobs failed: {lines[-1] if lines else type(err).__name__} "
                            f"(the submission script is in {Path(out) / LAUNCH_DIR / 'submitit'})") from None
        by_id = {}
        for cell, job in zip(cells, jobs, strict=True):
            by_id[job.job_id] = cell
            echo(f"submitted {cell.label} as job {job.job_id} -> {cell.folder} (log: {job.paths.stdout})")
        echo(f"waiting for {len(jobs)} jobs; stopping this command (Ctrl-C) leaves them running: gather them "
             "later with the same command and --collect")
        failures = []
        for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds):
            cell = by_id[job.job_id]
            error = job.exception()
            if error is None:
                echo(f"finished {cell.label} (job {job.job_id})")
                continue
            # slao's own one-line message where it gave one, else the last line of the job's error
            lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
            why = _last_line(job.paths.stderr, "slao: error:") or (lines[-1][:300] if lines else "")
            reason = f"job {job.job_id} failed" + (f": {why}" if why else "")
            failures.append(CellFailure(cell.label, cell.folder, job.paths.stderr, reason))
            echo(f"FAILED {cell.label}: {reason}; log: {job.paths.stderr} (and {job.paths.stdout})")
        return failures
