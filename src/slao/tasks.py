"""Named benchmarks and their task orders, and resolving a run's task list from the configuration."""

from __future__ import annotations

from slao.errors import ConfigError

# benchmark -> data source and its orders (order number -> task names in training order)
BENCHMARK_ORDERS: dict[str, dict] = {
    "packaged": {
        "source": "packaged",
        "about": "four offline tasks read from the asset packages (no network needed)",
        "orders": {1: ["bbc-topic", "rt-sentiment", "rt-subjectivity", "word-polarity"],
                   2: ["word-polarity", "rt-subjectivity", "rt-sentiment", "bbc-topic"]},
    },
    "olora": {"source": "olora", "about": "any datasets of an O-LoRA layout folder (--data-dir, --tasks)",
              "orders": {}},
    "jsonl": {"source": "jsonl", "about": "JSONL tasks: --data-dir DIR with DIR/<task>/{train,test}.jsonl",
              "orders": {}},
}


def benchmark_source(benchmark: str) -> str:
    if benchmark not in BENCHMARK_ORDERS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARK_ORDERS)}")
    return BENCHMARK_ORDERS[benchmark]["source"]


def resolve_task_names(cfg) -> list[str] | None:
    """--tasks if given, else the benchmark's order (its first order when none is named)."""
    spec = BENCHMARK_ORDERS.get(cfg.benchmark)
    if spec is None:
        raise ConfigError(f"unknown benchmark {cfg.benchmark!r}; valid: {', '.join(BENCHMARK_ORDERS)}")
    if cfg.tasks:
        return list(cfg.tasks)
    orders = spec["orders"]
    if not orders:
        if cfg.order is not None:
            raise ConfigError(f"benchmark {cfg.benchmark!r} has no named orders; give --tasks a,b,...")
        return None
    order = cfg.order if cfg.order is not None else min(orders)
    if order not in orders:
        raise ConfigError(f"benchmark {cfg.benchmark!r} has orders {', '.join(map(str, orders))}; got {order}")
    return list(orders[order])
