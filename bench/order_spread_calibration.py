"""How the order-robustness statistics behave on data whose true AOPD is known (no model; seconds).

Each simulated grid has 8 tasks, 2 orders and 3 seeds with 48 test examples a task; a task's true rate
under order 2 is its order-1 rate moved by +d or -d (alternating), so the true AOPD is 100 d; each seed
moves every rate by its own noise (sd 0.04), as training seeds do. For every setting it prints how often
slao.stats.order_spread_bootstrap calls the orders different (p < 0.05: its false-call rate at d = 0, its
power above) and how often two would-be 95% intervals for AOPD cover the true value: the percentile
interval of the replicates' AOPD, and the basic interval (the percentiles reflected about the estimate).

    python bench/order_spread_calibration.py [--grids 100] [--replicates 400]
"""

from __future__ import annotations

import argparse

import numpy as np

from slao import stats


def grid(rng, true: dict, seeds: int, n: int, seed_sd: float) -> dict:
    finals = {}
    for order, rates in true.items():
        finals[order] = {}
        for s in range(seeds):
            p = np.clip(rates + rng.normal(0.0, seed_sd, size=len(rates)), 0.0, 1.0)
            finals[order][s] = {f"t{t}": (rng.random(n) < p[t]).astype(float).tolist() for t in range(len(rates))}
    return finals


def replicate_aopds(finals: dict, replicates: int, seed: int) -> np.ndarray:
    """The AOPD of each bootstrap replicate, drawn as order_spread_bootstrap draws them (for the intervals)."""
    rng = np.random.default_rng(seed)
    orders = sorted(finals)
    tasks = sorted(next(iter(finals[orders[0]].values())))
    means = np.empty((len(orders), len(tasks), replicates))
    for a, order in enumerate(orders):
        seeds = sorted(finals[order])
        k = len(seeds)
        picks = rng.integers(k, size=(replicates, k))
        for t, task in enumerate(tasks):
            draws = np.empty((k, k, replicates))  # (position, seed, replicate): independent example redraws
            for si, s in enumerate(seeds):
                x = np.asarray(finals[order][s][task])
                draws[:, si, :] = x[rng.integers(len(x), size=(k, replicates, len(x)))].mean(axis=2)
            chosen = np.take_along_axis(draws, picks.T[:, None, :], axis=1)[:, 0, :]
            means[a, t] = 100.0 * chosen.mean(axis=0)
    return (means.max(axis=0) - means.min(axis=0)).mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, default=100)
    parser.add_argument("--replicates", type=int, default=400)
    opts = parser.parse_args()
    rng = np.random.default_rng(7)
    print(f"{opts.grids} simulated grids per row, {opts.replicates} bootstrap replicates each")
    print(f"{'true AOPD':>10} {'called differ':>14} {'percentile covers':>18} {'basic covers':>13}")
    for d in (0.0, 0.05, 0.15):
        base = rng.uniform(0.2, 0.8, size=8)
        shift = np.where(np.arange(8) % 2 == 0, d, -d)
        true = {1: base, 2: np.clip(base + shift, 0.0, 1.0)}
        true_aopd = 100.0 * float(np.mean(np.abs(true[2] - true[1])))
        called = pct = basic = 0
        for k in range(opts.grids):
            finals = grid(rng, true, seeds=3, n=48, seed_sd=0.04)
            boot = stats.order_spread_bootstrap(finals, replicates=opts.replicates, seed=k)
            called += boot["p"] < 0.05
            reps = replicate_aopds(finals, opts.replicates, seed=10_000 + k)
            q_lo, q_hi = np.percentile(reps, [2.5, 97.5])
            pct += q_lo <= true_aopd <= q_hi
            lo, hi = max(0.0, 2 * boot["aopd"] - q_hi), max(0.0, 2 * boot["aopd"] - q_lo)
            basic += lo <= true_aopd <= hi
        n = opts.grids
        print(f"{true_aopd:>10.1f} {called:>7}/{n:<6} {pct:>11}/{n:<6} {basic:>6}/{n:<6}")


if __name__ == "__main__":
    main()
