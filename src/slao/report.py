"""``slao report``: the tables (rendered by slao.tables) and figures of a run or comparison folder."""

from __future__ import annotations

import re
from pathlib import Path

from slao.tables import comparison_table, results_table


def mean_results(name: str, runs: list[dict]) -> dict:
    """A results-like dict whose matrix is the mean over seeds, for results_table."""
    from slao.metrics import METRICS, all_metrics, mean_matrix
    from slao.stats import summarize

    first = runs[0]
    zero = [r.get("zero_shot") for r in runs]
    zero_mean = mean_matrix([[z] for z in zero])[0] if all(zero) else None
    seeds = ", ".join(str(r["seed"]) for r in runs)
    R = mean_matrix([r["accuracy"] for r in runs])
    return {**first, "method": name, "model": re.sub(r"\(seed=\d+\)$", "", first["model"]),
            "seed_label": f"seed {seeds}" if len(runs) == 1 else f"mean over seeds {seeds}",
            "accuracy": R, "zero_shot": zero_mean,
            # the mean of each run's metric, as in the comparison (forgetting is not linear in R)
            "metrics": {k: summarize([all_metrics(r["accuracy"], r.get("zero_shot"))[k] for r in runs])["mean"]
                        for k in METRICS}}


# -- slao report ---------------------------------------------------------------------------------------
def report_path(path: str | Path, echo=print) -> list[Path]:
    """Print the tables of a run or comparison folder and write its figures into PATH/figures/."""
    import json

    from slao.compare import load_comparison, write_comparison
    from slao.errors import DataError, SlaoError
    from slao.plots import remove_stale_figures, require_matplotlib, write_figures

    require_matplotlib()  # before anything is printed or rewritten
    path = Path(path)
    if not path.is_dir():
        raise SlaoError(f"{path} is not a folder; give the --output folder of slao run or slao compare")
    if (path / "comparison.json").exists():
        comp, runs = load_comparison(path)
        echo(comparison_table(comp))
        write_comparison(path, comp)  # the paired statistics, by this version's rules
        echo(f"(rewrote {path / 'comparison.md'} and comparison.json)")
        for name, results in runs.items():
            if results:
                echo("")
                echo(results_table(mean_results(name, results)))
        context = f"{comp['model']}, {comp['benchmark']}"
        paired = comp.get("paired")
        robustness = {name: e.get("order_robustness") for name, e in comp["methods"].items()}
    elif (path / "results.json").exists():
        try:
            results = json.loads((path / "results.json").read_text())
        except ValueError as err:
            raise DataError(f"{path / 'results.json'} is not valid JSON ({err})") from None
        echo(results_table(results))
        if not results.get("finished"):
            echo("(the run is not finished: the matrix holds the tasks done so far)")
        runs = {results["method"]: [results]}
        paired = robustness = None
        context = f"{results['model']}, {results['benchmark']}"
    else:
        raise SlaoError(f"{path} is neither a run folder (it has no results.json) nor a comparison folder "
                        "(no comparison.json); give the --output folder of slao run or slao compare")
    paths = write_figures(runs, path / "figures", context, paired, robustness)
    echo("figures:")
    for p in paths:
        echo(f"  {p}")
    stale = remove_stale_figures(path / "figures", paths)
    if stale:
        echo("removed, as the folder's runs no longer give them: " + ", ".join(p.name for p in stale))
    return paths
