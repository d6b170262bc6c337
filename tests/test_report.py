"""slao report on hand-made run and comparison folders (no model): the tables printed, the three kinds of
PNG figures, and clear errors for a path that is neither."""

from __future__ import annotations

import json

import pytest

from slao.cli import main
from slao.compare import aggregate, config_summary, write_comparison
from slao.config import build_config
from slao.errors import DataError, SlaoError
from slao.metrics import all_metrics
from slao.plots import _cumulative_seconds, _mean_std, short_name
from slao.report import comparison_table, mean_results, report_path, results_table

PNG = b"\x89PNG\r\n\x1a\n"
TASKS = ["bbc-topic", "task1572_samsum_summary", "rt-subjectivity"]


def _results(method, seed, R, sizes):
    zero = [10.0, 20.0, 30.0]
    return {"method": method, "model": "tiny-random(seed=0)", "benchmark": "packaged", "seed": seed,
            "tasks": TASKS, "finished": True, "accuracy": R, "zero_shot": zero,
            "metrics": all_metrics(R, zero), "adapter_state_bytes": sizes,
            "train_seconds": [1.0, 1.5, 2.0], "eval_seconds": [0.1, 0.2, 0.3],
            "task_info": {t: {"metric": "exact", "train": 32, "test": 16} for t in TASKS}}


def _seq(seed):
    d = 5.0 * seed
    return _results("slao", seed, [[80.0 + d, None, None], [70.0, 90.0 - d, None], [60.0, 85.0, 75.0 + d]],
                    [28_000, 28_000, 28_000])


def _mtl(seed):
    return _results("mtl", seed, [[None] * 3, [None] * 3, [82.0, 88.0 - seed, 79.0]], [None, None, 14_000])


def _check_pngs(folder, names, printed):
    for name in names:
        path = folder / "figures" / name
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert str(path) in printed


def test_report_of_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_seq(0)))
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "slao on tiny-random(seed=0)" in printed and "zero-shot" in printed
    _check_pngs(run, ["accuracy-slao.png", "seen-average.png", "adapter-state.png", "cost-vs-tasks.png"], printed)
    assert sorted(p.name for p in (run / "figures").iterdir()) == [
        "accuracy-slao.png", "adapter-state.png", "cost-vs-tasks.png", "seen-average.png"]


def test_report_of_a_comparison(tmp_path, capsys):
    runs = {"slao": [_seq(0), _seq(1)], "mtl": [_mtl(0), _mtl(1)]}
    for name, rs in runs.items():
        for r in rs:
            folder = tmp_path / name / f"seed-{r['seed']}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps(r))
    summary = config_summary(build_config(), list(runs), [0, 1], TASKS)
    write_comparison(tmp_path, aggregate(runs, {**summary, "runs_done": 4, "runs_total": 4}))
    paths = report_path(tmp_path, echo=lambda *a: None)
    assert len(paths) == 5
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "slao" in printed and "mtl" in printed
    assert "mean over seeds 0, 1" in printed and "paired comparisons:" in printed
    _check_pngs(tmp_path, ["accuracy-slao.png", "accuracy-mtl.png", "seen-average.png", "adapter-state.png",
                           "cost-vs-tasks.png"], printed)
    (tmp_path / "mtl" / "seed-1" / "results.json").unlink()
    with pytest.raises(DataError, match="seed-1"):
        report_path(tmp_path, echo=lambda *a: None)


def test_report_of_neither_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SlaoError, match="neither a run folder"):
        report_path(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_comparison_table_and_mean_results():
    runs = {"slao": [_seq(0), _seq(1)], "mtl": [_mtl(0)]}
    comp = aggregate(runs, {"model": "tiny-random", "benchmark": "packaged", "seeds": [0, 1],
                            "runs_done": 3, "runs_total": 4})
    text = comparison_table(comp)
    rows = [line for line in text.splitlines() if line.startswith(("slao", "mtl"))]
    assert len(rows) == 2 and "28.0 KB" in rows[0] and "14.0 KB" in rows[1]
    aa = [r["metrics"]["aa"] for r in runs["slao"]]
    assert f"{sum(aa) / 2:.1f} ± " in rows[0] and "3 of 4 runs" in text
    mean = mean_results("slao", runs["slao"])
    assert mean["accuracy"][0] == [82.5, None, None] and mean["seed_label"] == "mean over seeds 0, 1"
    assert mean["model"] == "tiny-random"
    assert mean["metrics"]["forgetting"] == pytest.approx(
        sum(r["metrics"]["forgetting"] for r in runs["slao"]) / 2)
    assert "82.5" in results_table(mean)


def test_plot_helpers():
    assert short_name("bbc-topic") == "bbc-topic"
    assert short_name("task1572_samsum_summary") == "task1572_samsum…" and len(short_name("x" * 40)) == 16
    mean, std = _mean_std([[1.0, None, 4.0], [3.0, None, None]])
    assert mean == [2.0, None, 4.0] and std[0] == pytest.approx(2 ** 0.5) and std[1:] == [None, None]


def test_cumulative_seconds_add_training_and_the_methods_own_work():
    run = {"train_seconds": [1.0, 1.5, 2.0], "method_seconds": [0.5, 0.0, 0.25]}
    assert _cumulative_seconds(run) == [1.5, 3.0, 5.25]
    # runs recorded before method_seconds existed: training alone
    assert _cumulative_seconds({"train_seconds": [1.0, 1.5, 2.0]}) == [1.0, 2.5, 4.5]
    # a joint run trains once, at the last task; a task not trained yet has no time
    assert _cumulative_seconds({"train_seconds": [None, None, 3.0], "method_seconds": [None, None, 1.0]}) == [
        None, None, 4.0]


def test_a_time_column_says_how_many_runs_it_covers_when_older_runs_lack_it():
    first, second = _seq(0), _seq(1)
    first["method_seconds"] = [0.5, 0.5, 1.0]  # the second run predates the record of the method's own work
    comp = aggregate({"slao": [first, second]}, {"model": "tiny-random", "benchmark": "packaged", "seeds": [0, 1],
                                                 "runs_done": 2, "runs_total": 2})
    row = next(line for line in comparison_table(comp).splitlines() if line.startswith("slao"))
    assert "  2.0 (1 of 2 runs)  " in row  # method s: one run's total
    assert "  4.5 ± 0.0  " in row and row.count(" of 2 runs") == 1  # train s: both runs have it


def test_the_paired_table_names_the_better_method():
    from slao.tables import paired_rows

    def iv(diff, lo, hi):
        return {"diff": diff, "lo": lo, "hi": hi, "separated": lo > 0 or hi < 0, "detectable": 3.0}

    pairs = {"pairs": {"a vs b": {"x": "slao", "y": "mtl", "aa": iv(-7.7, -10.8, -4.5)},
                       "a vs c": {"x": "slao", "y": "lorm-ab", "aa": iv(7.7, 4.9, 10.6)},
                       "a vs d": {"x": "slao", "y": "magmax", "aa": iv(1.7, -2.9, 5.6)}}}
    _, rows = paired_rows(pairs)
    assert [r[0] for r in rows] == ["slao − mtl", "slao − lorm-ab", "slao − magmax"]
    assert [r[-1] for r in rows] == ["mtl better", "slao better", "none detected (±3.0)"]


def test_figures_of_a_grid_over_orders_keep_the_orders_apart(tmp_path, monkeypatch):
    import slao.plots as plots

    def run(method, seed, order, tasks, maker):
        return {**maker(seed), "order": order, "tasks": tasks}

    rev = TASKS[::-1]
    runs = {"slao": [run("slao", s, o, TASKS if o == 1 else rev, _seq) for o in (1, 2) for s in (0, 1)],
            "mtl": [run("mtl", s, 2, rev, _mtl) for s in (0, 1)]}  # mtl has run order 2 only
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append((path.name, fig)) or save(fig, path))
    seen = []
    draw_seen = plots.seen_average_figure
    monkeypatch.setattr(plots, "seen_average_figure",
                        lambda rs, title, path: seen.append(rs) or draw_seen(rs, title, path))
    names = [p.name for p in plots.write_figures(runs, tmp_path, "tiny")]
    # the tasks seen after the i-th one differ between orders: one seen-average figure per order
    assert "seen-average.png" not in names
    assert {"seen-average-order-1.png", "seen-average-order-2.png"} <= set(names)
    assert [{r["order"] for rs in runs_of.values() for r in rs} for runs_of in seen] == [{1}, {2}]
    assert {"accuracy-slao-order-1.png", "accuracy-slao-order-2.png", "accuracy-mtl.png"} <= set(names)
    # time per task depends on the task: the cost figure draws order 1, and says where a method lacks it
    cost = dict(drawn)["cost-vs-tasks.png"]
    assert cost.axes[1].get_legend_handles_labels()[1] == ["slao", "mtl (order 2)"]
    # the spread over orders: a panel for slao alone (mtl has one order), a bar per task joining its orders
    spread = dict(drawn)["order-spread.png"]
    panels = [ax for ax in spread.axes if ax.get_visible()]
    assert len(panels) == 1 and panels[0].get_title().startswith("slao\nAOPD")
    assert panels[0].get_legend_handles_labels()[1] == ["order 1", "order 2"]
    bars = [line for line in panels[0].lines if len(line.get_xdata()) == 2]
    assert len(bars) == len(TASKS)


def test_a_figure_the_runs_no_longer_give_is_removed_and_other_files_are_kept(tmp_path, capsys):
    import slao.plots as plots

    # a grid of one order, reported; then it gains order 2: its one-order figures would describe runs the
    # folder no longer holds alone
    one = {"slao": [{**_seq(s), "order": 1} for s in (0, 1)]}
    folder = tmp_path / "figures"
    first = plots.write_figures(one, folder, "tiny")
    assert {"accuracy-slao.png", "seen-average.png"} <= {p.name for p in first}
    (folder / "my-notes.png").write_bytes(PNG)  # the user's own file
    two = {"slao": one["slao"] + [{**_seq(s), "order": 2, "tasks": TASKS[::-1]} for s in (0, 1)]}
    second = plots.write_figures(two, folder, "tiny")
    removed = plots.remove_stale_figures(folder, second)
    assert [p.name for p in removed] == ["accuracy-slao.png", "seen-average.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in second] + ["my-notes.png"])

    # slao report says what it removed
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(_seq(0)))
    (run / "figures" / "accuracy-seq-lora.png").write_bytes(PNG)
    assert main(["report", str(run)]) == 0
    assert "removed, as the folder's runs no longer give them: accuracy-seq-lora.png" in capsys.readouterr().out
    assert not (run / "figures" / "accuracy-seq-lora.png").exists()


def test_runs_named_in_words_put_a_run_without_an_order_first():
    from slao.tables import _units_text

    assert _units_text(frozenset({(2, 0), (1, 0), (2, 1), (1, 1)})) == "orders 1, 2, seeds 0, 1"
    assert _units_text(frozenset({(None, 1), (None, 0)})) == "seeds 0, 1"
    # runs made without --orders beside runs of order 1: listed one by one, not as "orders None, 1"
    assert _units_text(frozenset({(1, 0), (None, 0), (1, 1), (None, 1)})) == \
        "seed 0, seed 1, order 1 seed 0, order 1 seed 1"
    assert _units_text(frozenset({(10, 0), (9, 0)})) == "orders 9, 10, seed 0"


def test_every_bottom_panel_of_the_order_spread_carries_the_score_axis(tmp_path, monkeypatch):
    import slao.plots as plots

    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    # five methods under two orders: four panels on the first row, one on the second; the three panels of
    # the first row with nothing below them must show the axis too
    runs = {f"m{k}": [{**_seq(s), "order": o, "tasks": TASKS if o == 1 else TASKS[::-1]}
                      for o in (1, 2) for s in (0, 1)] for k in range(5)}
    assert plots.order_spread_figure(runs, "tiny", tmp_path / "order-spread.png").exists()
    panels = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [ax.get_xlabel() != "" for ax in panels] == [False, True, True, True, True]
    assert plots.order_spread_figure({"m": runs["m0"][:2]}, "tiny", tmp_path / "none.png") is None
