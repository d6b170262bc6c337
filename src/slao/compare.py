"""Side-by-side comparison of methods over seeds (and task orders): runs them under one config,
aggregates their results (mean, std, per-run values) and compares every pair on the same test examples
with a paired bootstrap. Which methods and variants run is parsed by slao.variants."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from slao import checkpoint, stats
from slao.errors import ConfigError, DataError
from slao.metrics import METRICS, PAIRED, all_metrics, mean_matrix, order_spread
from slao.stats import summarize
from slao.variants import (  # noqa: F401 - parse_methods and split_methods re-exported
    folder_name,
    method_spec,
    parse_methods,
    split_methods,
    variant_config,
)

BOOTSTRAP_REPLICATES = 2000


# -- parsing and validation (the --methods grammar lives in slao.variants) ------------------------
def _distinct_ints(text: str, flag: str, example: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: one or more distinct integers, else a ConfigError naming ``flag``."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, e.g. {example}; got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"{flag} needs one or more distinct integers, e.g. {example}; got {text!r}")
    return values


def parse_seeds(text: str | None, default: int = 0) -> list[int]:
    return [default] if text is None else _distinct_ints(text, "--seeds", "0,1,2")


def parse_orders(text: str | None, benchmark: str) -> list[int] | None:
    """'4,5,6' -> [4, 5, 6], each an order of ``benchmark``; None when not given."""
    if text is None:
        return None
    from slao.tasks import BENCHMARK_ORDERS

    orders = _distinct_ints(text, "--orders", "4,5,6")
    known = (BENCHMARK_ORDERS.get(benchmark) or {}).get("orders") or {}
    bad = [o for o in orders if o not in known]
    if bad:
        valid = ", ".join(map(str, known)) or "none (it has no named orders)"
        raise ConfigError(f"benchmark {benchmark!r} has no order {bad[0]}; its orders: {valid}")
    return orders


# -- pure aggregation ----------------------------------------------------------------------------
def _final(values: Sequence | None):
    present = [v for v in values or [] if v is not None]
    return present[-1] if present else None


def _total(values: Sequence | None) -> float:
    return round(sum(v for v in values or [] if v is not None), 3)


def task_test_counts(results: dict) -> dict[str, int]:
    return {name: int(info.get("test", 0)) for name, info in (results.get("task_info") or {}).items()}


def _method_flag(name: str | None, flag: str) -> bool | None:
    from slao.methods import METHODS, get_method

    get_method("slao")  # fills the registry
    cls = METHODS.get(name or "")
    return getattr(cls, flag) if cls is not None else None


def aggregate_method(runs: Sequence[dict]) -> dict:
    """One method's entry of comparison.json from its finished runs' results dicts (all seeds and orders:
    a metric's mean is over every run, so over orders the mean of equal numbers of seeds)."""
    out: dict = {"seeds": sorted({r["seed"] for r in runs}), "runs": len(runs),
                 "units": [[r.get("order"), r["seed"]] for r in runs],
                 "orders": sorted({r["order"] for r in runs if r.get("order") is not None})}
    # recomputed from each run's matrix: one definition, also for runs made before a metric existed
    metrics = [all_metrics(r["accuracy"], r.get("zero_shot")) if r.get("finished", True) else {} for r in runs]
    for key in METRICS:
        out[key] = summarize([m.get(key) for m in metrics])
    sizes = [_final(r.get("adapter_state_bytes")) for r in runs]
    out["adapter_state_bytes"] = max((s for s in sizes if s is not None), default=None)
    for flag in ("data_free", "grows"):  # recorded by runs since these flags exist; else the method's own
        values = {r[flag] if flag in r else _method_flag(r.get("method"), flag) for r in runs}
        out[flag] = values.pop() if len(values) == 1 else None
    out["train_seconds"] = summarize([_total(r.get("train_seconds")) for r in runs])
    # the method's own work outside training (statistics, init, merge); runs older than the record: n/a
    out["method_seconds"] = summarize([_total(r["method_seconds"]) if r.get("method_seconds") else None
                                       for r in runs])
    out["eval_seconds"] = summarize([_total(r.get("eval_seconds")) for r in runs])
    by_order = group_by_order(runs)
    if len(by_order) == 1:
        out["accuracy_mean"] = mean_matrix([r["accuracy"] for r in runs])
    out["order_robustness"] = order_robustness(by_order)
    counts = [sum(task_test_counts(r).values()) for r in runs]
    tasks = len(runs[0]["tasks"]) if runs else 0
    out["test_examples"] = counts[0] if counts else None  # all tasks together, per run
    out["test_per_task_mean"] = counts[0] / tasks if counts and tasks else None
    return out


def group_by_order(runs: Sequence[dict]) -> dict:
    """Runs grouped by their task order (None for a run made without --orders), in the order they come."""
    by_order: dict = {}
    for r in runs:
        by_order.setdefault(r.get("order"), []).append(r)
    return by_order


def order_finals(by_order: dict) -> tuple[list, dict]:
    """The seeds run under every order (none with fewer than two orders), and per order each task's final
    score (by name), mean over those seeds: ``finals[order][task]``."""
    seeds = (sorted(set.intersection(*({r["seed"] for r in runs} for runs in by_order.values())))
             if len(by_order) > 1 else [])
    finals: dict = {}
    for order, runs in by_order.items():
        per_task: dict[str, list[float]] = {}
        for r in (r for r in runs if r["seed"] in seeds):
            for name, v in zip(r["tasks"], r["accuracy"][-1], strict=True):
                if v is not None:
                    per_task.setdefault(name, []).append(v)
        finals[order] = {name: sum(v) / len(v) for name, v in per_task.items()}
    return seeds, (finals if seeds else {})


def order_robustness(by_order: dict) -> dict:
    """Per task (by name) its final score under each order, mean over seeds; then OPD, MOPD and AOPD.

    Only the seeds run under every order enter: a grid filled in pieces may hold three seeds of one order
    and one of the other, and a mean over different seeds would count seed noise as order spread."""
    seeds, finals = order_finals(by_order)
    if not seeds:
        return {"opd": None, "mopd": None, "aopd": None, "seeds": []}
    names = sorted(set.intersection(*(set(f) for f in finals.values())))
    spread = order_spread([[finals[o][n] for n in names] for o in sorted(finals)])
    return {**spread, "tasks": names, "seeds": seeds,
            "opd": dict(zip(names, spread["opd"], strict=True)) if names else None,
            "aopd_bootstrap": _spread_bootstrap(by_order, seeds, names, spread["aopd"])}


def _spread_bootstrap(by_order: dict, seeds: list, names: list, aopd: float | None) -> dict | None:
    """The spreads noise alone gives, and the calls against them, for AOPD and MOPD
    (slao.stats.order_spread_bootstrap) from the runs' per-example final scores; None where a run lacks
    them (made by an older slao), no task is shared, or the examples' means
    do not give the matrix's AOPD (scores the matrix does not average)."""
    finals: dict = {}
    for order, runs in by_order.items():
        for r in (r for r in runs if r["seed"] in seeds):
            if not r.get("example_scores"):
                return None
            row = dict(zip(r["tasks"], r["example_scores"][-1], strict=True))
            if any(row.get(n) is None for n in names):
                return None
            finals.setdefault(order, {})[r["seed"]] = {n: row[n] for n in names}
    if not names:
        return None
    boot = stats.order_spread_bootstrap(finals)
    if not boot or aopd is None or abs(boot["aopd"] - aopd) > 0.01:
        return None
    return {k: v for k, v in boot.items() if k != "tasks"}


def paired_comparisons(runs: dict[str, Sequence[dict]], replicates: int = BOOTSTRAP_REPLICATES,
                       seed: int = 0) -> dict:
    """Every pair of methods: the difference in AA, BWT and F with a paired interval (slao.stats: a bootstrap
    over test examples and seeds joined with a t-interval over the runs' differences), and per exact-match
    task an exact McNemar test on the final row.

    Runs are paired by (order, seed): a pair is compared on the runs both methods have (a grid run in
    pieces may hold more seeds of one method than another). A run without per-example scores (made by an
    older slao) is left out of the pairs, and listed."""
    scores: dict[str, dict] = {}
    groups: dict = {}
    zero: dict = {}
    missing = []
    for name, rs in runs.items():
        scores[name] = {}
        for r in rs:
            unit = (r.get("order"), r["seed"])
            if not r.get("example_scores"):
                missing.append(f"{name} seed {r['seed']}")
                continue
            scores[name][unit] = r["example_scores"]
            groups[unit] = r.get("order")
            zero[unit] = r.get("zero_shot")
    names = [n for n in runs if scores[n]]
    out: dict = {"reference": names[0] if names else None, "replicates": replicates,
                 "units": [list(u) for u in sorted(groups, key=str)], "missing": missing, "pairs": {}}
    if len(names) < 2:
        return out
    _check_same_examples(runs)
    per_run = {n: {u: stats.unit_metrics(sc, zero.get(u)) for u, sc in scores[n].items()} for n in names}
    boots: dict = {}  # shared units -> one bootstrap of every method that has them all
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            shared = tuple(sorted(set(scores[x]) & set(scores[y]), key=str))  # a pair uses only its shared runs
            if not shared:
                continue
            if shared not in boots:
                having = {n: {u: scores[n][u] for u in shared} for n in names if set(shared) <= set(scores[n])}
                boots[shared] = stats.bootstrap_metrics(having, {u: groups[u] for u in shared},
                                                        replicates=replicates, seed=seed, zero_shot=zero)
            boot = boots[shared]
            entry = {k: stats.paired_interval(boot[x][k], boot[y][k], _runs_interval(per_run, x, y, k, shared, groups))
                     for k in PAIRED}
            entry["mcnemar"] = mcnemar_final_row(runs[x], runs[y])
            out["pairs"][f"{x} vs {y}"] = {"x": x, "y": y, "units": [list(u) for u in shared], **entry}
    widths = [p["aa"]["detectable"] for p in out["pairs"].values() if p["aa"] is not None]
    out["detectable_aa"] = sorted(widths)[len(widths) // 2] if widths else None  # the median pair
    return out


def _runs_interval(per_run: dict, x: str, y: str, key: str, units, groups: dict) -> dict | None:
    """The t-interval over runs (slao.stats.runs_interval) of x - y in one metric, on the given runs."""
    diffs = {}
    for u in units:
        a, b = per_run[x][u].get(key), per_run[y][u].get(key)
        diffs[u] = None if a is None or b is None else a - b
    return stats.runs_interval(diffs, {u: groups[u] for u in units})


def _check_same_examples(runs: dict[str, Sequence[dict]]) -> None:
    """Runs of one (order, seed) must have scored the same test examples, else pairing is meaningless."""
    seen: dict = {}
    for name, rs in runs.items():
        for r in rs:
            unit = (r.get("order"), r["seed"])
            hashes = {t: (info or {}).get("test_sha256") for t, info in (r.get("task_info") or {}).items()}
            if unit in seen and seen[unit][1] != hashes:
                raise DataError(f"{name} and {seen[unit][0]} (order {unit[0]}, seed {unit[1]}) were scored on "
                                "different test examples; a paired comparison needs the same data: rerun them "
                                "under one slao compare command")
            seen.setdefault(unit, (name, hashes))


def mcnemar_final_row(xs: Sequence[dict], ys: Sequence[dict]) -> dict:
    """Per exact-match task: discordant counts on the final row, pooled over the pair's shared runs, and the
    exact McNemar p-value."""
    by_unit = {(r.get("order"), r["seed"]): r for r in ys}
    counts: dict[str, list[int]] = {}
    for rx in xs:
        ry = by_unit.get((rx.get("order"), rx["seed"]))
        if ry is None or not rx.get("example_scores") or not ry.get("example_scores"):
            continue
        for j, name in enumerate(rx["tasks"]):
            if (rx.get("task_info") or {}).get(name, {}).get("metric", "exact") != "exact":
                continue
            cx, cy = rx["example_scores"][-1][j], ry["example_scores"][-1][j]
            if cx is None or cy is None:
                continue
            b, c = stats.discordant(cx, cy)
            acc = counts.setdefault(name, [0, 0])
            acc[0], acc[1] = acc[0] + b, acc[1] + c
    return {name: {"x_only": b, "y_only": c, "p": stats.mcnemar_exact(b, c)} for name, (b, c) in counts.items()}


def aggregate(runs: dict[str, Sequence[dict]], summary: dict, replicates: int = BOOTSTRAP_REPLICATES) -> dict:
    """comparison.json: the config summary, per method its aggregate (see aggregate_method), and the paired
    comparisons of every pair of methods (see paired_comparisons)."""
    methods = {name: aggregate_method(list(rs)) for name, rs in runs.items()}
    return {**summary, "methods": methods, "paired": paired_comparisons(runs, replicates)}


# -- running ----------------------------------------------------------------------------------------
def run_folder(out: Path, method: str, seed: int, order: int | None = None, by_order: bool = False) -> Path:
    """``out/<method>/seed-<n>``, or ``out/<method>/order-<o>/seed-<n>`` in a grid over orders."""
    base = Path(out) / folder_name(method)
    return (base / f"order-{order}" if by_order else base) / f"seed-{seed}"


def _finished_results(folder: Path, cfg) -> dict | None:
    """The stored results of a finished run made with exactly ``cfg``, else None (the harness decides)."""
    import yaml

    from slao.config import to_dict
    from slao.harness import config_differences

    results_file, config_file = folder / "results.json", folder / "config.yaml"
    if not (results_file.exists() and config_file.exists()):
        return None
    try:
        results = json.loads(results_file.read_text())
        old = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not results.get("finished") or config_differences(old, to_dict(cfg)):
        return None
    return results


def config_summary(cfg, methods: Sequence[str], seeds: Sequence[int], tasks: list[str] | None,
                   orders: Sequence[int] | None = None) -> dict:
    return {"model": cfg.model, "benchmark": cfg.benchmark, "tasks": tasks,
            "train_per_task": cfg.data.train_per_task, "test_per_task": cfg.data.test_per_task,
            "seeds": list(seeds), "orders": list(orders) if orders else None, "methods": list(methods)}


def write_comparison(out: Path, comp: dict) -> None:
    from slao.tables import comparison_markdown

    checkpoint.write_atomic(Path(out) / "comparison.json", json.dumps(comp, indent=1) + "\n")
    checkpoint.write_atomic(Path(out) / "comparison.md", comparison_markdown(comp))


def grid_cells(cfg, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
               orders: Sequence[int] | None = None) -> list:
    """The grid's cells (launch.Cell), seeds outermost, then orders, then methods: an interrupted grid holds
    every method for the first seeds. Each cell's config is ``cfg`` with its method, seed and order."""
    from slao.launch import Cell

    out, by_order = Path(out), bool(orders)
    cells = []
    for seed in seeds:
        for order in list(orders) if orders else [cfg.order]:
            for name in methods:
                run_cfg = dataclasses.replace(variant_config(cfg, name), seed=seed, order=order)
                folder = run_folder(out, name, seed, order, by_order)
                label = f"{name}, {f'order {order}, ' if by_order else ''}seed {seed}"
                cells.append(Cell(name, seed, order, run_cfg, folder, label,
                                  folder.relative_to(out).as_posix().replace("/", "-")))
    return cells


def run_comparison(cfg, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
                   echo: Callable = print, runner: Callable | None = None,
                   orders: Sequence[int] | None = None, collect: bool = False, launcher=None) -> dict:
    """Run every method for every order and seed into ``out/<method>/[order-<o>/]seed-<n>/`` under one
    config; finished runs are read back, not rerun. comparison.json/.md are rewritten after every run.

    With ``collect`` nothing runs: the finished runs of the grid are gathered (cells run elsewhere, by
    separate jobs or sessions, into the same folder) and the missing ones listed.

    With a ``launcher`` (slao.launch: LocalLauncher, SlurmLauncher) the unfinished cells run outside this
    process, each a resumable ``slao run`` on its folder; then they are gathered as ``collect`` does. A
    cell that fails does not stop the others; the result's ``failed`` lists it, with its log."""
    from slao.harness import run_experiment
    from slao.launch import ZERO_SHOT_DIR, CellsFailed, failure_message
    from slao.methods import get_method
    from slao.tasks import resolve_task_names

    out = Path(out)
    runner = runner or functools.partial(run_experiment, zero_shot_cache=out / ZERO_SHOT_DIR)
    for name in methods:  # all names and variants before any run starts
        get_method(method_spec(name)[0])
        variant_config(cfg, name)
    by_order = bool(orders)
    tasks = None if by_order else resolve_task_names(cfg)
    cells = grid_cells(cfg, methods, seeds, out, orders)
    done: dict[str, list[dict]] = {m: [] for m in methods}
    total, done_count = len(cells), 0
    failed: list[dict] = []
    launched = launcher is not None and not collect
    if launched:
        todo = [c for c in cells if _finished_results(c.folder, c.cfg) is None]
        echo(f"{total - len(todo)} of {total} runs finished earlier; {len(todo)} to run on {launcher.describe()}")
        failed = [f.record() for f in launcher.run(todo, out, echo)]
        collect = True

    def summarize_grid(tasks, finished: int) -> dict:
        extra = {"failed": failed} if failed else {}
        return {**config_summary(cfg, methods, seeds, tasks, orders), "runs_done": finished, "runs_total": total,
                **extra}

    for count, cell in enumerate(cells, 1):
        results = _finished_results(cell.folder, cell.cfg)
        if results is None and collect:
            echo(f"[{count}/{total}] {cell.label}: not finished in {cell.folder} (left out)")
            continue
        ran = results is None
        if ran:
            echo(f"[{count}/{total}] {cell.label} -> {cell.folder}")
            results = runner(cell.cfg, cell.folder)
        else:
            echo(f"[{count}/{total}] {cell.label}: {'finished' if launched else 'finished earlier'}, "
                 f"read from {cell.folder}")
        done[cell.method].append(results)
        done_count += 1
        tasks = tasks or (None if by_order else results["tasks"])
        if ran and count < total:  # the tables follow each new run; runs read back wait for the end
            write_comparison(out, aggregate(done, summarize_grid(tasks, done_count)))
    if not done_count:
        if failed:
            raise CellsFailed(failure_message(failed, total))
        raise ConfigError(f"no finished run of this grid in {out}; run slao compare without --collect first")
    comp = aggregate(done, summarize_grid(tasks, done_count))
    write_comparison(out, comp)
    return comp


def load_comparison(folder: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """comparison.json and each method's finished results from a comparison folder; the aggregates and
    paired statistics are computed afresh from the runs, by this version's rules."""
    folder = Path(folder)
    comp = json.loads((folder / "comparison.json").read_text())
    by_order = bool(comp.get("orders"))
    runs: dict[str, list[dict]] = {}
    for name, entry in comp["methods"].items():
        units = entry.get("units") or [[None, seed] for seed in entry["seeds"]]
        runs[name] = []
        for order, seed in units:
            path = run_folder(folder, name, seed, order, by_order) / "results.json"
            try:
                runs[name].append(json.loads(path.read_text()))
            except (OSError, ValueError) as err:
                raise DataError(f"{path} is listed in {folder / 'comparison.json'} but cannot be read ({err}); "
                                "rerun the same slao compare command to redo it") from None
    comp.update(aggregate(runs, {k: v for k, v in comp.items() if k not in ("methods", "paired")}))
    return comp, runs
