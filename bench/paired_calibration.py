"""How the paired interval of `slao compare` behaves on grids whose true AA difference is known (no model).

A simulated grid has the claims protocol's shape: 2 task orders x 3 seeds, 8 tasks of 48 test examples,
and each seed draws its own test examples (as slao's data sampling does). Two methods are scored on the
same examples: an example has a difficulty u ~ U(0, 1) and a method gets it right when u is below the
method's rate on that task; the two methods share an example's difficulty on a share `--agree` of the
examples and draw their own elsewhere, so they agree on most examples, as real pairs do. A method's rate on a
task is the task's base rate plus the true difference (for x) plus the seed's training noise (normal, sd
`--seed-sd`, drawn per method, seed and task). The true AA difference is therefore 100 d exactly.

slao's paired bootstrap redraws seeds within each order and then examples within each drawn run. With test
examples drawn per seed, a seed's difference already carries its examples' noise, so the second redraw
counts that noise again, while redrawing 3 seeds understates their spread and knows nothing of how little
3 seeds say about it. For every setting the script prints how often each of these 95% intervals covers the
true difference, how often it calls a difference (an interval clear of zero) and its mean width: the
bootstrap alone; the estimate plus or minus the bootstrap's standard error times t's 97.5% point at 4
degrees of freedom (six runs, two order means); a bootstrap of seeds alone (examples kept); the t-interval
over the six runs' differences (slao.stats.runs_interval); and the two joined, which is what slao reports
(slao.stats.paired_interval with the runs: from the lower of the two lower ends to the higher of the two
upper ends).

    python bench/paired_calibration.py [--grids 200] [--replicates 500] [--seed-sd 0.02 0.05] [--agree 0.7]
"""

from __future__ import annotations

import argparse

import numpy as np

from slao import stats

ORDERS, SEEDS, TASKS, N = (1, 2), (0, 1, 2), 8, 48
T_975_DF4 = stats.t_quantile(0.975, 4)


def grid(rng, d: float, seed_sd: float, agree: float):
    """Per-example scores of x and y for every (order, seed): final row only (AA reads the last row)."""
    base = rng.uniform(0.2, 0.7, size=TASKS)
    scores = {"x": {}, "y": {}}
    for order in ORDERS:
        for seed in SEEDS:
            u = rng.random((TASKS, N))
            shared = rng.random((TASKS, N)) < agree  # elsewhere the two methods get their own difficulty
            uy = np.where(shared, u, rng.random((TASKS, N)))
            px = np.clip(base + d + rng.normal(0.0, seed_sd, TASKS), 0.0, 1.0)
            py = np.clip(base + rng.normal(0.0, seed_sd, TASKS), 0.0, 1.0)
            for name, p, v in (("x", px, u), ("y", py, uy)):
                final = [list((v[j] < p[j]).astype(float)) for j in range(TASKS)]
                scores[name][(order, seed)] = [[None] * TASKS] * (TASKS - 1) + [final]
    return scores


def unit_diffs(scores) -> dict:
    """AA of x minus AA of y per run, in points."""
    return {u: 100.0 * (np.mean(scores["x"][u][-1]) - np.mean(scores["y"][u][-1])) for u in scores["x"]}


def seeds_only(diffs: dict, replicates: int, rng) -> tuple[float, float]:
    per_order = [np.array([diffs[(o, s)] for s in SEEDS]) for o in ORDERS]
    reps = np.mean([v[rng.integers(len(v), size=(replicates, len(v)))].mean(axis=1) for v in per_order], axis=0)
    return tuple(np.percentile(reps, [2.5, 97.5]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, default=200)
    parser.add_argument("--replicates", type=int, default=500)
    parser.add_argument("--seed-sd", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--true", type=float, nargs="+", default=[0.0, 3.0, 6.0], help="true differences, points")
    parser.add_argument("--agree", type=float, default=0.7,
                        help="share of examples whose difficulty the two methods share")
    opts = parser.parse_args()
    rng = np.random.default_rng(11)
    groups = {(o, s): o for o in ORDERS for s in SEEDS}
    print(f"{opts.grids} simulated grids per row, {opts.replicates} bootstrap replicates each; 2 orders x 3 seeds, "
          f"{TASKS} tasks x {N} test examples")
    heads = {"boot": "bootstrap alone: covers", "boot-t": "its SE x t(4): covers", "seeds": "seeds only: covers",
             "t": "t over runs: covers", "slao": "joined (slao): covers"}
    print(f"{'seed sd':>7} {'true':>5} | " + " | ".join(f"{h} {'calls':>5} {'width':>5}" for h in heads.values()))
    for seed_sd in opts.seed_sd:
        for d in (t / 100 for t in opts.true):
            tally = {k: [0, 0, 0.0] for k in heads}
            for g in range(opts.grids):
                scores = grid(rng, d, seed_sd, opts.agree)
                boot = stats.bootstrap_metrics(scores, groups, replicates=opts.replicates + 1, seed=g)
                diffs = unit_diffs(scores)
                runs = stats.runs_interval(diffs, groups)
                alone = stats.paired_interval(boot["x"]["aa"], boot["y"]["aa"])
                joined = stats.paired_interval(boot["x"]["aa"], boot["y"]["aa"], runs)
                half = T_975_DF4 * alone["se"]
                for key, (lo, hi) in (("boot", (alone["lo"], alone["hi"])),
                                      ("boot-t", (alone["diff"] - half, alone["diff"] + half)),
                                      ("seeds", seeds_only(diffs, opts.replicates, rng)),
                                      ("t", (runs["lo"], runs["hi"])),
                                      ("slao", (joined["lo"], joined["hi"]))):
                    tally[key][0] += lo <= 100 * d <= hi
                    tally[key][1] += lo > 0 or hi < 0
                    tally[key][2] += (hi - lo) / opts.grids
            row = " | ".join(f"{f'{c}/{opts.grids}':>{len(heads[k]) - 1}} {n:>5} {w:>5.1f}"
                             for k, (c, n, w) in tally.items())
            print(f"{seed_sd:>7} {100 * d:>5.1f} | {row}")


if __name__ == "__main__":
    main()
