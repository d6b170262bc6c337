"""The SLAO paper's five claims, each tested on a folder of runs with paired statistics (``slao claims``).

A claim is marked *supported* only when its paired 95% interval excludes zero in the claimed direction
(for the claim about multi-task training: excludes the stated margin), *not supported* when the interval
excludes it the other way, and *not detectable at this scale* otherwise, with the smallest difference
the setting would have detected. The state claim is a measurement without noise (bytes), checked exactly.

The folder is a ``slao compare`` output folder: every method or variant in its own sub-folder
(``slao``, ``slao+init=merged``, ``seq-lora``, ...), run folders by seed (and order) below it. Runs made
by several ``slao compare`` commands into one folder (a grid split over sessions, variants added later)
are all read: a pair is compared on the (order, seed) runs both sides have.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from slao.compare import BOOTSTRAP_REPLICATES, paired_comparisons
from slao.errors import DataError
from slao.stats import none_first
from slao.variants import label_of, method_spec

# The paper's average accuracy (Llama-2-7B-chat, mean over task orders; design.md §2): SLAO and the
# multi-task upper bound, per benchmark.
PAPER_AA = {"standard": (80.4, 80.9), "long": (74.8, 78.1), "superni": (37.2, 45.2)}
# Sequential LoRA on SuperNI in the paper's main table (quoted in the issue that asked for this ledger).
PAPER_SEQ_LORA = {"superni": 22.6}
ASYMMETRIC_OFF = "slao(a_rule=interpolate)"  # A and B merged alike: OPCM's rule on LoRA factors (design.md §2)
INIT_VARIANTS = ("slao(init=merged)", "slao(init=random)")


def _shared_settings(config: dict) -> dict:
    """A run's settings less what may differ between the cells of one comparison: the method (and its
    options), the seed and the task order."""
    return {k: v for k, v in config.items() if k not in ("method", "seed", "order")}


def read_runs(folder: str | Path) -> dict[str, list[dict]]:
    """Every finished run under a comparison folder, by method label (variants by their label). All must
    share one config apart from the method, seed and order, or the pairs would compare unlike runs."""
    import yaml

    from slao.harness import config_differences

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a slao compare output folder")
    runs: dict[str, list[dict]] = {}
    first: tuple[Path, dict] | None = None
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "figures"):
        for path in sorted([*sub.glob("seed-*/results.json"), *sub.glob("order-*/seed-*/results.json")]):
            try:
                results = json.loads(path.read_text())
                config = yaml.safe_load((path.parent / "config.yaml").read_text()) or {}
            except (OSError, ValueError, yaml.YAMLError) as err:
                raise DataError(f"{path.parent} cannot be read ({err}); rerun its slao compare cell") from None
            if not (isinstance(results, dict) and results.get("finished")):
                continue
            if first is None:
                first = (path.parent, _shared_settings(config))
            elif diff := config_differences(first[1], _shared_settings(config)):
                raise DataError(f"{path.parent} was run under other settings than {first[0]} ({diff[0]}); "
                                "claims compare runs of one configuration: keep each in its own folder")
            runs.setdefault(label_of(sub.name), []).append(results)
    if not runs:
        raise DataError(f"no finished run under {folder}; run slao compare into it first")
    return runs


def _pair(runs: dict[str, list[dict]], x: str, y: str, replicates: int) -> dict | None:
    """The paired AA interval of x − y over the runs both have (None when either has none)."""
    if not runs.get(x) or not runs.get(y):
        return None
    pair = paired_comparisons({x: runs[x], y: runs[y]}, replicates).get("pairs", {}).get(f"{x} vs {y}")
    if not pair or pair.get("aa") is None:
        return None
    return {**pair["aa"], "units": pair["units"]}


def _side(iv: dict, margin: float = 0.0) -> int:
    """+1 when the interval lies above ``margin``, -1 when below it, 0 when it holds it."""
    return 1 if iv["lo"] > margin else -1 if iv["hi"] < margin else 0


def _interval(iv: dict | None) -> str:
    return "n/a" if iv is None else f"{iv['diff']:+.1f} [{iv['lo']:+.1f}, {iv['hi']:+.1f}]"


def _by_order(units) -> dict:
    seeds: dict = {}
    for order, seed in units:
        seeds.setdefault(order, []).append(seed)
    return seeds


def _part_filled(iv: dict) -> bool:
    """Whether the pair's runs cover some order with fewer seeds than another (a grid being filled)."""
    return len({tuple(sorted(s)) for s in _by_order(iv["units"]).values()}) > 1


def _runs_note(iv: dict) -> str:
    units = iv["units"]
    seeds = _by_order(units)
    if _part_filled(iv):  # say which seeds each order has: the orders do not weigh alike
        return f"{len(units)} paired runs, part-filled: " + "; ".join(
            f"{'no order' if o is None else f'order {o}'} seed{'s' * (len(seeds[o]) > 1)} "
            f"{', '.join(map(str, sorted(seeds[o])))}" for o in sorted(seeds, key=none_first))
    orders = sorted(o for o in seeds if o is not None)
    where = f", order{'s' * (len(orders) > 1)} {', '.join(map(str, orders))}" if orders else ""
    return f"{len(units)} paired runs{where}"


PROVISIONAL = " (provisional: {} on a part-filled grid, see below)"


def _mean_aa(rs: Sequence[dict]) -> float | None:
    values = [r["metrics"]["aa"] for r in rs if (r.get("metrics") or {}).get("aa") is not None]
    return sum(values) / len(values) if values else None


def _unit(r: dict) -> tuple:
    return (r.get("order"), r["seed"])


def _shared_means(runs: dict[str, list[dict]], names: Sequence[str]) -> tuple[list[float | None], int]:
    """Each method's mean AA over the (order, seed) runs all of ``names`` have, and how many those are: a
    grid filled in pieces holds more runs of one method than of another, and means over unlike runs (another
    task order, other seeds) are not like for like. The paired intervals use the same runs."""
    shared = set.intersection(*({_unit(r) for r in runs[n]} for n in names))
    return [_mean_aa([r for r in runs[n] if _unit(r) in shared]) for n in names], len(shared)


def _fewer(n: int, runs: dict[str, list[dict]]) -> str:
    m = len(runs["slao"])
    return "" if n == m else f" (over the {n} run{'s' * (n != 1)} both have; SLAO has {m})"


def _best(names: Sequence[str], runs: dict[str, list[dict]]) -> str:
    """The baseline closest to SLAO (or furthest above it) on the runs each shares with SLAO, with both
    means over those runs."""
    means = {n: _shared_means(runs, ["slao", n]) for n in names}
    best = max(names, key=lambda n: (means[n][0][1] or 0.0) - (means[n][0][0] or 0.0))
    (sx, sy), n = means[best]
    return f"SLAO {sx:.1f}; best baseline {best} {sy:.1f}" + _fewer(n, runs)


def _all_better(claim: dict, pairs: list[tuple[str, dict | None]], missing: list[str]) -> dict:
    """SLAO against each of several: supported when every interval is above zero and none is missing."""
    tested = [(y, iv) for y, iv in pairs if iv is not None]
    missing = missing + [y for y, iv in pairs if iv is None]
    for y, iv in tested:
        word = {1: "SLAO better", -1: f"{y} better", 0: f"none detected (±{iv['detectable']:.1f})"}[_side(iv)]
        claim["evidence"].append(f"slao − {y}: {_interval(iv)}, {_runs_note(iv)}: {word}")
    if missing:
        claim["evidence"].append("not run: " + ", ".join(missing))
    if not tested:
        return {**claim, "verdict": "not tested (no runs)", "interval": "n/a"}
    closest = min(tested, key=lambda p: p[1]["diff"])
    claim["interval"] = f"slao − {closest[0]}: {_interval(closest[1])}"
    sides = [_side(iv) for _, iv in tested]
    if -1 in sides:
        worse = [y for (y, iv), s in zip(tested, sides, strict=True) if s == -1]
        verdict = f"not supported ({', '.join(worse)} above SLAO)"
    elif 0 in sides:
        undetected = [(y, iv) for (y, iv), s in zip(tested, sides, strict=True) if s == 0]
        verdict = ("not detectable at this scale: no difference detected against "
                   + ", ".join(f"{y} (detects ±{iv['detectable']:.1f})" for y, iv in undetected))
    elif missing:
        verdict = f"not yet tested in full ({len(tested)} of {len(tested) + len(missing)} run; all SLAO better)"
    else:
        verdict = "supported"
    if missing and not verdict.startswith("not yet"):
        verdict += f"; {len(missing)} not yet run"
    if part := [y for y, iv in tested if _part_filled(iv)]:
        verdict += PROVISIONAL.format(", ".join(part))
    return {**claim, "verdict": verdict}


def _pair_means(runs: dict[str, list[dict]], y: str, name: str) -> str:
    (sx, sy), n = _shared_means(runs, ["slao", y])
    return "no run in common with SLAO" if not n else f"SLAO {sx:.1f}, {name} {sy:.1f}" + _fewer(n, runs)


def _init_means(runs: dict[str, list[dict]], have: Sequence[str]) -> str:
    """SLAO and each init variant, over the runs all of them share; pair by pair where those differ."""
    if not have:
        return f"SLAO {_mean_aa(runs['slao']):.1f}"
    means, n = _shared_means(runs, ["slao", *have])
    if n and all(_shared_means(runs, ["slao", v])[1] == n for v in have):
        return ", ".join([f"SLAO {means[0]:.1f}"] + [f"{method_spec(v)[1]['init']} {m:.1f}"
                                                     for v, m in zip(have, means[1:], strict=True)]) + _fewer(n, runs)
    return "; ".join(_pair_means(runs, v, method_spec(v)[1]["init"]) for v in have)


def ledger(runs: dict[str, list[dict]], replicates: int = BOOTSTRAP_REPLICATES,
           mtl_margin: float | None = None) -> dict:
    """The five claims with the paper's number, ours, the paired interval and a verdict each."""
    import slao.methods  # noqa: F401 - fills the registry
    from slao.methods import get_method
    from slao.methods.base import METHODS

    if not runs.get("slao"):
        raise DataError("the folder has no finished run of slao (plain, not a variant); run it first")
    slao = runs["slao"]
    benchmark = slao[0].get("benchmark")
    paper = PAPER_AA.get(benchmark)
    claims = []

    # 1. every data-free baseline, on AA (oracles and multi-task training are bounds, not baselines)
    baselines = sorted(n for n, m in METHODS.items()
                       if n != "slao" and m.data_free and not m.multi_task and not m.oracle)
    present = [n for n in baselines if n in runs]
    claim = {"id": "data-free", "claim": "SLAO beats every data-free baseline on AA", "evidence": [],
             "paper": (f"SLAO {paper[0]}" if paper else "n/a")
             + (f", sequential LoRA {PAPER_SEQ_LORA[benchmark]}" if benchmark in PAPER_SEQ_LORA else ""),
             "ours": _best(present, runs) if present else f"SLAO {_mean_aa(slao):.1f}"}
    claims.append(_all_better(claim, [(y, _pair(runs, "slao", y, replicates)) for y in present],
                              [n for n in baselines if n not in runs]))

    # 2. close to multi-task training: within a margin, by default the paper's own gap on this benchmark
    margin = mtl_margin if mtl_margin is not None else (round(paper[1] - paper[0], 1) if paper else None)
    iv = _pair(runs, "slao", "mtl", replicates)
    claim = {"id": "mtl", "claim": "SLAO comes close to multi-task training (within the margin below, on AA)",
             "paper": f"SLAO {paper[0]}, MTL {paper[1]} (gap {paper[1] - paper[0]:.1f})" if paper else "n/a",
             "ours": _pair_means(runs, "mtl", "MTL") if "mtl" in runs else "MTL not run",
             "interval": f"slao − mtl: {_interval(iv)}", "evidence": []}
    if iv is None or margin is None:
        claim["verdict"] = "not tested (" + ("no mtl runs" if iv is None else "no margin: give --mtl-margin") + ")"
    else:
        side = _side(iv, -margin)
        claim["verdict"] = {1: f"supported (SLAO within {margin:.1f} points of MTL)",
                            -1: f"not supported (SLAO more than {margin:.1f} points below MTL)",
                            0: f"not detectable at this scale: the interval holds −{margin:.1f}"}[side]
        if _part_filled(iv):
            claim["verdict"] += PROVISIONAL.format("mtl")
        claim["evidence"].append(f"margin {margin:.1f} points" + (" (the paper's gap on this benchmark)"
                                                                   if mtl_margin is None else " (given)")
                                 + f"; {_runs_note(iv)}")
        if "seq-lora" in runs:
            (s_aa, seq_aa, mtl_aa), n = _shared_means(runs, ["slao", "seq-lora", "mtl"])
            if n and None not in (s_aa, seq_aa, mtl_aa) and mtl_aa != seq_aa:
                closed = (s_aa - seq_aa) / (mtl_aa - seq_aa)
                claim["evidence"].append(f"SLAO closes {100 * closed:.0f}% of sequential LoRA's gap to MTL "
                                         f"(means over the {n} runs all three have)")
    claims.append(claim)

    # 3. the asymmetric merge (A replaced, B interpolated) against merging A and B alike
    claim = {"id": "asymmetric", "claim": "the asymmetric merge beats treating A and B alike",
             "paper": "stated as better (its ablation; numbers not in design.md)",
             "ours": (_pair_means(runs, ASYMMETRIC_OFF, "A and B alike")
                      if ASYMMETRIC_OFF in runs else "variant not run"), "evidence": []}
    claims.append(_all_better(claim, [(ASYMMETRIC_OFF, _pair(runs, "slao", ASYMMETRIC_OFF, replicates))]
                              if ASYMMETRIC_OFF in runs else [], [] if ASYMMETRIC_OFF in runs else [ASYMMETRIC_OFF]))

    # 4. initialising from the last fine-tuned LoRA against the merged one and a random one
    have = [v for v in INIT_VARIANTS if v in runs]
    claim = {"id": "init", "claim": "initialising from the last fine-tuned LoRA beats the merged and a random one",
             "paper": "stated as better (its ablation; numbers not in design.md)",
             "ours": _init_means(runs, have), "evidence": []}
    claims.append(_all_better(claim, [(v, _pair(runs, "slao", v, replicates)) for v in have],
                              [v for v in INIT_VARIANTS if v not in runs]))

    # 5. the state kept between tasks is constant in the number of tasks (bytes: exact, no interval)
    sizes = [r.get("adapter_state_bytes") or [] for r in slao]
    flat = [b for s in sizes for b in s if b is not None]
    T = len(slao[0]["tasks"])
    growth = max(flat) - min(flat) if flat else None
    growing = sorted(((rs[0]["adapter_state_bytes"][-1] - rs[0]["adapter_state_bytes"][0], n)
                      for n, rs in runs.items() if "(" not in n and get_method(method_spec(n)[0]).grows
                      and all(b is not None for b in rs[0].get("adapter_state_bytes") or [None])), reverse=True)
    claim = {"id": "constant", "claim": "SLAO's state stays constant in the number of tasks",
             "paper": "constant memory (design.md §2)",
             "ours": (f"{flat[0] / 1e6:.2f} MB after task 1 and after task {T}, all {len(slao)} runs"
                      if flat else "no sizes recorded"),
             "interval": "exact: " + (f"{growth:+d} bytes from task 1 to task {T}" if flat else "n/a"),
             "evidence": [f"{n} grows by {g / 1e6:.2f} MB over {T} tasks" for g, n in growing[:3]]}
    if not flat:
        claim["verdict"] = "not tested (no sizes recorded)"
    else:
        claim["verdict"] = "supported (measured exactly)" if growth == 0 else "not supported (the state changes)"
    claims.append(claim)

    commits = sorted({(r.get("versions") or {}).get("git_commit") or "unknown" for rs in runs.values() for r in rs})
    return {"benchmark": benchmark, "model": slao[0].get("model"), "replicates": replicates,
            "commits": commits, "claims": claims}


def ledger_markdown(led: dict) -> str:
    """The ledger as docs/results.md shows it: one row per claim, then the evidence of each."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| claim | paper (Llama-2-7B-chat) | ours | paired 95% interval (AA points) | verdict |",
             "|---|---|---|---|---|"]
    for c in led["claims"]:
        lines.append("| " + " | ".join(cell(c[k]) for k in ("claim", "paper", "ours", "interval", "verdict")) + " |")
    lines += ["", f"Model {led['model']}, benchmark {led['benchmark']}; intervals from a paired bootstrap "
              f"({led['replicates']} replicates) joined with a t-interval over the runs' differences, on the runs "
              "both sides have; code of commit(s) "
              + ", ".join(c[:7] for c in led["commits"]) + ".", ""]
    for c in led["claims"]:
        if c["evidence"]:
            lines.append(f"- {c['claim']}: " + "; ".join(c["evidence"]) + ".")
    return "\n".join(lines) + "\n"


def write_ledger(folder: str | Path, replicates: int = BOOTSTRAP_REPLICATES,
                 mtl_margin: float | None = None) -> tuple[dict, str]:
    """The ledger of a comparison folder, written to FOLDER/claims.json and claims.md."""
    from slao.checkpoint import write_atomic

    led = ledger(read_runs(folder), replicates, mtl_margin)
    text = ledger_markdown(led)
    write_atomic(Path(folder) / "claims.json", json.dumps(led, indent=1) + "\n")
    write_atomic(Path(folder) / "claims.md", text)
    return led, text
