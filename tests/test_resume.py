"""Runs that survive being killed: SIGKILL in the middle of a task or of a checkpoint write, Ctrl-C, and
resuming with other settings. A resumed run must equal an uninterrupted one to the last digit on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slao import checkpoint
from slao.cli import main
from slao.methods.base import METHODS, get_method

get_method("slao")  # fills the registry, for the parametrised test over every method

TASKS = "bbc-topic,rt-sentiment,rt-subjectivity,word-polarity"
# 16 optimiser steps a task: long enough to be killed in the middle of one.
ARGS = ["--method", "slao", "--model", "tiny-random", "--benchmark", "packaged", "--tasks", TASKS,
        "--set", "data.train_per_task=64", "--set", "data.test_per_task=4", "--set", "train.batch_size=4",
        "--set", "eval.max_new_tokens=2"]
TIMING = {"train_seconds", "method_seconds", "eval_seconds", "wall_seconds", "versions"}
# One thread in this process and in the children: the same arithmetic everywhere, and on 2 shared cores
# two threads per process only wait for each other.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["run", *ARGS, "--output", str(out)]) == 0
    return out


def _start(out: Path, env: dict | None = None) -> subprocess.Popen:
    # Output goes to a file (the child keeps its own handle): a full pipe would stall the child.
    with open(out.parent / f"{out.name}.log", "w") as log:
        # SIGINT as a terminal gives it: a suite started in the background (`make test &`) inherits SIGINT
        # ignored, and so would the child, which then never sees the Ctrl-C this file sends it
        return subprocess.Popen([sys.executable, "-m", "slao", "run", *ARGS, "--output", str(out)],
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD, **(env or {})})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


def _log_lines(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Same results (but timing), same loss at every step, same data order, same adapter tensors."""
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    assert ra["finished"] and rb["finished"]
    assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}
    assert _log_lines(a) == _log_lines(b)
    pa, pb = (json.loads((checkpoint.latest(f) / "progress.json").read_text()) for f in (a, b))
    assert pa["data_order"] == pb["data_order"] and any(pa["data_order"])
    files = sorted(p.relative_to(a) for p in (a / "adapter").rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in (b / "adapter").rglob("*.safetensors"))
    for name in files:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / "predictions.json").read_text() == (b / "predictions.json").read_text()


def test_sigkill_in_a_later_task_then_resume_equals_an_uninterrupted_run(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "task-0002", proc)
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not json.loads((out / "results.json").read_text())["finished"]
    assert main(["run", "--resume", str(out)]) == 0
    assert f"resuming {out} after task" in capsys.readouterr().out
    assert_same_run(reference, out)


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_usable(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(out, {checkpoint.CRASH_ENV: "after-state@2"})  # SIGKILL with task 2's state half written
    assert proc.wait(timeout=300) == -signal.SIGKILL
    root = out / "checkpoints"
    assert [p.name for p in root.glob(".tmp-*")] and checkpoint.latest(out).name == "task-0001"
    assert main(["run", *ARGS, "--output", str(out)]) == 0  # the same command again resumes
    assert f"resuming {out} after task 1 of 4" in capsys.readouterr().out
    assert not list(root.glob(".tmp-*"))
    assert_same_run(reference, out)


def test_ctrl_c_stops_with_130_and_a_valid_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "task-0001", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    text = (tmp_path / "run.log").read_text()
    assert f"continue with: slao run --resume {out}" in text and "Traceback" not in text
    last = checkpoint.latest(out)
    assert last is not None and not list((out / "checkpoints").glob(".tmp-*"))
    loaded = checkpoint.load(last, {"method": "slao", "base_model": "tiny-random(seed=0)"})
    assert loaded.progress["tasks_done"] >= 1


def test_a_finished_run_is_not_run_again(reference, capsys, monkeypatch):
    import slao.harness

    before = (reference / "results.json").read_text()
    monkeypatch.setattr(slao.harness, "train_task", None)  # any training would fail loudly
    assert main(["run", "--resume", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "already finished; nothing to do" in out and "4. word-polarity" in out
    assert (reference / "results.json").read_text() == before


@pytest.mark.parametrize("flags, difference", [
    (["--set", "train.lr=0.001"], "train.lr: 0.0001 -> 0.001"),
    (["--method", "seq-lora"], "method.name: 'slao' -> 'seq-lora'"),
    (["--model", "smollm2-135m"], "model: 'tiny-random' -> 'smollm2-135m'"),
    (["--tasks", "bbc-topic,rt-sentiment"], "tasks: ['bbc-topic', 'rt-sentiment', 'rt-subjectivity'"),
])
def test_resume_with_other_settings_is_refused_with_the_differences(reference, capsys, monkeypatch,
                                                                     flags, difference):
    import slao.models

    monkeypatch.setattr(slao.models, "load_model", None)  # refused before any model is loaded
    assert main(["run", "--resume", str(reference), *flags]) == 2
    err = capsys.readouterr().err
    assert "holds a run with another configuration; refusing to resume it" in err
    assert difference in err and "Traceback" not in err


def test_same_output_folder_with_forgotten_flags_is_refused(reference, capsys):
    assert main(["run", "--output", str(reference)]) == 2
    err = capsys.readouterr().err
    assert "data.train_per_task: 64 -> None" in err and "train.batch_size: 4 -> 8" in err


def test_resume_and_another_output_folder_are_refused(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "a"), "--output", str(tmp_path / "b")]) == 2
    assert "give the run folder once" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "a")]) == 2
    assert "holds no run to resume (no config.yaml)" in capsys.readouterr().err


def _copy(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out, checkpoint.latest(out)


def test_truncated_checkpoint_is_refused_on_resume(reference, tmp_path, capsys):
    out, last = _copy(reference, tmp_path)
    state = last / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    assert main(["run", "--resume", str(out)]) == 2
    assert f"checkpoint file {state} is missing, truncated or changed" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("method", "seq-lora"), ("base_model", "smollm2-135m"),
                                        ("tasks_sha256", "0" * 64)])
def test_checkpoint_from_another_method_model_or_data_is_refused(reference, tmp_path, capsys, key, value):
    out, last = _copy(reference, tmp_path)
    body = json.loads((last / "progress.json").read_text())
    body["meta"][key] = value  # e.g. a checkpoint folder copied over from another run
    (last / "progress.json").write_text(json.dumps(body))
    assert main(["run", "--resume", str(out)]) == 2
    assert f"was written for {key} '{value}'" in capsys.readouterr().err


def test_an_interrupted_comparison_keeps_finished_runs_and_resumes_the_other(tmp_path, monkeypatch, capsys):
    import slao.harness

    args = ["compare", "--methods", "slao,seq-lora", "--model", "tiny-random", "--tasks", "bbc-topic,rt-sentiment",
            "--set", "data.train_per_task=8", "--set", "data.test_per_task=2", "--set", "train.batch_size=4",
            "--set", "eval.max_new_tokens=2", "--output", str(tmp_path / "cmp")]
    real_save, real_train = checkpoint.save, slao.harness.train_task
    saves, trained = [], []

    def save_then_interrupt(run_dir, task_index, *a, **k):
        folder = real_save(run_dir, task_index, *a, **k)
        saves.append((Path(run_dir).parent.name, task_index))
        if len(saves) == 3:  # slao finished (2 tasks), seq-lora after its first task: Ctrl-C
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert main(args) == 130
    assert "run the same slao compare command again" in capsys.readouterr().err
    monkeypatch.setattr(checkpoint, "save", real_save)
    monkeypatch.setattr(slao.harness, "train_task",
                        lambda acc, ad, method, i, name, *a: trained.append((method.name, i)) or real_train(
                            acc, ad, method, i, name, *a))
    assert main(args) == 0
    assert saves == [("slao", 1), ("slao", 2), ("seq-lora", 1)]
    assert trained == [("seq-lora", 2)]  # slao read back, seq-lora resumed after its first task
    comp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comp["runs_done"] == 2 and set(comp["methods"]) == {"slao", "seq-lora"}


SMALL = ["--model", "tiny-random", "--tasks", "bbc-topic,rt-sentiment", "--set", "data.train_per_task=8",
         "--set", "data.test_per_task=2", "--set", "train.batch_size=4", "--set", "eval.max_new_tokens=2"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_to_the_same_result(method, tmp_path, monkeypatch):
    """Ctrl-C right after the first checkpoint, then --resume: each method's saved state is complete."""
    args = ["run", "--method", method, *SMALL]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--output", str(whole)]) == 0
    real_save = checkpoint.save

    def save_then_interrupt(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert main([*args, "--output", str(cut)]) == 130
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert main(["run", "--resume", str(cut)]) == 0
    assert_same_run(whole, cut)


def test_settings_added_since_a_run_count_as_their_defaults():
    from slao.config import RunConfig, to_dict
    from slao.harness import config_differences

    new = to_dict(RunConfig())
    old = to_dict(RunConfig())
    del old["eval"]["rows"], old["method"]["magmax"]  # written before these settings existed
    assert config_differences(old, new) == []
    new["eval"]["rows"] = "last"
    assert config_differences(old, new) == ["eval.rows: 'all' -> 'last'"]
    new["data_dir"] = "/elsewhere/superni"  # the same data in another place (its content is hashed)
    assert config_differences(old, new) == ["eval.rows: 'all' -> 'last'"]


def test_bad_method_settings_are_refused_when_the_config_is_built():
    from slao.config import build_config
    from slao.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule"):
        build_config({"method": {"name": "slao", "slao": {"schedule": 1.5}}})
    with pytest.raises(ConfigError, match="unknown method"):
        build_config({"method": {"name": "nope"}})
