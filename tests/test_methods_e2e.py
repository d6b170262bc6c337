"""Every registered method end to end through the CLI's entry point on tiny-random and the packaged
tasks: results.json's shape, the exported adapter reloading to the run's predictions, the adapter state
size, and each method's invariants asserted on the tensors the harness handed it."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import slao.harness
from slao.cli import main
from slao.config import build_config, read_yaml
from slao.data import load_tasks
from slao.encoding import TaskEncoder
from slao.evaluate import generate
from slao.methods import METHODS
from slao.methods.magmax import max_magnitude_merge
from slao.methods.slao import orthogonal_init
from slao.models import load_model
from slao.tasks import benchmark_source, resolve_task_names

FAST = ["--model", "tiny-random", "--benchmark", "packaged", "--set", "data.train_per_task=16",
        "--set", "data.test_per_task=8", "--set", "data.max_prompt_tokens=64", "--set", "eval.max_new_tokens=4",
        "--set", "train.lr=0.02"]
GROWING = {"inc-lora", "o-lora", "per-task-lora"}
FLAT = {"slao", "seq-lora", "magmax"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads make the tiny model's steps up to 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lora_of(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The LoRA in a PEFT model as layer name -> (A, B)."""
    params = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    out = {}
    for name, A in params.items():
        if ".lora_A." in name:
            layer = name.removeprefix("base_model.model.").split(".lora_A.")[0]
            out[layer] = (A, params[name.replace(".lora_A.", ".lora_B.")])
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in a)


def run_method(tmp_path: Path, monkeypatch, name: str, *extra: str) -> tuple[Path, dict]:
    """Run ``name`` through ``slao.cli.main``, recording what its hooks saw, the LoRA each task's training
    started from (``start``, read from the adapter when the harness calls train_task) and the LoRA each
    evaluation used (``eval``: task name and the weights in the model)."""
    seen = {"init": [], "start": [], "trained": [], "deployed": [], "eval": []}
    cls = METHODS[name]
    init_lora, after_task = cls.init_lora, cls.after_task

    def rec_init(self, i, default, data=None):
        out = init_lora(self, i, default, data)
        seen["init"].append({n: (A.clone(), B.clone()) for n, (A, B) in out.items()})
        return out

    def rec_after(self, i, trained, data=None):
        seen["trained"].append({n: (A.clone(), B.clone()) for n, (A, B) in trained.items()})
        out = after_task(self, i, trained, data)
        seen["deployed"].append({n: (A.clone(), B.clone()) for n, (A, B) in out.items()})
        return out

    def rec_eval(acc, model, tok, task, *args, **kw):
        seen["eval"].append((task.name, lora_of(model)))
        return evaluate_task(acc, model, tok, task, *args, **kw)

    def rec_train(acc, adapter, *args, **kw):
        seen["start"].append(adapter.get())
        return train_task(acc, adapter, *args, **kw)

    evaluate_task, train_task = slao.harness.evaluate_task, slao.harness.train_task
    monkeypatch.setattr(slao.harness, "train_task", rec_train)
    monkeypatch.setattr(cls, "init_lora", rec_init)
    monkeypatch.setattr(cls, "after_task", rec_after)
    monkeypatch.setattr(slao.harness, "evaluate_task", rec_eval)
    out = tmp_path / name
    assert main(["run", "--method", name, "--output", str(out), *FAST, *extra]) == 0
    return out, seen


@functools.cache
def run_tasks(benchmark: str, names: tuple[str, ...], seed: int, train_n: int, test_n: int):
    """The run's tasks, loaded as the harness does (cached: the packaged tasks take a second to read)."""
    return load_tasks(benchmark_source(benchmark), list(names), None, seed, train_n, test_n)


def reload_predictions(run: Path, folder: Path, task_names: list[str]) -> tuple[dict[str, list[str]], object]:
    """Greedy answers of plain ``PeftModel.from_pretrained(base, folder)`` to the run's test prompts."""
    cfg = build_config(read_yaml(run / "config.yaml"))
    tasks = run_tasks(cfg.benchmark, tuple(resolve_task_names(cfg)), cfg.seed, cfg.data.train_per_task,
                      cfg.data.test_per_task)
    base, tok = load_model("tiny-random", seed=cfg.seed)
    model = PeftModel.from_pretrained(base, str(folder))
    answers = {}
    for task in tasks:
        if task.name in task_names:
            encoder = TaskEncoder(tok, task, cfg.data.max_prompt_tokens)
            answers[task.name] = generate(model, tok, [encoder.prompt(x) for x in task.test], cfg.eval, show=False)
    return answers, model


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_end_to_end(tmp_path, monkeypatch, name):
    run, seen = run_method(tmp_path, monkeypatch, name)
    results = json.loads((run / "results.json").read_text())
    names, T = results["tasks"], 4
    multi = METHODS[name].multi_task
    R = results["accuracy"]
    assert results["finished"] and results["method"] == name and len(names) == T
    assert len(R) == T and all(len(row) == T for row in R)
    for i, row in enumerate(R):
        for j, v in enumerate(row):
            evaluated = i == T - 1 if multi else j <= i  # multi-task: one evaluation, at the end
            assert (v is not None) == evaluated, (i, j, v)
            assert v is None or 0 <= v <= 100
    assert set(results["metrics"]) == {"aa", "bwt", "forgetting", "fwt", "la"}
    assert results["metrics"]["aa"] == pytest.approx(sum(R[-1]) / T)
    sizes = [s for s in results["adapter_state_bytes"] if s is not None]
    assert len(sizes) == (1 if multi else T) and sizes[0] > 0
    if name in GROWING:
        assert sizes == [sizes[0] * k for k in range(1, T + 1)]  # exactly one LoRA more per task
    if name in FLAT:
        assert len(set(sizes)) == 1
    if METHODS[name].grows:  # every method is held to the flag the tables print
        assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    elif not multi:
        assert len(set(sizes)) == 1, sizes

    # The exported adapter(s) reload with plain PEFT to the run's final weights and predictions.
    predictions = json.loads((run / "predictions.json").read_text())
    final_eval = dict(seen["eval"][-T:])  # the last row: task name -> the LoRA it was scored with
    folders = {n: run / "adapter" / n for n in names} if name == "per-task-lora" else {"": run / "adapter"}
    for sub, folder in folders.items():
        wanted = [sub] if sub else names
        answers, model = reload_predictions(run, folder, wanted)
        for task in wanted:
            assert answers[task] == [p["prediction"] for p in predictions[task]], task
            assert same(lora_of(model), final_eval[task]), task
        ids = torch.arange(3, 40).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            with model.disable_adapter():
                base_logits = model(input_ids=ids).logits
        # The adapter is not a no-op, so equal predictions above do say the right weights were loaded.
        assert (logits - base_logits).abs().max() > 1e-4
    if name == "per-task-lora":  # its root holds the last task's LoRA
        _, model = reload_predictions(run, run / "adapter", [])
        assert same(lora_of(model), seen["trained"][-1])

    check_invariants(name, seen, names)


def check_invariants(name: str, seen: dict, names: list[str]) -> None:
    trained, init = seen["trained"], seen["init"]
    if name in ("inc-lora", "o-lora"):
        r = trained[0][next(iter(trained[0]))][0].shape[0]
        for i in range(1, len(trained)):
            for layer, (A, B) in trained[i].items():
                old_A, old_B = trained[i - 1][layer]
                assert torch.equal(A[: i * r], old_A) and torch.equal(B[:, : i * r], old_B)  # bit-identical
                assert not torch.equal(A[i * r :], init[i][layer][0][i * r :])  # while the new slice trained
    if name == "per-task-lora":
        for task_name, used in seen["eval"]:
            j = names.index(task_name)
            assert same(used, trained[j])
            assert all(not same(used, trained[k]) for k in range(len(trained)) if k != j)
    if name in ("seq-lora", "magmax"):
        assert all(same(init[i], trained[i - 1]) for i in range(1, len(trained)))
    if name == "magmax":
        for layer in trained[-1]:
            expected = None
            for t in trained:
                expected = max_magnitude_merge(expected, t[layer][1] @ t[layer][0])
            A, B = seen["deployed"][-1][layer]
            assert torch.allclose(B @ A, 0.5 * expected, atol=1e-5)  # method.magmax.scale's default
    if name == "mtl":
        assert len(trained) == 1 and len(seen["eval"]) == len(names)
    if name == "slao":
        check_slao(seen, names)


def check_slao(seen: dict, names: list[str]) -> None:
    """SLAO (design.md §2) on the tensors the harness used: task i trained from orthogonal_init(A_ft,i-1)
    and B_ft,i-1; after task i the merged LoRA (A_ft,i; B_m,i-1 + (B_ft,i - B_m,i-1) / sqrt(i)) is what
    every task was scored with."""
    trained, start, T = seen["trained"], seen["start"], len(names)
    assert len(start) == len(trained) == T
    assert all(same(start[i], seen["init"][i]) for i in range(T))  # the harness trained from init_lora's LoRA
    assert all(torch.equal(B, torch.zeros_like(B)) for _, B in start[0].values())  # task 1: PEFT's init
    for i in range(1, T):
        expected = {n: (orthogonal_init(A), B) for n, (A, B) in trained[i - 1].items()}
        assert same(start[i], expected), f"task {i + 1} did not start from the last fine-tuned LoRA"
    merged: dict = {}
    evals = iter(seen["eval"])
    for i, ft in enumerate(trained, 1):
        merged = {n: (A.clone(), B.clone() if i == 1 else merged[n][1] + (B - merged[n][1]) / math.sqrt(i))
                  for n, (A, B) in ft.items()}
        for j in range(i):  # row i scores tasks 1..i, in order
            task, used = next(evals)
            assert task == names[j]
            for n, (A, B) in used.items():
                assert torch.equal(A, merged[n][0]), (i, task, n)
                assert torch.allclose(B, merged[n][1], rtol=0, atol=1e-6), (i, task, n)
            if i > 1:  # the merged LoRA, not the last fine-tuned one
                assert not same(used, ft), (i, task)
    assert next(evals, None) is None


@pytest.mark.parametrize("train", ["a", "b"])
def test_slao_train_one_factor_leaves_the_other_at_its_init(tmp_path, monkeypatch, train):
    """train=a|b: task 1 trains both factors (ordinary LoRA: B starts at zero, so a frozen B would leave A
    no gradient); from task 2 on the named factor moves and the other stays exactly at its init."""
    _, seen = run_method(tmp_path, monkeypatch, "slao", "--tasks", "bbc-topic,rt-sentiment,rt-subjectivity",
                         "--set", f"method.slao.train={train}")
    moves, kept = (0, 1) if train == "a" else (1, 0)  # factor index: 0 = A, 1 = B
    assert len(seen["trained"]) == 3
    for i, (init, trained) in enumerate(zip(seen["init"], seen["trained"], strict=True), 1):
        for layer in trained:
            if i == 1:
                assert not torch.equal(trained[layer][0], init[layer][0]), layer
                assert not torch.equal(trained[layer][1], init[layer][1]), layer
                assert trained[layer][1].abs().max() > 0  # B left zero, so A has a gradient later
            else:
                assert not torch.equal(trained[layer][moves], init[layer][moves]), (i, layer)
                assert torch.equal(trained[layer][kept], init[layer][kept]), (i, layer)
