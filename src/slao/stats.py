"""Paired statistics for comparing methods scored on the same test examples (design.md §5).

Two methods of one comparison are trained on the same data and scored on the same test examples under
each seed (and task order), so their difference is paired: a bootstrap that resamples the same examples
for both methods cancels the examples' own difficulty, which an unpaired margin counts twice.

The bootstrap is hierarchical. A *unit* is one run of every method: one seed (of one task order). Each
replicate draws, within every order, as many seeds as it has with replacement; then, within every drawn
unit and every task, as many test examples as the task has, with replacement. The same draw serves every
row of the accuracy matrix (a task's example is the same example after every task) and every method, so
one replicate gives every method's metrics and every pair's difference. A replicate's metric is the mean
over its orders of the mean over its seeds, as the point estimate is.

A pair's interval joins that bootstrap with a t-interval over the runs' own differences (runs_interval):
with three seeds per order the bootstrap cannot see how widely seeds vary, and the t quantile pays for it.

Pure functions on plain data; no model, no files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from slao.metrics import METRICS, all_metrics

# Per unit, per method: ``scores[i][j]`` = each test example's score in [0, 1] on task j after task i
# (None where not evaluated); the same examples in the same order for every method of the unit.
Scores = Sequence[Sequence[Sequence[float] | None]]

# With a 95% two-sided test, a true difference of (1.96 + 0.84) standard errors is detected 80% of the time.
DETECT_FACTOR = 2.801585


def _matrix(scores, idx: Sequence[np.ndarray | slice | None]) -> list[list[float | None]]:
    """The accuracy matrix in percent from per-example scores (arrays), task j's examples taken at idx[j]."""
    return [[None if cell is None else 100.0 * float(cell[idx[j]].mean()) for j, cell in enumerate(row)]
            for row in scores]


def _metrics(scores, idx, zero_shot) -> dict[str, float | None]:
    # zero_shot (FWT's baseline) is the same for every method of a unit, so it cancels in a difference.
    return all_metrics(_matrix(scores, idx), zero_shot)


def _arrays(scores: Scores) -> list[list[np.ndarray | None]]:
    return [[None if cell is None else np.asarray(cell, dtype=np.float64) for cell in row] for row in scores]


def _task_sizes(unit, method_scores: dict) -> list[int | None]:
    """Test examples per task in ``unit``, the same for every method and row, else ValueError."""
    sizes: list[int | None] = []
    for method, by_unit in method_scores.items():
        for row in by_unit.get(unit, []):
            sizes += [None] * (len(row) - len(sizes))
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                if sizes[j] is None:
                    sizes[j] = len(cell)
                elif sizes[j] != len(cell):
                    raise ValueError(f"{unit}: {method} scored {len(cell)} test examples on task {j}, another "
                                     f"row or method {sizes[j]}; a paired comparison needs the same examples")
    return sizes


def none_first(value) -> tuple:
    """Sort key for an order or seed that may be None (a run made without --orders): None first, the rest
    in their natural order."""
    return (value is not None, value if value is not None else 0)


def _unit_key(unit) -> tuple:
    return tuple(none_first(v) for v in (unit if isinstance(unit, tuple) else (unit,)))


def bootstrap_metrics(method_scores: dict[str, dict], groups: dict, *, replicates: int = 2000, seed: int = 0,
                      zero_shot: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Replicates of every method's metrics under one shared resampling plan.

    ``method_scores[method][unit]`` is a Scores matrix; ``groups`` maps each unit to its stratum (its task
    order; one stratum when there are no orders). Units a method lacks are skipped for it (its metric
    averages the units it has). Returns ``{method: {metric: array (replicates,)}}``, NaN where a metric is
    undefined. Replicate 0 is the observed data (no resampling).
    """
    zero_shot = zero_shot or {}
    # units are (order, seed); a run made without --orders has order None, which a folder may hold beside
    # runs of a named order: those sort first, the rest in their natural order
    units = sorted(groups, key=_unit_key)
    strata: dict = {}
    for unit in units:
        strata.setdefault(groups[unit], []).append(unit)
    sizes = {unit: _task_sizes(unit, method_scores) for unit in units}
    arrays = {m: {u: _arrays(sc) for u, sc in by_unit.items()} for m, by_unit in method_scores.items()}
    rng = np.random.default_rng(seed)
    out = {m: {k: np.full(replicates, np.nan) for k in METRICS} for m in method_scores}
    for b in range(replicates):
        drawn: list[tuple] = []  # (stratum, unit, per-task indices)
        for stratum, members in strata.items():
            picks = members if b == 0 else [members[k] for k in rng.integers(len(members), size=len(members))]
            for unit in picks:
                idx = [None if not n else (np.arange(n) if b == 0 else rng.integers(n, size=n))
                       for n in sizes[unit]]
                drawn.append((stratum, unit, idx))
        for method, by_unit in arrays.items():
            per_stratum: dict = {}
            for stratum, unit, idx in drawn:
                if unit in by_unit:
                    per_stratum.setdefault(stratum, []).append(_metrics(by_unit[unit], idx, zero_shot.get(unit)))
            for key in METRICS:
                means = []
                for values in per_stratum.values():
                    vals = [v[key] for v in values]
                    if any(v is None for v in vals):
                        means = None
                        break
                    means.append(sum(vals) / len(vals))
                if means:
                    out[method][key][b] = sum(means) / len(means)
    return out


def order_spread_bootstrap(finals: dict, *, replicates: int = 2000, seed: int = 0) -> dict | None:
    """How much of the order spread test and seed noise alone would give, and whether the orders differ.

    ``finals[order][seed][task]`` holds each test example's final score in [0, 1] (the last row of the run's
    matrix), for the seeds run under every order and the tasks every order has. Each replicate redraws,
    within every order, its seeds with replacement and, within every drawn seed and task, its examples with
    replacement (as bootstrap_metrics does), and recomputes every task's mean final score per order, then
    AOPD (the mean over tasks of max - min over orders).

    The noise floor is the spread the orders would show if they had the same true scores: per task and order
    the replicate's deviation from the observed mean, then its range over orders, averaged over tasks (the
    bootstrap recentred on the null). Returns the observed AOPD, the floor's mean and 95th percentile, and the
    one-sided p-value of the observed AOPD against the floor (its share of null replicates at least as large,
    counted with the observed one); and the same for MOPD against the widest spread noise alone gives
    (``mopd_noise``, ``mopd_noise_95``, ``mopd_p``). None with fewer than two orders.

    No interval is given for AOPD itself: a mean of ranges sits on its boundary at zero and runs high with
    noise, and neither the percentile nor the basic bootstrap interval held its level in simulation
    (bench/order_spread_calibration.py: over true AOPDs of 0, 5 and 15 points, the basic one covered the
    true value 82 to 87 times in 100 at a nominal 95, the percentile one 0 to 98; this test called the
    orders different 1 and 2 times in 100 at 0 and 5, and 100 times at 15)."""
    orders = sorted(finals, key=none_first)
    if len(orders) < 2:
        return None
    tasks = sorted(set.intersection(*(set(t) for o in orders for t in finals[o].values())))
    if not tasks:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty((len(orders), len(tasks), replicates))  # replicate 0 is the observed mean
    for a, order in enumerate(orders):
        seeds = sorted(finals[order])
        k = len(seeds)
        picks = rng.integers(k, size=(replicates, k))
        picks[0] = np.arange(k)
        for t, task in enumerate(tasks):
            # per drawn position and seed, an independent redraw of the seed's examples: a seed drawn twice in
            # one replicate gets two draws of its examples
            draws = np.empty((k, k, replicates))
            for si, s in enumerate(seeds):
                x = np.asarray(finals[order][s][task], dtype=np.float64)
                idx = rng.integers(len(x), size=(k, replicates, len(x)))
                draws[:, si, :] = x[idx].mean(axis=2)
                draws[:, si, 0] = x.mean()
            per_position = np.take_along_axis(draws, picks.T[:, None, :], axis=1)[:, 0, :]  # (k, replicates)
            means[a, t] = 100.0 * per_position.mean(axis=0)
    spreads = means[:, :, 0].max(axis=0) - means[:, :, 0].min(axis=0)
    observed, widest = float(spreads.mean()), float(spreads.max())
    deviations = means - means[:, :, :1]
    null_spreads = (deviations.max(axis=0) - deviations.min(axis=0))[:, 1:]  # (task, replicate)
    null, null_max = null_spreads.mean(axis=0), null_spreads.max(axis=0)
    return {"aopd": observed, "noise": float(null.mean()), "noise_95": float(np.percentile(null, 95)),
            "p": float((1 + np.sum(null >= observed)) / (1 + len(null))),
            # the same for MOPD: the widest task's spread against the widest spread noise alone gives
            "mopd": widest, "mopd_noise": float(null_max.mean()), "mopd_noise_95": float(np.percentile(null_max, 95)),
            "mopd_p": float((1 + np.sum(null_max >= widest)) / (1 + len(null_max))),
            "replicates": replicates - 1, "tasks": tasks}


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile at p (0.5 <= p < 1) with df >= 1 degrees of freedom: bisection on the CDF, whose
    density is integrated by Simpson's rule (to about 1e-5; numpy alone, no scipy)."""
    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(grid**2 / df))
        return 0.5 + (x / 12000.0) * (f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 4
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def unit_metrics(scores: Scores, zero_shot=None) -> dict[str, float | None]:
    """One run's metrics from its per-example scores, every example once (bootstrap_metrics' replicate 0)."""
    arrays = _arrays(scores)
    return _metrics(arrays, [slice(None)] * max(len(row) for row in arrays), zero_shot)


def runs_interval(diffs: dict, groups: dict) -> dict | None:
    """A 95% t-interval for a difference from its value in each run (``diffs[unit]``, units grouped into
    task orders by ``groups``): the estimate is the mean over orders of the mean over each order's runs, as
    the bootstrap's is; the spread of a run's difference is pooled within orders, with runs minus orders
    degrees of freedom. None with fewer degrees of freedom than one, or where a run's difference is
    undefined.

    Each run's difference is already paired over its test examples and carries their noise, so this
    interval counts the test examples' noise and the seeds' once each, and its t quantile pays for knowing
    the seeds' spread from a few runs, which a bootstrap over three seeds per order does not
    (bench/paired_calibration.py)."""
    if any(v is None or not np.isfinite(v) for v in diffs.values()):
        return None
    strata: dict = {}
    for unit, value in diffs.items():
        strata.setdefault(groups[unit], []).append(float(value))
    values = [np.asarray(v) for v in strata.values()]
    df = sum(len(v) for v in values) - len(values)
    if df < 1:
        return None
    resid = np.concatenate([v - v.mean() for v in values])
    var = float(resid @ resid) / df
    se = math.sqrt(var * sum(1.0 / len(v) for v in values)) / len(values)
    est = float(np.mean([v.mean() for v in values]))
    half = t_quantile(0.975, df) * se
    return {"diff": est, "lo": est - half, "hi": est + half, "se": se, "df": df,
            "detectable": (t_quantile(0.975, df) + t_quantile(0.8, df)) * se}


def paired_interval(x: np.ndarray, y: np.ndarray, runs: dict | None = None) -> dict | None:
    """The difference x - y (index 0 observed, the rest bootstrap replicates): estimate, 95% interval,
    standard error and the smallest difference detected 80% of the time. None where either metric is
    undefined.

    The interval is the bootstrap's percentile interval joined with ``runs`` (runs_interval over the same
    runs) where there is one: from the lower of the two lower ends to the higher of the two upper ends, and
    the detectable difference the larger of the two. A difference is called only where both intervals clear
    zero. In simulations of this project's claims grid (bench/paired_calibration.py: 2 orders, 3 seeds) the
    bootstrap alone covered the true difference 90 to 91 times in 100 where seeds vary as much as real ones
    do, the t-interval over runs 93 to 95, and the two joined 94 to 96."""
    if np.isnan(x[0]) or np.isnan(y[0]):
        return None
    diff = x - y
    reps = diff[1:][~np.isnan(diff[1:])]
    if len(reps) == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(reps, [2.5, 97.5]))
    se = float(np.std(reps, ddof=1)) if len(reps) > 1 else 0.0
    d = float(diff[0])
    lo, hi = min(lo, d), max(hi, d)
    out = {"diff": d, "lo": lo, "hi": hi, "se": se, "detectable": DETECT_FACTOR * se,
           "bootstrap": [lo, hi], "runs": None, "replicates": int(len(reps))}
    if runs is not None:
        out.update(lo=min(lo, runs["lo"]), hi=max(hi, runs["hi"]),
                   detectable=max(out["detectable"], runs["detectable"]),
                   runs={k: runs[k] for k in ("lo", "hi", "se", "df")})
    out["separated"] = bool(out["lo"] > 0 or out["hi"] < 0)
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts: b examples only the first method got
    right, c only the second (a binomial test of b against b + c at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def discordant(x: Sequence[float], y: Sequence[float]) -> tuple[int, int]:
    """(right only in x, right only in y) over paired 0/1 scores."""
    b = sum(1 for u, v in zip(x, y, strict=True) if u >= 1.0 and v < 1.0)
    c = sum(1 for u, v in zip(x, y, strict=True) if u < 1.0 and v >= 1.0)
    return b, c


def summarize(values: Sequence[float | None]) -> dict:
    """Mean and sample std (n-1; None with fewer than two values) of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    mean = sum(vals) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}
