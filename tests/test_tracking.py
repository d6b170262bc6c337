"""Experiment tracking through Accelerate's trackers: the TensorBoard event files of a tiny run read back
with the values the run logged (loss and lr per step, scores and running metrics per task)."""

from __future__ import annotations

import json

import pytest

from slao.cli import main
from slao.config import build_config
from slao.errors import ConfigError

pytest.importorskip("tensorboard", reason="tensorboard is the 'tracking' extra")
SMALL = ["--model", "tiny-random", "--tasks", "bbc-topic,rt-sentiment", "--set", "data.train_per_task=8",
         "--set", "data.test_per_task=2", "--set", "train.batch_size=4", "--set", "eval.max_new_tokens=2"]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_events_read_back(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "slao", *SMALL, "--output", str(out), "--set", "log.trackers=tensorboard",
                 "--set", "log.project=cl"]) == 0
    got = scalars(out / "logs")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    offsets = {1: 0, 2: results["train_steps"][0]}
    expected_loss = [(offsets[r["task_index"]] + r["step"], r["loss"]) for r in log]
    assert [s for s, _ in got["train/loss"]] == [s for s, _ in expected_loss]
    assert [v for _, v in got["train/loss"]] == pytest.approx([v for _, v in expected_loss], rel=1e-6)
    assert [v for _, v in got["train/lr"]] == pytest.approx([r["lr"] for r in log])
    R = results["accuracy"]
    total = sum(results["train_steps"])
    assert got["eval/bbc-topic"] == [(offsets[2], pytest.approx(R[0][0])), (total, pytest.approx(R[1][0]))]
    assert got["eval/rt-sentiment"] == [(total, pytest.approx(R[1][1]))]
    assert got["metrics/aa"][-1] == (total, pytest.approx(results["metrics"]["aa"]))
    assert got["metrics/bwt"][-1] == (total, pytest.approx(results["metrics"]["bwt"]))
    assert got["metrics/forgetting"][-1] == (total, pytest.approx(results["metrics"]["forgetting"]))


def test_unknown_or_missing_tracker_is_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        build_config({"log": {"trackers": ["tensorbord"]}})
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    from slao.harness import check_trackers

    with pytest.raises(ConfigError, match=r"pip install 'slao\[tracking\]'"):
        check_trackers(["wandb"])
