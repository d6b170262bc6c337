"""Side-by-side comparison of methods over seeds: runs them under one config, aggregates their
results (mean, std, per-seed values) and judges which differences are within noise."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from slao import checkpoint
from slao.errors import ConfigError, DataError

METRICS = ("aa", "bwt", "forgetting", "fwt")
LABELS = {"aa": "AA", "bwt": "BWT", "forgetting": "F", "fwt": "FWT"}
# Forgetting is the only metric where smaller is better.
HIGHER_IS_BETTER = {"aa": True, "bwt": True, "forgetting": False, "fwt": True}
Z95 = 1.96


# -- parsing and validation ----------------------------------------------------------------------
def parse_methods(text: str) -> list[str]:
    """'slao,seq-lora' -> ['slao', 'seq-lora'], every name checked against the registry first."""
    from slao.methods import get_method

    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise ConfigError("slao compare needs --methods a,b,... (slao list shows the methods)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--methods names {', '.join(dupes)} more than once; give each method once")
    for name in names:
        get_method(name)  # raises ConfigError listing the valid names
    return names


def parse_seeds(text: str | None, default: int = 0) -> list[int]:
    if text is None:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs one or more distinct integers, e.g. 0,1,2; got {text!r}")
    return seeds


# -- pure aggregation ----------------------------------------------------------------------------
def summarize(values: Sequence[float | None]) -> dict:
    """Mean and sample std (n-1; None with fewer than two values) of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    mean = sum(vals) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def _final(values: Sequence | None):
    present = [v for v in values or [] if v is not None]
    return present[-1] if present else None


def _total(values: Sequence | None) -> float:
    return round(sum(v for v in values or [] if v is not None), 3)


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]]:
    """Elementwise mean of accuracy matrices; None wherever any of them is None."""
    if not matrices:
        return []
    out = []
    for rows in zip(*matrices, strict=True):
        out.append([None if any(v is None for v in cells) else sum(cells) / len(cells)
                    for cells in zip(*rows, strict=True)])
    return out


def task_test_counts(results: dict) -> dict[str, int]:
    return {name: int(info.get("test", 0)) for name, info in (results.get("task_info") or {}).items()}


def aggregate_method(runs: Sequence[dict]) -> dict:
    """One method's entry of comparison.json from its finished runs' results dicts."""
    out: dict = {"seeds": [r["seed"] for r in runs]}
    for key in METRICS:
        out[key] = summarize([(r.get("metrics") or {}).get(key) for r in runs])
    sizes = [_final(r.get("adapter_state_bytes")) for r in runs]
    out["adapter_state_bytes"] = max((s for s in sizes if s is not None), default=None)
    out["train_seconds"] = summarize([_total(r.get("train_seconds")) for r in runs])
    out["eval_seconds"] = summarize([_total(r.get("eval_seconds")) for r in runs])
    out["accuracy_mean"] = mean_matrix([r["accuracy"] for r in runs])
    counts = [sum(task_test_counts(r).values()) for r in runs]
    tasks = len(runs[0]["tasks"]) if runs else 0
    out["test_examples"] = counts[0] if counts else None  # all tasks together, per run
    out["test_per_task_mean"] = counts[0] / tasks if counts and tasks else None
    return out


def aggregate(runs: dict[str, Sequence[dict]], summary: dict) -> dict:
    """comparison.json: the config summary, then per method its aggregate (see aggregate_method)."""
    methods = {name: aggregate_method(list(rs)) for name, rs in runs.items()}
    return {**summary, "methods": methods, "noise": noise_flags(methods)}


# -- noise ---------------------------------------------------------------------------------------
NOISE_RULE = ("A difference to the best method is called within noise when it is no larger than the larger of "
              "two margins: the binomial 95% half-width 1.96·√(p(1−p)/n) in points (p the two methods' mean AA; "
              "n the total test examples for AA, the mean test examples per task for BWT, F and FWT), and, "
              "where both methods have two or more seeds, 2·std/√n summed over the two (n seeds; the "
              "intervals mean ± 2·std/√n overlap).")


def binomial_half_width(p: float, n: float) -> float:
    """95% half-width, in points, of an accuracy p (a fraction) measured on n examples."""
    if n <= 0:
        return math.inf
    p = min(max(p, 0.0), 1.0)
    return 100.0 * Z95 * math.sqrt(p * (1.0 - p) / n)


def _aa_fraction(entry: dict) -> float | None:
    mean = entry["aa"]["mean"]
    return None if mean is None else mean / 100.0


def compare_pair(metric: str, best: dict, other: dict) -> dict:
    """Is ``other``'s difference to ``best`` on ``metric`` within noise? See NOISE_RULE."""
    b, o = best[metric], other[metric]
    diff = o["mean"] - b["mean"]
    # Test-set sampling noise, which a few seeds with a small std must not talk away.
    ps = [p for p in (_aa_fraction(best), _aa_fraction(other)) if p is not None]
    p = sum(ps) / len(ps) if ps else 0.5  # without an AA, the widest interval
    key = "test_examples" if metric == "aa" else "test_per_task_mean"
    ns = [x for x in (best.get(key), other.get(key)) if x]
    margin, rule = (binomial_half_width(p, min(ns)) if ns else math.inf), "binomial"
    if b["n"] >= 2 and o["n"] >= 2 and b["std"] is not None and o["std"] is not None:
        seeds = 2 * b["std"] / math.sqrt(b["n"]) + 2 * o["std"] / math.sqrt(o["n"])
        if seeds > margin:
            margin, rule = seeds, "seeds"
    return {"diff": diff, "margin": margin, "rule": rule, "within_noise": abs(diff) <= margin}


def noise_flags(methods: dict[str, dict]) -> dict[str, dict]:
    """Per metric: the best method and, for every other method, its difference and the noise verdict."""
    out = {}
    for metric in METRICS:
        present = {m: e for m, e in methods.items() if e[metric]["mean"] is not None}
        if not present:
            continue
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        best = max(present, key=lambda m: sign * present[m][metric]["mean"])
        others = {m: compare_pair(metric, present[best], e) for m, e in present.items() if m != best}
        out[metric] = {"best": best, "best_mean": present[best][metric]["mean"],
                       "higher_is_better": HIGHER_IS_BETTER[metric], "others": others}
    return out


# -- Markdown --------------------------------------------------------------------------------------
def format_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    if n < 1e6:
        return f"{n / 1e3:.1f} KB"
    return f"{n / 1e6:.2f} MB"


def format_stat(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return "n/a"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def noise_lines(noise: dict) -> list[str]:
    lines = []
    for metric, verdict in noise.items():
        word = "highest" if verdict["higher_is_better"] else "lowest"
        if verdict["others"] and all(v["diff"] == 0 for v in verdict["others"].values()):
            lines.append(f"- {LABELS[metric]}: all methods score {verdict['best_mean']:.1f}; nothing to rank.")
            continue
        parts = [f"{m} {v['diff']:+.1f} ({'within noise' if v['within_noise'] else 'beyond noise'}, "
                 f"margin {v['margin']:.1f} by {v['rule']})" for m, v in verdict["others"].items()]
        tail = "; ".join(parts) if parts else "no other method to compare"
        lines.append(f"- {LABELS[metric]}: {verdict['best']} is {word} ({verdict['best_mean']:.1f}); {tail}.")
    return lines


def comparison_markdown(comp: dict) -> str:
    seeds = ", ".join(map(str, comp["seeds"]))
    lines = [f"# Comparison: {', '.join(comp['methods'])}", "",
             f"Model {comp['model']}, benchmark {comp['benchmark']}, tasks {', '.join(comp['tasks'] or [])}; "
             f"train_per_task {comp['train_per_task']}, test_per_task {comp['test_per_task']}; seeds {seeds} "
             f"({comp['runs_done']} of {comp['runs_total']} runs finished).", "",
             "| method | seeds | AA | BWT | F | FWT | adapter state | train s | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in comp["methods"].items():
        cells = [name, str(len(e["seeds"]))] + [format_stat(e[k]) for k in METRICS]
        cells += [format_bytes(e["adapter_state_bytes"]), format_stat(e["train_seconds"]),
                  format_stat(e["eval_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AA, BWT, F (forgetting) and FWT in points, mean ± sample std over seeds; times are totals "
              "per run in seconds.", "", "## Noise", "", NOISE_RULE, ""]
    lines += noise_lines(comp["noise"]) or ["- no finished runs yet."]
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------------
def run_folder(out: Path, method: str, seed: int) -> Path:
    return Path(out) / method / f"seed-{seed}"


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


def config_summary(cfg, methods: Sequence[str], seeds: Sequence[int], tasks: list[str] | None) -> dict:
    return {"model": cfg.model, "benchmark": cfg.benchmark, "tasks": tasks,
            "train_per_task": cfg.data.train_per_task, "test_per_task": cfg.data.test_per_task,
            "seeds": list(seeds), "methods": list(methods)}


def write_comparison(out: Path, comp: dict) -> None:
    checkpoint.write_atomic(Path(out) / "comparison.json", json.dumps(comp, indent=1) + "\n")
    checkpoint.write_atomic(Path(out) / "comparison.md", comparison_markdown(comp))


def run_comparison(cfg, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
                   echo: Callable = print, runner: Callable | None = None) -> dict:
    """Run every method for every seed into ``out/<method>/seed-<n>/`` under one config; finished runs
    are read back, not rerun. comparison.json/.md are rewritten after every finished run."""
    from slao.harness import run_experiment
    from slao.methods import get_method
    from slao.tasks import resolve_task_names

    runner = runner or run_experiment
    for name in methods:  # all names before any run starts
        get_method(name)
    out = Path(out)
    tasks = resolve_task_names(cfg)
    done: dict[str, list[dict]] = {m: [] for m in methods}
    total, count = len(methods) * len(seeds), 0
    # Seeds outermost, so an interrupted comparison holds every method for the first seeds.
    for seed in seeds:
        for name in methods:
            count += 1
            run_cfg = dataclasses.replace(cfg, seed=seed, method=dataclasses.replace(cfg.method, name=name))
            folder = run_folder(out, name, seed)
            results = _finished_results(folder, run_cfg)
            if results is None:
                echo(f"[{count}/{total}] {name}, seed {seed} -> {folder}")
                results = runner(run_cfg, folder)
            else:
                echo(f"[{count}/{total}] {name}, seed {seed}: finished earlier, read from {folder}")
            done[name].append(results)
            tasks = tasks or results["tasks"]
            summary = config_summary(cfg, methods, seeds, tasks)
            comp = aggregate(done, {**summary, "runs_done": count, "runs_total": total})
            write_comparison(out, comp)
    return comp


def load_comparison(folder: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """comparison.json and each method's finished results (in seed order) from a comparison folder."""
    folder = Path(folder)
    comp = json.loads((folder / "comparison.json").read_text())
    comp["noise"] = noise_flags(comp["methods"])  # judged afresh, by the rule of this version
    runs: dict[str, list[dict]] = {}
    for name, entry in comp["methods"].items():
        runs[name] = []
        for seed in entry["seeds"]:
            path = run_folder(folder, name, seed) / "results.json"
            try:
                runs[name].append(json.loads(path.read_text()))
            except (OSError, ValueError) as err:
                raise DataError(f"{path} is listed in {folder / 'comparison.json'} but cannot be read ({err}); "
                                "rerun the same slao compare command to redo it") from None
    return comp, runs
