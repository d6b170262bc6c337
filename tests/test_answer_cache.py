"""The zero-shot answer cache of a comparison: the base model answers each seed's test prompts once, the
other methods of the grid read those answers back, and nothing is read that another base model, other
generation settings, other code or a half-written file produced."""

from __future__ import annotations

import json

import pytest

import slao.harness
from jsonl_tasks import write_jsonl_tasks
from slao.cli import main
from slao.config import build_config
from slao.evaluate import AnswerCache
from slao.launch import ZERO_SHOT_DIR
from slao.tasks import load_benchmark

TASKS = "alpha,beta,gamma"
SETTINGS = ["--set", "eval.max_new_tokens=2", "--set", "eval.zero_shot=true", "--set", "train.batch_size=4",
            "--set", "data.train_per_task=8", "--set", "data.test_per_task=4"]
CLEAN = {"slao": "test", "torch": "t", "transformers": "t", "peft": "t", "git_commit": "c0ffee", "git_dirty": False}


def _compare(data, out, methods, *extra):
    return main(["compare", "--methods", methods, "--seeds", "0", "--model", "tiny-random", "--benchmark", "jsonl",
                 "--data-dir", str(data), "--tasks", TASKS, "--output", str(out), *SETTINGS, *extra])


def _results(out, method):
    return json.loads((out / method / "seed-0" / "results.json").read_text())


@pytest.fixture
def data(tmp_path):
    return write_jsonl_tasks(tmp_path / "data", TASKS.split(","), 8, 4, options=False)


@pytest.fixture
def zero_shot_calls(monkeypatch):
    """The zero-shot generations each run makes (by task), with the code named as a clean commit."""
    calls: list[str] = []
    real = slao.harness.evaluate_task

    def counting(acc, model, tok, task, prompts, cfg, desc=""):
        if desc.startswith("zero-shot"):
            calls.append(task.name)
        return real(acc, model, tok, task, prompts, cfg, desc)

    monkeypatch.setattr(slao.harness, "evaluate_task", counting)
    monkeypatch.setattr(slao.harness, "versions", lambda: dict(CLEAN))
    return calls


def test_the_second_method_of_a_grid_reads_the_first_ones_answers(data, tmp_path, zero_shot_calls):
    out = tmp_path / "cmp"
    assert _compare(data, out, "slao,seq-lora") == 0
    first, second = _results(out, "slao"), _results(out, "seq-lora")
    assert zero_shot_calls == TASKS.split(",")  # generated once, by the first run
    assert first["zero_shot_reused"] == [] and second["zero_shot_reused"] == TASKS.split(",")
    assert second["zero_shot"] == first["zero_shot"] and second["metrics"]["fwt"] is not None
    entries = sorted((out / ZERO_SHOT_DIR).glob("*.json"))
    assert sorted(json.loads(p.read_text())["task"] for p in entries) == sorted(TASKS.split(","))
    # what is read back is scored against the run's own test answers: a planted entry of right answers
    cfg = build_config({"model": "tiny-random", "benchmark": "jsonl", "data_dir": str(data),
                        "tasks": TASKS.split(","), "data": {"train_per_task": 8, "test_per_task": 4}})
    right = {t.name: [x.answers[0] for x in t.test] for t in load_benchmark(cfg)}
    for path in entries:
        entry = json.loads(path.read_text())
        path.write_text(json.dumps({**entry, "answers": right[entry["task"]]}))
    assert _compare(data, out, "o-lora") == 0
    assert _results(out, "o-lora")["zero_shot"] == [100.0, 100.0, 100.0]
    assert zero_shot_calls == TASKS.split(",")


def test_other_generation_settings_or_a_broken_entry_generate_again(data, tmp_path, zero_shot_calls):
    out = tmp_path / "cmp"
    assert _compare(data, out, "slao") == 0
    assert _compare(data, out, "seq-lora", "--set", "eval.max_new_tokens=3") == 0
    assert zero_shot_calls == TASKS.split(",") * 2  # other settings: other entries
    assert len(list((out / ZERO_SHOT_DIR).glob("*.json"))) == 6
    for path in (out / ZERO_SHOT_DIR).glob("*.json"):
        path.write_text('{"task": "alpha", "answers": ["cut')  # as a full disk would leave it
    assert _compare(data, out, "o-lora") == 0
    assert zero_shot_calls == TASKS.split(",") * 3 and _results(out, "o-lora")["zero_shot_reused"] == []


def test_uncommitted_code_neither_reads_nor_writes_the_cache(data, tmp_path, zero_shot_calls, monkeypatch):
    monkeypatch.setattr(slao.harness, "versions", lambda: {**CLEAN, "git_dirty": True})
    out = tmp_path / "cmp"
    assert _compare(data, out, "slao,seq-lora") == 0
    assert zero_shot_calls == TASKS.split(",") * 2
    assert not (out / ZERO_SHOT_DIR).exists()


def test_an_entry_belongs_to_its_identity_and_prompts(tmp_path):
    cache = AnswerCache(tmp_path, {"model": "m", "eval": {"max_new_tokens": 2}})
    prompts = [[1, 2, 3], [4, 5]]
    assert cache.get(prompts) is None
    assert cache.put(prompts, ["a", "b"], "alpha") and cache.get(prompts) == ["a", "b"]
    assert cache.get([[1, 2, 3], [4, 6]]) is None  # one token of one prompt differs
    assert AnswerCache(tmp_path, {"model": "other", "eval": {"max_new_tokens": 2}}).get(prompts) is None
    (path,) = tmp_path.glob("*.json")
    path.write_text(json.dumps({"answers": ["a"]}))  # too few answers for the prompts
    assert cache.get(prompts) is None
    path.write_text(json.dumps(["a", "b"]))  # not an entry at all
    assert cache.get(prompts) is None
