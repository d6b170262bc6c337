"""Text tables of a run's results: the accuracy matrix, the zero-shot row and the metrics."""

from __future__ import annotations


def _cell(v, width: int = 8) -> str:
    return f"{'-' if v is None else f'{v:.1f}':>{width}}"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def results_table(results: dict) -> str:
    names = results["tasks"]
    width = max(8, min(16, max(len(n) for n in names) + 1))
    head = f"{'after task':<18}" + "".join(f"{_short(n, width - 1):>{width}}" for n in names)
    lines = [f"{results['method']} on {results['model']} ({results['benchmark']}, seed {results['seed']})",
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
