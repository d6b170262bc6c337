"""Two CPU processes (torchrun, gloo) against one: same global batch, same accuracy matrix and LoRA,
results.json records the number of processes, and only the main process writes files and progress.

Why the two runs can differ at all: DDP all-reduces gradients, so they are summed in another order
than one process sums them (and each process pads its own share of a batch); the LoRA then differs
by float rounding (~1e-7 relative per step; measured here: LoRA entries 7e-6 apart, losses 1e-7).
At a high learning rate Adam amplifies that noise (its update is ~lr * sign(g) where g is near 0): at
lr 5e-2 the same runs end 0.05 apart, so the test keeps lr at 2e-2. Greedy decoding could flip a token
where two logits tie within the noise, so an accuracy cell may differ by one test example (100 / TEST
points); in practice they are equal. LoRA dropout is off: each process draws its own dropout masks, so with
dropout the runs agree in distribution only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from slao.cli import main
from slao.config import TrainConfig
from slao.errors import ConfigError
from slao.train import check_backend

TASKS = ["alpha", "beta", "gamma", "delta"]
TRAIN, TEST = 13, 8  # 13 with a global batch of 4: the last batch has one example, which one process lacks
CELL_TOLERANCE = 100.0 / TEST  # one test example
RUN = ["run", "--method", "slao", "--model", "tiny-random", "--benchmark", "jsonl", "--tasks", ",".join(TASKS),
       "--set", "train.batch_size=4", "--set", "train.grad_accum=2", "--set", "train.lr=2e-2",
       "--set", "train.epochs=2", "--set", "lora.dropout=0", "--set", "eval.max_new_tokens=3",
       "--set", "eval.zero_shot=true"]


def _write_tasks(folder: Path) -> Path:
    # One answer per task, so the tiny model learns it and later forgets it: a matrix that is not all 0.
    words = ["red", "blue", "green", "gold"]
    for k, name in enumerate(TASKS):
        d = folder / name
        d.mkdir(parents=True)
        for split, n in (("train", TRAIN), ("test", TEST)):
            lines = [json.dumps({"input": f"{split} {i} of {name}", "output": words[k]}) for i in range(n)]
            (d / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        (d / "options.json").write_text(json.dumps([words[k], words[(k + 1) % 4]]))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = _write_tasks(root / "data")
    args = [*RUN, "--data-dir", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "slao", *args,
                          "--zero-shot-cache", str(root / "zero-shot"),
                          "--output", str(root / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    # The single-process reference runs in this process (no second start-up of torch).
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main([*args, "--output", str(root / "one")]) == 0
    return {"one": (root / "one", out.getvalue(), err.getvalue()),
            "two": (root / "two", two.stdout, two.stderr)}


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_results_record_the_number_of_processes(runs):
    assert _results(runs["one"][0])["num_processes"] == 1
    assert _results(runs["two"][0])["num_processes"] == 2


def test_same_accuracy_matrix_within_one_example(runs):
    R1, R2 = _results(runs["one"][0])["accuracy"], _results(runs["two"][0])["accuracy"]
    assert any(v for row in R1 for v in row if v is not None), "a matrix of zeros would prove nothing"
    for row1, row2 in zip(R1, R2, strict=True):
        for a, b in zip(row1, row2, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert abs(a - b) <= CELL_TOLERANCE, (R1, R2)


def test_same_final_lora_and_losses(runs):
    A = load_file(str(runs["one"][0] / "adapter" / "adapter_model.safetensors"))
    B = load_file(str(runs["two"][0] / "adapter" / "adapter_model.safetensors"))
    assert A.keys() == B.keys() and A
    for key in A:
        assert (A[key] - B[key]).abs().max() <= 1e-4, key  # entries are up to ~0.5
    logs = [[json.loads(line) for line in (runs[r][0] / "train_log.jsonl").read_text().splitlines()]
            for r in ("one", "two")]
    # Written once (by the main process only), with the same steps, losses and token counts.
    assert len(logs[0]) == len(logs[1]) == len(TASKS) * 7  # ceil(2 * 13 / 4) steps a task
    for a, b in zip(*logs, strict=True):
        assert (a["task"], a["step"], a["tokens"]) == (b["task"], b["step"], b["tokens"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])


def test_files_and_progress_written_once(runs):
    folder, stdout, stderr = runs["two"]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted(
        p.name for p in (runs["one"][0] / "checkpoints").iterdir())
    assert not list(folder.rglob(".tmp*")) and not list(folder.rglob(".adapter-*"))
    for i, name in enumerate(TASKS, 1):
        assert stdout.count(f"task {i}/{len(TASKS)} {name}:") == 1
        # A bar's first drawing has no postfix yet: one per bar, so two processes would show two.
        assert len(re.findall(rf"train {i}:{name}:\s+0%\|[^|]*\| 0/7 \[00:00<\?, \?it/s\]", stderr)) == 1


def test_summary_printed_once(runs):
    assert runs["two"][1].count("run folder:") == 1


def test_sharded_or_self_stepping_backends_are_refused():
    def launched(kind):
        return SimpleNamespace(distributed_type=kind)

    with pytest.raises(ConfigError, match="FSDP"):
        check_backend(launched(DistributedType.FSDP), TrainConfig())
    with pytest.raises(ConfigError, match="train.grad_accum=1"):
        check_backend(launched(DistributedType.DEEPSPEED), TrainConfig(grad_accum=2))
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.DEEPSPEED):
        check_backend(launched(kind), TrainConfig())  # DDP and ZeRO without accumulation run


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker of the given rank (a descendant of ``launcher`` with RANK=rank)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            pid, parents = int(entry.name), []
            while pid > 1 and len(parents) < 8:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.append(pid)
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in env and launcher in parents:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker's pid through /proc")
def test_a_killed_rank_leaves_a_run_that_resumes_to_the_same_results(runs, tmp_path):
    """SIGKILL of one of two torchrun workers after the first checkpoint: the job ends, the run folder keeps
    that checkpoint, and a 2-process resume ends exactly where the uninterrupted 2-process run did."""
    data = runs["two"][0].parent / "data"
    args = [*RUN, "--data-dir", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "cut"
    with open(tmp_path / "cut.log", "w") as log:
        job = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "slao", *args,
                                "--output", str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "task-0001").exists():
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "cut.log").read_text()[-2000:]
        time.sleep(0.02)
    worker = _rank_pid(job.pid, 1)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    assert job.wait(timeout=300) != 0
    assert not _results(out)["finished"]
    resumed = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "slao", "run", "--resume",
                              str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    whole, cut = _results(runs["two"][0]), _results(out)
    assert cut["finished"] and cut["accuracy"] == whole["accuracy"] and cut["num_processes"] == 2
    A = load_file(str(runs["two"][0] / "adapter" / "adapter_model.safetensors"))
    B = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert A.keys() == B.keys() and all(torch.equal(A[k], B[k]) for k in A)
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (f / "train_log.jsonl").read_text().splitlines()] for f in (runs["two"][0], out)]
    assert logs[0] == logs[1]


def test_two_processes_share_the_main_ones_cached_zero_shot_answers(runs, tmp_path):
    """A 2-process run whose zero-shot answers the fixture's 2-process run left in the cache: the main process
    reads them and hands them to the other (each reading for itself could split the ranks between reading
    and generating, which would hang the collective generation)."""
    whole = _results(runs["two"][0])
    if whole["versions"]["git_dirty"] is not False and whole["versions"]["git_commit"] is not None:
        pytest.skip("a checkout with uncommitted changes keeps no answer cache")
    data, cache = runs["two"][0].parent / "data", runs["two"][0].parent / "zero-shot"
    assert len(list(cache.glob("*.json"))) == len(TASKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    args = [*RUN, "--data-dir", str(data), "--tasks", "alpha,beta", "--set", "train.epochs=1",
            "--zero-shot-cache", str(cache), "--output", str(tmp_path / "again")]
    again = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "slao", *args],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    r = _results(tmp_path / "again")
    assert r["zero_shot_reused"] == ["alpha", "beta"] and r["zero_shot"] == whole["zero_shot"][:2]
    assert "zero-shot on" not in again.stderr  # no process generated


@pytest.mark.parametrize(("available", "named", "world", "cpu"), [
    (False, "cuda", "2", True),   # a CUDA build of torch on a machine without a GPU: join as CPU processes
    (False, None, "2", True),     # a CPU build
    (True, "mps", "2", True),     # Apple GPUs: no multi-process backend, CPU processes
    (True, "cuda", "2", False),   # real GPUs: Accelerate picks them
    (False, "cuda", "1", False),  # one process: nothing to join
])
def test_several_processes_without_a_usable_accelerator_join_as_cpu(monkeypatch, available, named, world, cpu):
    import torch

    from slao import harness

    def current():
        if not available:
            raise AssertionError("asked for the accelerator although none is available (torch 2.6 raises here)")
        return torch.device(named)

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: available)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", current)
    monkeypatch.setenv("WORLD_SIZE", world)
    made = []
    monkeypatch.setattr(harness, "Accelerator", lambda **kw: made.append(kw))
    harness.make_accelerator()
    assert made == [{"cpu": cpu}]
