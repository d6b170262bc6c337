"""Faults of shared clusters met the way a user meets them: a second process on a run folder in use, a full
disk during a write, SIGTERM from a scheduler. Each ends in one clear message and an exit status, with
nothing finished lost, and a resume that continues to the uninterrupted result."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from slao import checkpoint
from slao.cli import main
from test_resume import ONE_THREAD, _wait_for, assert_same_run

# Three tasks of 8 steps: a process is still running for a few seconds after its first checkpoint.
ARGS = ["--method", "slao", "--model", "tiny-random", "--benchmark", "packaged",
        "--tasks", "bbc-topic,rt-sentiment,rt-subjectivity", "--set", "data.train_per_task=32",
        "--set", "data.test_per_task=4", "--set", "train.batch_size=4", "--set", "eval.max_new_tokens=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["run", *ARGS, "--output", str(out)]) == 0
    return out


def _start(out):
    with open(out.parent / f"{out.name}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "slao", "run", *ARGS, "--output", str(out)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})


def test_a_second_process_on_a_folder_in_use_is_refused(tmp_path, reference):
    out = tmp_path / "run"
    first = _start(out)
    _wait_for(out / "config.yaml", first)  # written once the folder is held
    first.send_signal(signal.SIGSTOP)  # a stopped process still holds the folder
    try:
        second = subprocess.run([sys.executable, "-m", "slao", "run", *ARGS, "--output", str(out)],
                                capture_output=True, text=True, timeout=120, env={**os.environ, **ONE_THREAD})
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr
    assert str(out) in lines[0] and f"slao process {first.pid}" in lines[0]
    assert first.wait(timeout=300) == 0
    assert_same_run(reference, out)  # the step log holds each step once, the results are the whole run's
    # the lock died with its process: the folder is free again (a finished run, nothing to do)
    assert main(["run", *ARGS, "--output", str(out)]) == 0


@pytest.mark.parametrize("where", ["checkpoint", "results"])
def test_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, reference, capsys, monkeypatch, where):
    """ENOSPC at a chosen file of task 2: exit 2, one line with the path and the cause, the checkpoint of
    task 1 intact, and once space is back the resume gives the uninterrupted run's results."""
    out = tmp_path / "run"
    real_save_file, real_write = checkpoint.save_file, checkpoint.write_atomic

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def save_file(tensors, path, metadata=None):
        if where == "checkpoint" and (out / "checkpoints" / "task-0001").exists():  # task 2's checkpoint
            full(path)
        return real_save_file(tensors, path, metadata=metadata)

    def write_atomic(path, text):
        if where == "results" and checkpoint.Path(path).name == "results.json" \
                and (out / "checkpoints" / "task-0002").exists():
            full(path)
        return real_write(path, text)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    monkeypatch.setattr(checkpoint, "write_atomic", write_atomic)
    capsys.readouterr()
    assert main(["run", *ARGS, "--output", str(out)]) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("slao:")]  # besides the progress bars
    assert len(err) == 1 and err[0].startswith("slao: error: could not write") and "Traceback" not in stderr
    assert "No space left on device" in err[0] and f"slao run --resume {out}" in err[0]
    broken = "state.safetensors" if where == "checkpoint" else "results.json"
    assert broken in err[0]
    kept = checkpoint.latest(out)
    assert kept.name == ("task-0001" if where == "checkpoint" else "task-0002")
    checkpoint.load(kept, json.loads((kept / "progress.json").read_text())["meta"])  # verified whole
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    monkeypatch.setattr(checkpoint, "write_atomic", real_write)
    assert main(["run", "--resume", str(out)]) == 0
    assert_same_run(reference, out)


def test_sigterm_keeps_the_last_checkpoint_and_prints_the_resume_command(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "task-0001", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    log = (tmp_path / "run.log").read_text()
    assert "terminated (SIGTERM)" in log and f"slao run --resume {out}" in log and "Traceback" not in log
    assert checkpoint.latest(out) is not None
    assert main(["run", "--resume", str(out)]) == 0
    assert_same_run(reference, out)
