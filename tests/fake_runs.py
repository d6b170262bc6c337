"""Hand-made results of finished runs, for tests of the comparison's arithmetic without a model."""

from __future__ import annotations

from slao.metrics import all_metrics


def fake_results(method, seed, R, sizes=(100, 100), test=50):
    """Finished results of a two-task run with accuracy matrix R (no per-example scores)."""
    return {"method": method, "seed": seed, "tasks": ["a", "b"], "accuracy": R,
            "metrics": all_metrics(R), "adapter_state_bytes": list(sizes), "train_seconds": [1.0, 2.0],
            "eval_seconds": [0.5, 0.25], "task_info": {"a": {"test": test}, "b": {"test": test}}}


def order_results(method, seed, order, tasks, final):
    """Fake finished results of a two-task run in ``order``; ``final`` maps task -> final score."""
    first = [final[tasks[0]] + 5.0, None]
    R = [first, [final[t] for t in tasks]]
    scores = [[[1.0] * 4, None], [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]]
    res = fake_results(method, seed, R)
    return {**res, "order": order, "tasks": tasks, "example_scores": scores, "finished": True,
            "task_info": {t: {"test": 4, "metric": "exact", "test_sha256": t} for t in tasks}}
