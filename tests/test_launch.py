"""slao compare's launchers: the same grid run in this process, as local subprocesses two at a time
(--launcher local --jobs 2) and as submitit jobs (its local executor) gives the same comparison; a failed
cell is reported with its log, does not stop the others, and the same command again runs only what is not
finished; the launch flags are checked, and the SLURM flags become submitit's SLURM parameters."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from jsonl_tasks import write_jsonl_tasks
from slao.cli import build_from_args, main, make_parser
from slao.compare import run_comparison
from slao.launch import SlurmLauncher, child_env, threads_per_job
from slao.metrics import METRICS

TASKS = "alpha,beta,gamma"
METHODS = ["slao", "seq-lora"]
SEEDS = [0, 1]
CELLS = [f"{m}/seed-{s}" for s in SEEDS for m in METHODS]
# submitit is imported by slao.launch only (never here: its import-time logging set-up must be avoided)
NEEDS_SUBMITIT = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit not installed")
FAST = ["--set", "eval.max_new_tokens=2", "--set", "train.lr=5e-3", "--set", "train.batch_size=4",
        "--set", "data.train_per_task=8", "--set", "data.test_per_task=4"]


def _args(data, out, *extra):
    return ["compare", "--methods", ",".join(METHODS), "--seeds", ",".join(map(str, SEEDS)), "--model", "tiny-random",
            "--benchmark", "jsonl", "--data-dir", str(data), "--tasks", TASKS, "--output", str(out), *FAST, *extra]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    data = write_jsonl_tasks(root / "data", TASKS.split(","), 8, 4, options=False)
    assert main(_args(data, root / "sequential")) == 0
    return root, data


def _view(out) -> dict:
    """What a comparison must reproduce: each run's matrix and per-example scores, and the comparison's
    per-method metrics (values per run) and paired intervals."""
    comp = json.loads((out / "comparison.json").read_text())
    runs = {}
    for cell in CELLS:
        r = json.loads((out / cell / "results.json").read_text())
        runs[cell] = (r["finished"], r["accuracy"], r["example_scores"], r["metrics"])
    methods = {m: {k: e[k]["values"] for k in METRICS} | {"seeds": e["seeds"], "matrix": e["accuracy_mean"]}
               for m, e in comp["methods"].items()}
    pairs = {name: {k: p[k] for k in ("aa", "bwt", "forgetting", "la", "units")}
             for name, p in comp["paired"]["pairs"].items()}
    return {"runs": runs, "methods": methods, "pairs": pairs, "done": (comp["runs_done"], comp["runs_total"])}


def test_local_jobs_with_a_failed_cell_then_resumed_equal_sequential(sequential, capsys):
    root, data = sequential
    out = root / "local"
    broken = out / "seq-lora" / "seed-1" / "checkpoints" / "task-0001"
    broken.mkdir(parents=True)
    (broken / "progress.json").write_text("not json")  # this cell's run refuses its checkpoint: exit 2
    capsys.readouterr()

    assert main(_args(data, out, "--launcher", "local", "--jobs", "2")) == 1
    printed, err = capsys.readouterr()
    log = out / "launch" / "seq-lora-seed-1.log"
    # the failure names the cell and its log, whose last line is the run's own error
    assert "1 of 4 cells failed" in err and "seq-lora, seed 1" in err and str(log) in err
    assert "slao: error: checkpoint" in log.read_text() and "unreadable" in err
    # the other three ran, two at a time: the second cell started before the first one finished
    lines = printed.splitlines()
    started = [i for i, ln in enumerate(lines) if ln.startswith("started ")]
    finished = [i for i, ln in enumerate(lines) if ln.startswith("finished ")]
    assert len(started) == 4 and len(finished) == 3 and started[1] < finished[0]
    for cell in ("slao/seed-0", "seq-lora/seed-0", "slao/seed-1"):
        assert json.loads((out / cell / "results.json").read_text())["finished"]
        assert (out / "launch" / f"{cell.replace('/', '-')}.log").exists()
    comp = json.loads((out / "comparison.json").read_text())
    assert (comp["runs_done"], comp["runs_total"]) == (3, 4) and comp["methods"]["seq-lora"]["seeds"] == [0]
    assert [f["cell"] for f in comp["failed"]] == ["seq-lora, seed 1"] and comp["failed"][0]["log"] == str(log)
    assert "Failed, left out: seq-lora, seed 1" in (out / "comparison.md").read_text()

    # fixed, the same command runs only the missing cell and leaves the finished ones alone
    shutil.rmtree(out / "seq-lora" / "seed-1")
    kept = {c: (out / c / "results.json").stat().st_mtime_ns for c in CELLS if c != "seq-lora/seed-1"}
    assert main(_args(data, out, "--launcher", "local", "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 runs finished earlier; 1 to run" in printed and printed.count("started ") == 1
    assert {c: (out / c / "results.json").stat().st_mtime_ns for c in kept} == kept
    assert "failed" not in json.loads((out / "comparison.json").read_text())
    assert _view(out) == _view(root / "sequential")


@NEEDS_SUBMITIT
def test_submitit_local_executor_equals_sequential(sequential, capsys):
    root, data = sequential
    out = root / "submitit"
    args = make_parser().parse_args(_args(data, out))
    launcher = SlurmLauncher(time_min=10, cluster="local", poll_seconds=0.5)
    comp = run_comparison(build_from_args(args), METHODS, SEEDS, out, launcher=launcher)
    assert comp["runs_done"] == 4 and "failed" not in comp
    assert _view(out) == _view(root / "sequential")
    printed = capsys.readouterr().out
    assert printed.count("submitted ") == 4 and printed.count("finished ") >= 4
    assert list((out / "launch" / "submitit").rglob("*_log.out"))  # submitit's own job logs


def test_launch_flags_are_checked(tmp_path, capsys):
    base = ["compare", "--methods", "slao", "--output", str(tmp_path / "c")]
    for extra, message in ((["--jobs", "2"], "--jobs is a setting of --launcher local"),
                           (["--slurm-partition", "gpu"], "--slurm-partition is a setting of --launcher slurm"),
                           (["--launcher", "slurm"], "needs --slurm-time"),
                           (["--launcher", "local", "--jobs", "0"], "--jobs must be at least 1"),
                           (["--launcher", "slurm", "--slurm-time", "5", "--slurm-param", "account"], "KEY=VALUE")):
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@NEEDS_SUBMITIT
def test_slurm_flags_become_submitit_slurm_parameters(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit's SLURM executor only checks that srun exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    args = make_parser().parse_args(["compare", "--methods", "slao", "--output", "x", "--launcher", "slurm",
                                     "--slurm-time", "120", "--slurm-partition", "gpu", "--slurm-gpus", "2",
                                     "--slurm-cpus", "8", "--slurm-mem-gb", "64", "--slurm-setup",
                                     "source .venv/bin/activate", "--slurm-param", "account=proj",
                                     "--slurm-array-parallelism", "4"])
    from slao.cli import make_launcher

    executor = make_launcher(args).executor(tmp_path / "jobs")
    assert executor.cluster == "slurm"
    assert executor.parameters == {
        "job_name": "slao", "time": 120, "nodes": 1, "ntasks_per_node": 2, "gpus_per_node": 2, "cpus_per_task": 8,
        "mem": "64GB", "partition": "gpu", "setup": ["source .venv/bin/activate"],
        "additional_parameters": {"account": "proj"}, "array_parallelism": 4}


def test_each_local_job_gets_its_threads_or_its_gpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert threads_per_job(4) == 4 and threads_per_job(32) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the launching shell's setting caps it
    assert threads_per_job(4) == 2
    envs = [child_env(slot, 3, ["4", "5"]) for slot in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "5", "4"]
    assert all(e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "3" for e in envs)
    import slao

    assert envs[0]["PYTHONPATH"].split(":")[0] == str(__import__("pathlib").Path(slao.__file__).parent.parent)


@NEEDS_SUBMITIT
def test_importing_submitit_leaves_the_processs_logging_handlers_open():
    import subprocess
    import sys

    code = """
import logging, os
closed = []
class Spy(logging.Handler):
    def close(self):
        closed.append(True)
        super().close()
logging.getLogger("someone").addHandler(Spy())
from slao.launch import import_submitit
import_submitit()
print(closed == [], "SUBMITIT_LOG_LEVEL" not in os.environ, logging.getLogger("submitit").handlers == [])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


@NEEDS_SUBMITIT
def test_a_refused_submission_is_one_clear_error(tmp_path, monkeypatch):
    from slao.config import build_config
    from slao.errors import SlaoError

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    for tool in ("srun", "sbatch"):
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    launcher = SlurmLauncher(time_min=5, partition="nope")
    with pytest.raises(SlaoError, match="submitting 1 jobs failed: .*invalid partition specified: nope"):
        run_comparison(build_config({"benchmark": "packaged"}), ["slao"], [0], tmp_path / "grid",
                       echo=lambda *a: None, launcher=launcher)
    assert not (tmp_path / "grid" / "slao" / "seed-0").exists()  # nothing ran
