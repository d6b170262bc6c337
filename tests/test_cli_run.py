"""End to end through the CLI's entry point on tiny-random: the run folder, the exported adapter,
constant adapter state, and clear errors (exit status 2, no traceback) for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from peft import PeftModel

from jsonl_tasks import write_jsonl_tasks
from slao.cli import main
from slao.config import EvalConfig
from slao.data import load_tasks
from slao.encoding import TaskEncoder
from slao.evaluate import generate
from slao.models import load_model

TASKS = "alpha,beta,gamma,delta"
FAST = ["--set", "eval.max_new_tokens=4", "--set", "train.lr=5e-3", "--set", "train.batch_size=4"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):

    root = tmp_path_factory.mktemp("run")
    data = _write_tasks(root / "data")
    out = root / "run"
    code = main(["run", "--method", "slao", "--model", "tiny-random", "--benchmark", "jsonl",
                 "--data-dir", str(data), "--tasks", TASKS, "--output", str(out), "--set", "eval.zero_shot=true",
                 *FAST])
    assert code == 0
    return data, out


def _write_tasks(folder):
    return write_jsonl_tasks(folder, TASKS.split(","), 12, 6, options=True)


def test_run_folder_has_everything(finished_run):
    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    T = 4
    assert results["method"] == "slao" and results["model"] == "tiny-random(seed=0)"
    assert results["benchmark"] == "jsonl" and results["seed"] == 0 and results["finished"] is True
    assert results["tasks"] == TASKS.split(",")
    R = results["accuracy"]
    assert len(R) == T and all(len(row) == T for row in R)
    for i, row in enumerate(R):
        # with zero-shot scoring on, the next (not yet learned) task is scored too, for forward transfer
        seen = min(i + 2, T)
        assert all(v is not None and 0 <= v <= 100 for v in row[:seen])
        assert all(v is None for v in row[seen:])
    assert len(results["zero_shot"]) == T
    assert set(results["metrics"]) == {"aa", "bwt", "forgetting", "fwt", "la"}
    fwt = sum(R[j - 1][j] - results["zero_shot"][j] for j in range(1, T)) / (T - 1)
    assert results["metrics"]["fwt"] == pytest.approx(fwt)
    assert results["metrics"]["aa"] == pytest.approx(sum(R[-1]) / T)
    assert all(results["versions"][k] for k in ("slao", "torch", "transformers", "peft"))
    assert len(results["train_seconds"]) == T and len(results["eval_seconds"]) == T
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"]["name"] == "slao" and cfg["train"]["lr"] == 5e-3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["task"] for r in log if r["step"] == r["steps"]] == TASKS.split(",")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_adapter_state_bytes_constant(finished_run):
    _, out = finished_run
    sizes = json.loads((out / "results.json").read_text())["adapter_state_bytes"]
    # merged + last fine-tuned LoRA on q_proj and v_proj of 2 layers, r=8, fp32
    shapes = [(64, 64), (32, 64)]  # (out, in) of q_proj, v_proj in the tiny Llama
    expected = 2 * 2 * sum(8 * i + o * 8 for o, i in shapes) * 4
    assert sizes == [expected] * 4


def test_exported_adapter_reloads_with_plain_peft(finished_run):
    data, out = finished_run
    base, tok = load_model("tiny-random", seed=0)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    tasks = load_tasks("jsonl", TASKS.split(","), data, 0)
    predictions = json.loads((out / "predictions.json").read_text())
    for task in tasks:
        enc = TaskEncoder(tok, task, 256)
        answers = generate(model, tok, [enc.prompt(x) for x in task.test], EvalConfig(max_new_tokens=4), show=False)
        assert answers == [p["prediction"] for p in predictions[task.name]]


def test_finished_run_is_not_run_again(finished_run, capsys):
    data, out = finished_run
    before = (out / "results.json").read_text()
    code = main(["run", "--method", "slao", "--model", "tiny-random", "--benchmark", "jsonl", "--data-dir",
                 str(data), "--tasks", TASKS, "--output", str(out), "--set", "eval.zero_shot=true", *FAST])
    assert code == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "results.json").read_text() == before


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"input": "x", "output": "red"}\n{"input": "y", "output": \n', "line 2"),
        ('{"input": "x"}\n', "output"),
        ('{"input": "x", "output": "purple"}\n', "purple"),
        ("", "empty"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, content, problem):
    data = _write_tasks(tmp_path / "data")
    (data / "alpha" / "train.jsonl").write_text(content)
    code = main(["run", "--model", "tiny-random", "--benchmark", "jsonl", "--data-dir", str(data),
                 "--tasks", TASKS, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.jsonl" in err and problem in err
    assert "Traceback" not in err


def test_missing_split_names_the_file(tmp_path, capsys):
    data = _write_tasks(tmp_path / "data")
    (data / "beta" / "test.jsonl").unlink()
    code = main(["run", "--benchmark", "jsonl", "--data-dir", str(data), "--tasks", TASKS,
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert str(data / "beta" / "test.jsonl") in capsys.readouterr().err


def test_bad_settings_exit_2(tmp_path, capsys):
    assert main(["run", "--method", "nope", "--output", str(tmp_path / "o")]) == 2
    assert "valid methods" in capsys.readouterr().err
    assert main(["run", "--set", "train.lr=abc", "--output", str(tmp_path / "o")]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["run", "--set", "train.nope=1", "--output", str(tmp_path / "o")]) == 2
    assert "unknown setting train.nope" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slao", "run", "--benchmark", "jsonl", "--data-dir",
                           str(tmp_path / "missing"), "--tasks", "a", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "slao: error:" in proc.stderr


def test_slao_eval_scores_the_exported_adapter_like_the_run(finished_run, tmp_path):
    data, out = finished_run
    scores_file = tmp_path / "scores.json"
    code = main(["eval", "--adapter", str(out / "adapter"), "--model", "tiny-random", "--benchmark", "jsonl",
                 "--data-dir", str(data), "--tasks", TASKS, "--output", str(scores_file),
                 "--set", "eval.max_new_tokens=4"])
    assert code == 0
    scores = json.loads(scores_file.read_text())["scores"]
    final_row = json.loads((out / "results.json").read_text())["accuracy"][-1]
    assert [scores[name] for name in TASKS.split(",")] == final_row


def test_slao_eval_refuses_an_adapter_of_another_base_model(finished_run, capsys):
    data, out = finished_run
    code = main(["eval", "--adapter", str(out / "adapter"), "--model", "tiny-random", "--seed", "1",
                 "--benchmark", "jsonl", "--data-dir", str(data), "--tasks", TASKS])
    assert code == 2
    assert "tiny-random(seed=0)" in capsys.readouterr().err
