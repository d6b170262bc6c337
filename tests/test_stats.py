"""Paired statistics on synthetic per-example results whose differences are known (slao.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from slao import stats


def _matrix(rng, T: int, n: int, p: float, full: bool = True):
    """Per-example 0/1 scores: row i holds tasks 0..i (every row when ``full``), each n examples."""
    return [[list((rng.random(n) < p).astype(float)) if (j <= i or not full) else None for j in range(T)]
            for i in range(T)]


def _shift(scores, k: int):
    """The same results with the first k wrong examples of every task in the final row made right."""
    out = [[None if c is None else list(c) for c in row] for row in scores]
    for cell in out[-1]:
        wrong = [e for e, v in enumerate(cell) if v == 0.0][:k]
        for e in wrong:
            cell[e] = 1.0
    return out


def _boot(method_scores, units, replicates=1000):
    return stats.bootstrap_metrics(method_scores, {u: "o" for u in units}, replicates=replicates, seed=3)


def test_identical_inputs_give_exactly_zero_width_at_zero():
    rng = np.random.default_rng(0)
    s = {u: _matrix(rng, 3, 30, 0.6) for u in (0, 1)}
    boot = _boot({"x": s, "y": s}, [0, 1])
    for key in ("aa", "bwt", "forgetting"):
        iv = stats.paired_interval(boot["x"][key], boot["y"][key])
        assert iv["diff"] == iv["lo"] == iv["hi"] == 0.0 and iv["se"] == 0.0 and not iv["separated"]


def test_known_difference_is_estimated_exactly_and_covered():
    rng = np.random.default_rng(1)
    T, n, k = 4, 50, 5  # 5 more right answers of 50 on every task: AA higher by exactly 10 points
    y = {u: _matrix(rng, T, n, 0.5) for u in (0, 1, 2)}
    x = {u: _shift(s, k) for u, s in y.items()}
    boot = _boot({"x": x, "y": y}, [0, 1, 2])
    aa = stats.paired_interval(boot["x"]["aa"], boot["y"]["aa"])
    assert aa["diff"] == pytest.approx(100.0 * k / n)
    assert aa["lo"] <= 10.0 <= aa["hi"] and aa["separated"] and aa["lo"] > 0
    # the earlier tasks' final scores rose by 10, their diagonal did not: BWT up by 10, F down by 10 at most
    bwt = stats.paired_interval(boot["x"]["bwt"], boot["y"]["bwt"])
    assert bwt["diff"] == pytest.approx(10.0) and bwt["lo"] <= 10.0 <= bwt["hi"]
    # paired: the shift is the same in every replicate for AA (only which examples flip could vary)
    assert aa["hi"] - aa["lo"] < 6.0


def test_no_difference_is_not_called_a_difference():
    # two methods drawn from the same distribution: the interval covers zero and the verdict says so
    rng = np.random.default_rng(2)
    x = {u: _matrix(rng, 3, 40, 0.6) for u in (0, 1)}
    y = {u: _matrix(rng, 3, 40, 0.6) for u in (0, 1)}
    boot = _boot({"x": x, "y": y}, [0, 1])
    aa = stats.paired_interval(boot["x"]["aa"], boot["y"]["aa"])
    assert aa["lo"] <= 0.0 <= aa["hi"] and not aa["separated"]
    assert aa["detectable"] == pytest.approx(stats.DETECT_FACTOR * aa["se"]) and aa["detectable"] > 0


def test_interval_coverage_over_repeated_experiments():
    # 60 independent experiments with a true AA difference of 8 points per example draw: the 95% interval
    # should cover the truth in most of them (a loose bound: the bootstrap over seeds is conservative)
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(60):
        ys = {u: [[list((rng.random(40) < 0.5).astype(float))]] for u in (0, 1)}
        xs = {u: [[list((rng.random(40) < 0.58).astype(float))]] for u in (0, 1)}
        boot = _boot({"x": xs, "y": ys}, [0, 1], replicates=300)
        iv = stats.paired_interval(boot["x"]["aa"], boot["y"]["aa"])
        covered += iv["lo"] <= 8.0 <= iv["hi"]
    assert covered >= 52


def test_strata_average_orders_and_missing_rows_are_not_invented():
    rng = np.random.default_rng(4)
    s = _matrix(rng, 3, 20, 0.5)
    diag_last = [[c if (i == j or i == 2) else None for j, c in enumerate(row)] for i, row in enumerate(s)]
    boot = stats.bootstrap_metrics({"x": {("a", 0): diag_last, ("b", 0): diag_last}},
                                   {("a", 0): "a", ("b", 0): "b"}, replicates=50)
    assert np.isnan(boot["x"]["forgetting"]).all()  # F needs every row: n/a, never a number
    assert not np.isnan(boot["x"]["bwt"]).any() and not np.isnan(boot["x"]["aa"]).any()
    assert stats.paired_interval(boot["x"]["forgetting"], boot["x"]["forgetting"]) is None


def test_different_example_counts_cannot_be_paired():
    a = [[[1.0, 0.0, 1.0]]]
    b = [[[1.0, 0.0]]]
    with pytest.raises(ValueError, match="same examples"):
        stats.bootstrap_metrics({"x": {0: a}, "y": {0: b}}, {0: "o"}, replicates=10)


def test_mcnemar_exact_values():
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(4, 4) == 1.0
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert stats.discordant([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == (2, 1)


def _finals(rng, p_by_order, seeds=(0, 1, 2), tasks=("a", "b", "c", "d"), n=48):
    """finals[order][seed][task]: 0/1 example scores drawn at each order's rate."""
    return {o: {s: {t: (rng.random(n) < p).astype(float).tolist() for t in tasks} for s in seeds}
            for o, p in p_by_order.items()}


def test_order_spread_of_identical_orders_is_zero_and_not_called_a_difference():
    rng = np.random.default_rng(1)
    one = _finals(rng, {1: 0.5})[1]
    boot = stats.order_spread_bootstrap({1: one, 2: one}, replicates=300)
    assert boot["aopd"] == 0.0 and boot["p"] == 1.0 and boot["mopd"] == 0.0 and boot["mopd_p"] == 1.0
    assert boot["mopd_noise"] >= boot["noise"]  # the widest of four noisy spreads is at least their mean
    assert boot["noise"] > 2.0  # the orders' own noise, not zero
    assert stats.order_spread_bootstrap({1: one}) is None


def test_the_noise_floor_is_the_spread_of_two_noisy_means():
    # one seed, one task, n examples per order: the spread of two independent means has mean
    # sqrt(2/pi) * sqrt(var1/n + var2/n)
    rng = np.random.default_rng(2)
    finals = _finals(rng, {1: 0.3, 2: 0.6}, seeds=(0,), tasks=("a",), n=200)
    boot = stats.order_spread_bootstrap(finals, replicates=4000)
    p1, p2 = (np.mean(finals[o][0]["a"]) for o in (1, 2))
    expected = 100 * np.sqrt(2 / np.pi) * np.sqrt(p1 * (1 - p1) / 200 + p2 * (1 - p2) / 200)
    assert boot["noise"] == pytest.approx(expected, rel=0.1)
    assert boot["aopd"] == pytest.approx(100 * abs(p2 - p1))
    assert boot["noise"] < boot["noise_95"] < boot["aopd"]
    # one task: the widest spread is the spread, for the data and for the null
    assert (boot["mopd"], boot["mopd_noise"], boot["mopd_p"]) == (boot["aopd"], boot["noise"], boot["p"])
    assert boot["p"] < 0.01  # 30 points apart on 200 examples each: the orders differ


def test_order_spread_from_noise_alone_is_rarely_called_a_difference():
    # with several seeds the floor counts test-set noise at both levels (as the paired bootstrap does), so it
    # errs high: at a true 5% rate 8 or more calls of 60 would have probability below 1%; this floor makes
    # fewer. Its power is checked beside it.
    rng = np.random.default_rng(3)
    called = [stats.order_spread_bootstrap(_finals(rng, {1: 0.5, 2: 0.5}), replicates=400, seed=k)["p"] < 0.05
              for k in range(60)]
    assert sum(called) <= 8
    shifted = [stats.order_spread_bootstrap(_finals(rng, {1: 0.4, 2: 0.6}), replicates=400, seed=k)["p"] < 0.05
               for k in range(10)]
    assert sum(shifted) >= 9  # 20 points apart on every task: found nearly always


def test_t_quantile_matches_the_printed_table():
    # Student's t, two-sided 95% and one-sided 80% points (any statistics table)
    for df, p, value in [(1, 0.975, 12.706), (2, 0.975, 4.303), (4, 0.975, 2.776), (30, 0.975, 2.042),
                         (2, 0.8, 1.061), (4, 0.8, 0.941)]:
        assert stats.t_quantile(p, df) == pytest.approx(value, abs=1e-3)
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_the_interval_over_runs_is_the_pooled_t_interval():
    # order 1's runs differ by 1, 3, 2 and order 2's by 4, 6, 5: means 2 and 5, estimate 3.5; residuals
    # -1, 1, 0 twice: pooled variance 4 / (6 - 2) = 1, standard error sqrt(1/3 + 1/3) / 2
    diffs = {(1, 0): 1.0, (1, 1): 3.0, (1, 2): 2.0, (2, 0): 4.0, (2, 1): 6.0, (2, 2): 5.0}
    iv = stats.runs_interval(diffs, {u: u[0] for u in diffs})
    se = np.sqrt(2 / 3) / 2
    assert iv["diff"] == pytest.approx(3.5) and iv["df"] == 4 and iv["se"] == pytest.approx(se)
    assert (iv["lo"], iv["hi"]) == pytest.approx((3.5 - 2.7764 * se, 3.5 + 2.7764 * se), abs=1e-3)
    # one run per order says nothing of the runs' spread; an undefined difference gives no interval
    assert stats.runs_interval({(1, 0): 1.0, (2, 0): 2.0}, {(1, 0): 1, (2, 0): 2}) is None
    assert stats.runs_interval({**diffs, (1, 2): None}, {u: u[0] for u in diffs}) is None


def test_a_difference_is_called_only_where_the_bootstrap_and_the_runs_both_clear_zero():
    rng = np.random.default_rng(6)
    x = np.concatenate([[5.0], rng.normal(5.0, 1.0, 999)])  # the bootstrap alone: about [3, 7], clear
    y = np.zeros(1000)
    alone = stats.paired_interval(x, y)
    assert alone["separated"] and alone["lo"] > 2.0 and alone["runs"] is None
    runs = {"lo": -1.0, "hi": 11.0, "se": 2.5, "df": 2, "detectable": 20.0}  # seeds that disagree widely
    joined = stats.paired_interval(x, y, runs)
    assert (joined["lo"], joined["hi"]) == (-1.0, pytest.approx(max(11.0, alone["hi"])))
    assert not joined["separated"] and joined["detectable"] == 20.0
    assert joined["bootstrap"] == [alone["lo"], alone["hi"]] and joined["runs"]["df"] == 2
    narrow = stats.paired_interval(x, y, {"lo": 4.9, "hi": 5.1, "se": 0.05, "df": 4, "detectable": 0.1})
    assert (narrow["lo"], narrow["hi"]) == (alone["lo"], alone["hi"])  # never narrower than the bootstrap


def test_the_runs_interval_of_a_comparison_uses_each_runs_own_metric():
    # two orders, two seeds each: x is 25 points above y in AA on every run but one, where it is 0
    from slao.compare import paired_comparisons

    def run(seed, order, final):
        return {"seed": seed, "order": order, "tasks": ["a", "b"], "task_info": {},
                "example_scores": [[[1.0] * 4, None], [[1.0] * 4, final]]}

    high, low = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]
    xs = [run(s, o, high) for o in (1, 2) for s in (0, 1)]
    ys = [run(s, o, high if (o, s) == (2, 1) else low) for o in (1, 2) for s in (0, 1)]
    pair = paired_comparisons({"x": xs, "y": ys}, replicates=200)["pairs"]["x vs y"]
    aa = pair["aa"]
    # AA per run: x 100, y 50 (or 100 on order 2 seed 1): differences 50, 50 | 50, 0
    assert aa["diff"] == pytest.approx(37.5) and aa["runs"]["df"] == 2
    assert aa["lo"] == aa["runs"]["lo"] < aa["bootstrap"][0]  # the runs disagree more than the examples say


def _seed_noisy_grid(rng, seed_sd=0.1, orders=(1, 2), seeds=(0, 1, 2), tasks=4, n=48):
    """Two methods with the same true rates, final row only; each run draws its own examples and each
    method's rate moves by its own seed noise, larger than the examples' noise (bench/paired_calibration.py)."""
    base = rng.uniform(0.3, 0.7, size=tasks)
    scores = {"x": {}, "y": {}}
    for o in orders:
        for s in seeds:
            u = rng.random((tasks, n))
            for m in scores:
                p = base + rng.normal(0.0, seed_sd, tasks)
                scores[m][(o, s)] = [[None] * tasks] * (tasks - 1) + [[list((u[j] < p[j]).astype(float))
                                                                      for j in range(tasks)]]
    return scores


def test_equal_methods_whose_seeds_vary_widely_are_rarely_called_different():
    # where seeds vary more than examples, three seeds per order say little about their spread: the
    # bootstrap alone calls such equal pairs different more often than 5 times in 100 (6 of these 40);
    # joined with the t-interval over runs, at most 4 calls in 40 (a true 5% rate exceeds that 14 times in
    # 100; these grids give 3)
    from slao.compare import paired_comparisons

    rng = np.random.default_rng(8)
    calls = {"bootstrap": 0, "joined": 0}
    for k in range(40):
        grid = _seed_noisy_grid(rng)
        runs = {m: [{"seed": s, "order": o, "tasks": ["a", "b", "c", "d"], "task_info": {},
                     "example_scores": sc} for (o, s), sc in by_unit.items()] for m, by_unit in grid.items()}
        aa = paired_comparisons(runs, replicates=200, seed=k)["pairs"]["x vs y"]["aa"]
        calls["joined"] += aa["separated"]
        calls["bootstrap"] += aa["bootstrap"][0] > 0 or aa["bootstrap"][1] < 0
    assert calls["joined"] <= 4
    assert calls["bootstrap"] > calls["joined"]  # the join is what keeps the rate down
