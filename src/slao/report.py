"""Text tables of a run (accuracy matrix, zero-shot row, metrics) and of a comparison, and ``slao report``."""

from __future__ import annotations

import re
from pathlib import Path


def _cell(v, width: int = 8) -> str:
    return f"{'-' if v is None else f'{v:.1f}':>{width}}"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def results_table(results: dict) -> str:
    names = results["tasks"]
    width = max(8, min(16, max(len(n) for n in names) + 1))
    head = f"{'after task':<18}" + "".join(f"{_short(n, width - 1):>{width}}" for n in names)
    seeds = results.get("seed_label") or f"seed {results['seed']}"
    lines = [f"{results['method']} on {results['model']} ({results['benchmark']}, {seeds})",
             "accuracy (%): row = after training that task, column = task scored", head]
    for i, row in enumerate(results["accuracy"]):
        if all(v is None for v in row):
            continue
        lines.append(f"{f'{i + 1}. ' + _short(names[i], 14):<18}" + "".join(_cell(v, width) for v in row))
    if results.get("zero_shot"):
        lines.append(f"{'zero-shot':<18}" + "".join(_cell(v, width) for v in results["zero_shot"]))
    metrics = results.get("metrics") or {}
    if metrics:
        parts = [f"{k.upper() if k != 'forgetting' else 'F'} {'n/a' if v is None else f'{v:.1f}'}"
                 for k, v in metrics.items()]
        lines.append("metrics: " + ", ".join(parts) + "  (AA, BWT, forgetting, FWT in points)")
    sizes = [b for b in results.get("adapter_state_bytes") or [] if b is not None]
    if sizes:
        lines.append(f"adapter state: {sizes[-1] / 1e6:.2f} MB after the last task "
                     f"({sizes[0] / 1e6:.2f} MB after the first)")
    return "\n".join(lines)


# -- comparisons ------------------------------------------------------------------------------------
def comparison_table(comp: dict) -> str:
    """The comparison as aligned text: one row per method, mean ± std over seeds, then the noise verdicts."""
    from slao.compare import LABELS, METRICS, NOISE_RULE, format_bytes, format_stat, noise_lines

    head = ["method", "seeds"] + [LABELS[k] for k in METRICS] + ["adapter state", "train s", "eval s"]
    rows = [[name, str(len(e["seeds"]))] + [format_stat(e[k]) for k in METRICS]
            + [format_bytes(e["adapter_state_bytes"]), format_stat(e["train_seconds"]),
               format_stat(e["eval_seconds"])] for name, e in comp["methods"].items()]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if c == 0 else f"{{:>{w}}}" for c, w in enumerate(widths))
    lines = [f"comparison on {comp['model']} ({comp['benchmark']}), seeds {', '.join(map(str, comp['seeds']))}; "
             f"{comp['runs_done']} of {comp['runs_total']} runs finished",
             fmt.format(*head), *[fmt.format(*r) for r in rows],
             "metrics in points (mean ± sample std over seeds); times are totals per run in seconds",
             "noise: " + NOISE_RULE, *noise_lines(comp["noise"])]
    return "\n".join(lines)


def mean_results(name: str, runs: list[dict]) -> dict:
    """A results-like dict whose matrix is the mean over seeds, for results_table."""
    from slao.compare import METRICS, mean_matrix, summarize

    first = runs[0]
    zero = [r.get("zero_shot") for r in runs]
    zero_mean = mean_matrix([[z] for z in zero])[0] if all(zero) else None
    seeds = ", ".join(str(r["seed"]) for r in runs)
    R = mean_matrix([r["accuracy"] for r in runs])
    return {**first, "method": name, "model": re.sub(r"\(seed=\d+\)$", "", first["model"]),
            "seed_label": f"seed {seeds}" if len(runs) == 1 else f"mean over seeds {seeds}",
            "accuracy": R, "zero_shot": zero_mean,
            # the mean of each run's metric, as in the comparison (forgetting is not linear in R)
            "metrics": {k: summarize([(r.get("metrics") or {}).get(k) for r in runs])["mean"] for k in METRICS}}


# -- slao report ---------------------------------------------------------------------------------------
def report_path(path: str | Path, echo=print) -> list[Path]:
    """Print the tables of a run or comparison folder and write its figures into PATH/figures/."""
    import json

    from slao.compare import load_comparison
    from slao.errors import DataError, SlaoError
    from slao.plots import write_figures

    path = Path(path)
    if not path.is_dir():
        raise SlaoError(f"{path} is not a folder; give the --output folder of slao run or slao compare")
    if (path / "comparison.json").exists():
        comp, runs = load_comparison(path)
        echo(comparison_table(comp))
        for name, results in runs.items():
            if results:
                echo("")
                echo(results_table(mean_results(name, results)))
        context = f"{comp['model']}, {comp['benchmark']}"
    elif (path / "results.json").exists():
        try:
            results = json.loads((path / "results.json").read_text())
        except ValueError as err:
            raise DataError(f"{path / 'results.json'} is not valid JSON ({err})") from None
        echo(results_table(results))
        if not results.get("finished"):
            echo("(the run is not finished: the matrix holds the tasks done so far)")
        runs = {results["method"]: [results]}
        context = f"{results['model']}, {results['benchmark']}"
    else:
        raise SlaoError(f"{path} is neither a run folder (it has no results.json) nor a comparison folder "
                        "(no comparison.json); give the --output folder of slao run or slao compare")
    paths = write_figures(runs, path / "figures", context)
    echo("figures:")
    for p in paths:
        echo(f"  {p}")
    return paths
