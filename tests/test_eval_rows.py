"""eval.rows: only the rows of the accuracy matrix that the asked-for metrics need are scored; what is
not scored is null, and a metric that needs it is n/a, never a wrong number."""

from __future__ import annotations

import json

import pytest

from jsonl_tasks import write_jsonl_tasks
from slao.cli import main
from slao.config import build_config
from slao.errors import ConfigError
from slao.harness import rows_to_evaluate

TASKS = "alpha,beta,gamma"
FAST = ["--set", "eval.max_new_tokens=2", "--set", "train.lr=5e-3", "--set", "train.batch_size=4"]


def test_rows_to_evaluate():
    assert [rows_to_evaluate(i, 4, "all", False, False) for i in (1, 2, 4)] == [[0], [0, 1], [0, 1, 2, 3]]
    assert [rows_to_evaluate(i, 4, "diagonal-last", False, False) for i in (1, 3, 4)] == [[0], [2], [0, 1, 2, 3]]
    assert [rows_to_evaluate(i, 4, "last", False, False) for i in (1, 3, 4)] == [[], [], [0, 1, 2, 3]]
    # zero-shot on (FWT): the next task too, whatever the rows
    assert rows_to_evaluate(2, 4, "last", True, False) == [2]
    assert rows_to_evaluate(2, 4, "diagonal-last", True, False) == [1, 2]
    assert rows_to_evaluate(1, 4, "all", False, True) == [0, 1, 2, 3]  # multi-task: scored once, all tasks
    with pytest.raises(ConfigError, match="eval.rows"):
        build_config({"eval": {"rows": "some"}})


@pytest.mark.parametrize("rows", ["diagonal-last", "last"])
def test_partial_rows_leave_nulls_and_na_metrics(tmp_path, rows):
    data = write_jsonl_tasks(tmp_path / "data", TASKS.split(","), 8, 4, options=True)
    out = tmp_path / "run"
    code = main(["run", "--method", "seq-lora", "--model", "tiny-random", "--benchmark", "jsonl",
                 "--data-dir", str(data), "--tasks", TASKS, "--output", str(out), "--set", f"eval.rows={rows}",
                 *FAST])
    assert code == 0
    r = json.loads((out / "results.json").read_text())
    R, E = r["accuracy"], r["example_scores"]
    assert r["eval_rows"] == rows
    assert all(v is not None for v in R[-1])  # the final row is always scored
    for i in range(2):
        expected = [i] if rows == "diagonal-last" else []
        assert [j for j, v in enumerate(R[i]) if v is not None] == expected
        assert [j for j, c in enumerate(E[i]) if c is not None] == expected
    m = r["metrics"]
    assert m["aa"] == pytest.approx(sum(R[-1]) / 3)
    assert m["forgetting"] is None  # F reads every row
    if rows == "diagonal-last":
        assert m["bwt"] == pytest.approx(sum(R[-1][j] - R[j][j] for j in range(2)) / 2)
    else:
        assert m["bwt"] is None
    pred = json.loads((out / "predictions.json").read_text())
    assert set(pred) == set(TASKS.split(","))
