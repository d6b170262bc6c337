"""slao compare: the folder layout, comparison.json recomputed from the runs' results.json, resuming
without rerunning, up-front validation of method names, and the noise verdicts on hand-made inputs."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from jsonl_tasks import write_jsonl_tasks
from slao import compare
from slao.cli import main
from slao.compare import (
    aggregate,
    binomial_half_width,
    compare_pair,
    mean_matrix,
    noise_flags,
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
        train = [sum(r["train_seconds"]) for r in runs]
        assert entry["train_seconds"]["mean"] == pytest.approx(statistics.mean(train), abs=1e-3)
        evals = [sum(r["eval_seconds"]) for r in runs]
        assert entry["eval_seconds"]["values"] == pytest.approx(evals, abs=1e-3)
    # the same config except the method and the seed: same tasks and samples
    cfgs = [(out / m / f"seed-{s}" / "config.yaml").read_text() for m in METHODS for s in SEEDS]
    assert cfgs[0] != cfgs[1]
    assert cfgs[0].replace("seed: 0", "seed: 1") == cfgs[1]
    assert cfgs[0].replace("name: slao", "name: seq-lora") == cfgs[2]
    md = (out / "comparison.md").read_text()
    for method in METHODS:
        assert f"| {method} | 2 |" in md
    assert "within noise" in md or "beyond noise" in md
    assert "mean ± 2·std/√n" in md


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
    for name in ("accuracy-slao.png", "accuracy-seq-lora.png", "seen-average.png", "adapter-state.png"):
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


def _fake_results(method, seed, R, sizes=(100, 100), test=50):
    from slao.metrics import all_metrics

    return {"method": method, "seed": seed, "tasks": ["a", "b"], "accuracy": R,
            "metrics": all_metrics(R), "adapter_state_bytes": list(sizes), "train_seconds": [1.0, 2.0],
            "eval_seconds": [0.5, 0.25], "task_info": {"a": {"test": test}, "b": {"test": test}}}


def test_interrupted_comparison_keeps_finished_runs(tmp_path):
    calls = []

    def runner(cfg, folder):
        calls.append((cfg.method.name, cfg.seed, folder.name))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _fake_results(cfg.method.name, cfg.seed, [[80.0, None], [70.0, 90.0]])

    with pytest.raises(KeyboardInterrupt):
        run_comparison(build_config(), METHODS, [0, 1], tmp_path, echo=lambda *a: None, runner=runner)
    assert calls == [("slao", 0, "seed-0"), ("seq-lora", 0, "seed-0")]
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert comp["runs_done"] == 1 and comp["runs_total"] == 4
    assert comp["methods"]["slao"]["aa"]["values"] == [80.0] and comp["methods"]["seq-lora"]["seeds"] == []


def test_aggregate_pure():
    runs = {"x": [_fake_results("x", 0, [[80.0, None], [70.0, 90.0]], sizes=(100, 300)),
                  _fake_results("x", 1, [[60.0, None], [60.0, 70.0]], sizes=(100, 300))]}
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


def _entry(aa, std=None, n=1, bwt=None, forgetting=None, test=64, tasks=1):
    def stat(m):
        return {"mean": m, "std": std if m is not None else None, "n": n if m is not None else 0}

    return {"aa": stat(aa), "bwt": stat(bwt), "forgetting": stat(forgetting), "fwt": stat(None),
            "test_examples": test * tasks, "test_per_task_mean": test}


def test_binomial_half_width_matches_the_trial():
    # 64 test examples at 50%: about 12 points either side (the trial's interval)
    assert binomial_half_width(0.5, 64) == pytest.approx(12.25)
    assert binomial_half_width(0.0, 64) == 0.0 and binomial_half_width(0.5, 0) == math.inf


def test_noise_one_seed_uses_binomial_width():
    best, close, far = _entry(60.0), _entry(52.0), _entry(40.0)
    near = compare_pair("aa", best, close)  # 8 points < 1.96*sqrt(.56*.44/64)*100 = 12.2
    assert near["rule"] == "binomial" and near["within_noise"] and near["diff"] == -8.0
    assert near["margin"] == pytest.approx(binomial_half_width(0.56, 64))
    assert not compare_pair("aa", best, far)["within_noise"]
    # AA uses all test examples together: with 4 tasks the same 8 points are beyond noise
    assert not compare_pair("aa", _entry(60.0, tasks=4), _entry(52.0, tasks=4))["within_noise"]


def test_noise_with_seeds_uses_interval_overlap():
    # a large test set, so that the seeds' spread is the larger margin
    a, b = _entry(60.0, std=4.0, n=4, test=10000), _entry(55.0, std=2.0, n=4, test=10000)
    v = compare_pair("aa", a, b)  # margin 2*4/2 + 2*2/2 = 6 >= 5
    assert v["rule"] == "seeds" and v["margin"] == pytest.approx(6.0) and v["within_noise"]
    assert not compare_pair("aa", a, _entry(53.0, std=2.0, n=4, test=10000))["within_noise"]


def test_noise_small_seed_spread_does_not_hide_test_set_noise():
    # two seeds that happen to agree (std 0) on 64 examples: 5 points are still within the binomial width
    v = compare_pair("aa", _entry(60.0, std=0.0, n=2), _entry(55.0, std=0.0, n=2))
    assert v["rule"] == "binomial" and v["within_noise"] and v["margin"] == pytest.approx(12.1, abs=0.1)


def test_noise_flags_pick_the_best_per_metric():
    methods = {"slao": _entry(60.0, bwt=-2.0, forgetting=3.0), "seq": _entry(45.0, bwt=-0.5, forgetting=9.0),
               "mtl": _entry(62.0)}
    flags = noise_flags(methods)
    assert flags["aa"]["best"] == "mtl" and flags["aa"]["others"]["slao"]["within_noise"]
    assert not flags["aa"]["others"]["seq"]["within_noise"]
    assert flags["bwt"]["best"] == "seq" and set(flags["bwt"]["others"]) == {"slao"}  # mtl has no BWT
    assert flags["forgetting"]["best"] == "slao" and flags["forgetting"]["higher_is_better"] is False
    assert "fwt" not in flags
    text = "\n".join(compare.noise_lines(flags))
    assert "- AA: mtl is highest (62.0); slao -2.0 (within noise" in text and "seq -17.0 (beyond noise" in text
    tie = noise_flags({"a": _entry(0.0), "b": _entry(0.0)})
    assert compare.noise_lines(tie)[0] == "- AA: all methods score 0.0; nothing to rank."
