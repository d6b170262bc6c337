"""Grids over task orders: the folder layout, order robustness (OPD, MOPD, AOPD and the AOPD noise alone
would give), and the tables' note when methods have run over different (order, seed) runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fake_runs import fake_results, order_results
from slao.cli import main
from slao.compare import aggregate, parse_orders, run_comparison
from slao.config import build_config
from slao.errors import ConfigError

METHODS = ["slao", "seq-lora"]


def test_parse_orders():
    assert parse_orders(None, "long") is None and parse_orders("4,5,6", "long") == [4, 5, 6]
    with pytest.raises(ConfigError, match="its orders: 4, 5, 6"):
        parse_orders("1,4", "long")
    with pytest.raises(ConfigError, match="has no order 1"):
        parse_orders("1", "jsonl")
    for bad in ("a", "4,4", ","):
        with pytest.raises(ConfigError):
            parse_orders(bad, "long")


def test_grid_over_orders_layout_and_order_robustness(tmp_path):
    cfg = build_config({"benchmark": "packaged"})
    calls = []
    finals = {1: {"bbc-topic": 80.0, "rt-sentiment": 60.0}, 2: {"bbc-topic": 70.0, "rt-sentiment": 66.0}}
    spread = {"slao": 1.0, "seq-lora": 2.0}

    def runner(run_cfg, folder):
        calls.append((run_cfg.method.name, run_cfg.order, run_cfg.seed, folder.relative_to(tmp_path).as_posix()))
        order = run_cfg.order
        tasks = ["bbc-topic", "rt-sentiment"] if order == 1 else ["rt-sentiment", "bbc-topic"]
        final = {t: v + spread[run_cfg.method.name] * (order - 1) for t, v in finals[order].items()}
        results = order_results(run_cfg.method.name, run_cfg.seed, order, tasks, final)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(results))
        return results

    comp = run_comparison(cfg, METHODS, [0, 1], tmp_path, echo=lambda *a: None, runner=runner, orders=[1, 2])
    assert ("slao", 2, 1, "slao/order-2/seed-1") in calls and len(calls) == 8
    assert comp["orders"] == [1, 2] and comp["runs_done"] == comp["runs_total"] == 8
    rob = comp["methods"]["slao"]["order_robustness"]
    # bbc-topic: 80 (order 1) vs 70 + 1 (order 2); rt-sentiment: 60 vs 66 + 1
    assert rob["opd"] == {"bbc-topic": pytest.approx(9.0), "rt-sentiment": pytest.approx(7.0)}
    assert rob["mopd"] == pytest.approx(9.0) and rob["aopd"] == pytest.approx(8.0)
    assert comp["methods"]["seq-lora"]["order_robustness"]["mopd"] == pytest.approx(8.0)
    md = (tmp_path / "comparison.md").read_text()
    assert "## Order robustness" in md and "| slao | 8.0 | n/a | n/a | 9.0 | n/a | bbc-topic (9.0) | n/a | 0, 1 |" in md
    assert len(comp["paired"]["units"]) == 4  # (order, seed) pairs
    # identical per-example scores for both methods: a zero-width interval at zero, no difference detected
    aa = comp["paired"]["pairs"]["slao vs seq-lora"]["aa"]
    assert aa["lo"] == aa["hi"] == 0.0 == aa["diff"] and not aa["separated"]
    assert "no difference detected" in md
    from slao.compare import load_comparison

    again, runs = load_comparison(tmp_path)
    assert len(runs["slao"]) == 4 and again["methods"]["slao"]["order_robustness"]["mopd"] == pytest.approx(9.0)
    # one order of such a grid (an ablation gathered on order 1): no spread over orders to show
    from slao.tables import comparison_markdown, comparison_table

    assert "Order robustness" not in comparison_markdown({**again, "orders": [1]})
    assert "order robustness" not in comparison_table({**again, "orders": [1]})
    # a grid over two orders whose second has not run: no spreads yet, no all-n/a section
    unrun = {**again, "methods": {m: {**e, "order_robustness": {"opd": {}, "mopd": None, "aopd": None}}
                                  for m, e in again["methods"].items()}}
    assert "Order robustness" not in comparison_markdown(unrun)
    assert "order robustness" not in comparison_table(unrun)
    # the header counts what it names: "order 1", "orders 1, 2", "seed 0"
    assert ", order 1;" in comparison_markdown({**again, "orders": [1]})
    assert ", orders 1, 2;" in md and "; seeds 0, 1 (" in md
    assert "; seed 0 (" in comparison_markdown({**again, "seeds": [0]})


def test_order_robustness_uses_only_the_seeds_every_order_has():
    from slao.compare import order_robustness

    tasks = ["a", "b"]
    order1 = [order_results("x", 0, 1, tasks, {"a": 80.0, "b": 60.0}),
              order_results("x", 1, 1, tasks, {"a": 40.0, "b": 20.0})]
    order2 = [order_results("x", 0, 2, tasks[::-1], {"a": 70.0, "b": 66.0})]
    rob = order_robustness({1: order1, 2: order2})
    # seed 1 has no order-2 run: it stays out, or its 40-point seed gap would count as order spread
    assert rob["seeds"] == [0] and rob["opd"] == {"a": pytest.approx(10.0), "b": pytest.approx(6.0)}
    assert rob["mopd"] == pytest.approx(10.0) and rob["aopd"] == pytest.approx(8.0)
    disjoint = order_robustness({1: order1[1:], 2: order2})
    assert disjoint["mopd"] is None and disjoint["seeds"] == []
    assert order_robustness({1: order1})["mopd"] is None


def test_orders_end_to_end_on_the_packaged_tasks(tmp_path, capsys):
    out = tmp_path / "orders"
    args = ["compare", "--methods", "slao,seq-lora", "--seeds", "0", "--orders", "1,2", "--model", "tiny-random",
            "--benchmark", "packaged", "--output", str(out), "--set", "data.train_per_task=8",
            "--set", "data.test_per_task=4", "--set", "eval.max_new_tokens=2", "--set", "data.max_prompt_tokens=96"]
    assert main(args) == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["orders"] == [1, 2] and comp["runs_done"] == 4
    for order, first in ((1, "bbc-topic"), (2, "word-polarity")):
        r = json.loads((out / "slao" / f"order-{order}" / "seed-0" / "results.json").read_text())
        assert r["order"] == order and r["tasks"][0] == first
    rob = comp["methods"]["slao"]["order_robustness"]
    assert set(rob["opd"]) == {"bbc-topic", "rt-sentiment", "rt-subjectivity", "word-polarity"}
    assert rob["mopd"] == max(rob["opd"].values())
    assert "## Order robustness" in (out / "comparison.md").read_text()
    assert main(["report", str(out)]) == 0
    assert (out / "figures" / "accuracy-slao-order-2.png").exists()


def test_order_robustness_says_whether_the_spread_is_above_noise():
    from slao.tables import comparison_markdown

    rng = np.random.default_rng(0)

    def run(method, seed, order, rate):  # rate[order][task]: each example right with that probability
        tasks = ["a", "b"] if order == 1 else ["b", "a"]
        final = [(rng.random(60) < rate[order][t]).astype(float).tolist() for t in tasks]
        R = [[100 * float(np.mean(final[0])), None], [100 * float(np.mean(x)) for x in final]]
        return {**fake_results(method, seed, R), "order": order, "tasks": tasks, "finished": True,
                "example_scores": [[final[0], None], final],
                "task_info": {t: {"test": 60, "metric": "exact", "test_sha256": t} for t in tasks}}

    moves = {1: {"a": 0.9, "b": 0.6}, 2: {"a": 0.3, "b": 0.6}}  # task a is forgotten when it comes first
    steady = {1: {"a": 0.7, "b": 0.6}, 2: {"a": 0.7, "b": 0.6}}
    runs = {m: [run(m, s, o, rates) for o in (1, 2) for s in (0, 1, 2)]
            for m, rates in (("moves", moves), ("steady", steady))}
    comp = aggregate(runs, {"orders": [1, 2], "seeds": [0, 1, 2]})
    rob = {m: comp["methods"][m]["order_robustness"] for m in runs}
    boot = rob["moves"]["aopd_bootstrap"]
    assert boot["aopd"] == pytest.approx(rob["moves"]["aopd"]) and boot["noise_95"] < boot["aopd"]
    assert boot["p"] < 0.05 and rob["steady"]["aopd_bootstrap"]["p"] >= 0.05
    md = comparison_markdown(comp)
    row = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| moves")
           or line.startswith("| steady")}
    assert f"| {boot['aopd']:.1f} | {boot['noise']:.1f} (95th pct {boot['noise_95']:.1f}) | yes (p " in row["moves"]
    assert "| not detected (p " in row["steady"] and "from noise alone" in md
    # the widest task (a, 60 points apart) is beyond the widest spread noise alone gives
    assert boot["mopd_p"] < 0.05 and f"| a ({boot['mopd']:.1f}) | yes (p " in row["moves"]
    assert rob["steady"]["aopd_bootstrap"]["mopd_p"] >= 0.05


def test_the_table_says_when_methods_have_run_over_different_runs():
    from slao.tables import comparison_markdown, comparison_table

    tasks, final = ["a", "b"], {"a": 75.0, "b": 75.0}
    x = [order_results("x", s, o, tasks, final) for o in (1, 2) for s in (0, 1)]
    y = [order_results("y", s, 1, tasks, final) for s in (0, 1)]
    z = [order_results("z", s, 1, tasks, final) for s in (0, 1)]
    comp = aggregate({"x": x, "y": y, "z": z}, {"orders": [1, 2], "seeds": [0, 1]})
    note = ("The methods' means are over different runs (x: orders 1, 2, seeds 0, 1; every other method: "
            "order 1, seeds 0, 1), so they are not like for like")
    assert note in comparison_markdown(comp) and note in comparison_table(comp)
    # order robustness: a row for x alone, the methods of one order named below it instead of rows of n/a
    robustness = comparison_markdown(comp).split("## Order robustness")[1].split("## Paired")[0]
    assert "| x | 0.0 |" in robustness and "| y |" not in robustness and "| z |" not in robustness
    assert "Not yet run under two orders with a shared seed: y, z." in robustness
    assert "Not yet run under two orders with a shared seed: y, z." in comparison_table(comp)
    assert comp["paired"]["pairs"]["x vs y"]["units"] == [[1, 0], [1, 1]]
    y.append(order_results("y", 0, 2, tasks, final))  # a lone cell is listed as it is
    uneven = comparison_markdown(aggregate({"x": x, "y": y}, {"orders": [1, 2], "seeds": [0, 1]}))
    assert "(y: order 1 seed 0, order 1 seed 1, order 2 seed 0; x: orders 1, 2, seeds 0, 1)" in uneven
    alike = aggregate({"y": y[:2], "z": z}, {"orders": [1, 2], "seeds": [0, 1]})
    assert "not like for like" not in comparison_markdown(alike)
