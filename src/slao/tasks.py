"""Named benchmarks and their task orders (design.md §4), and resolving a run's task list and data
source from the configuration."""

from __future__ import annotations

from pathlib import Path

from slao.errors import ConfigError

OLORA_DATA = (
    "the O-LoRA benchmark folder (<Type>/<dataset>/{train,test,labels}.json plus instruction_config.json, "
    "published as CL_Benchmark with O-LoRA, github.com/cmnfriend/O-LoRA), or SAPT's copy of it in the "
    "Natural-Instructions layout (<task>/{train,dev,test}.json)"
)
SUPERNI_DATA = (
    "one folder per Natural-Instructions task, <task>/{train,dev,test}.json (SAPT's CL_Benchmark/SuperNI "
    "split of github.com/allenai/natural-instructions)"
)

SUPERNI_ORDER_1 = [
    "task1572_samsum_summary", "task363_sst2_polarity_classification", "task1290_xsum_summarization",
    "task181_outcome_extraction", "task002_quoref_answer_generation", "task1510_evalution_relation_extraction",
    "task639_multi_woz_user_utterance_generation", "task1729_personachat_generate_next",
    "task073_commonsenseqa_answer_generation", "task1590_diplomacy_text_generation",
    "task748_glucose_reverse_cause_event_detection", "task511_reddit_tifu_long_text_summarization",
    "task591_sciq_answer_generation", "task1687_sentiment140_classification", "task875_emotion_classification",
]
_SUPERNI_BY_NUMBER = {name.split("_")[0]: name for name in SUPERNI_ORDER_1}
SUPERNI_ORDER_2 = [_SUPERNI_BY_NUMBER[n] for n in (
    "task748", "task073", "task1590", "task639", "task1572", "task1687", "task591", "task363", "task1510",
    "task1729", "task181", "task511", "task002", "task1290", "task875")]

# benchmark -> data source, what it is, where its data comes from, and its orders (number -> task names)
BENCHMARK_ORDERS: dict[str, dict] = {
    "standard": {
        "source": "olora", "data": OLORA_DATA,
        "about": "4 text-classification tasks (O-LoRA's standard CL benchmark); needs --data-dir",
        "orders": {1: ["dbpedia", "amazon", "yahoo", "agnews"],
                   2: ["dbpedia", "amazon", "agnews", "yahoo"],
                   3: ["yahoo", "amazon", "agnews", "dbpedia"]},
    },
    "long": {
        "source": "olora", "data": OLORA_DATA,
        "about": "15 classification tasks (O-LoRA's long sequence); needs --data-dir",
        "orders": {
            4: ["mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst-2",
                "dbpedia", "agnews", "multirc", "yahoo"],
            5: ["multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia",
                "agnews", "yelp", "amazon", "yahoo"],
            6: ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews",
                "yahoo", "multirc", "boolqa", "wic"],
        },
    },
    "superni": {
        "source": "superni", "data": SUPERNI_DATA,
        "about": "15 Natural-Instructions tasks as used by SAPT (ROUGE-L / exact); needs --data-dir",
        "orders": {1: SUPERNI_ORDER_1, 2: SUPERNI_ORDER_2},
    },
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
    "hf": {"source": "hf", "about": "anything datasets.load_dataset opens: --tasks and data.hf_* settings, "
                                    "or a data.hf_tasks YAML file", "orders": {}},
}


def _spec(benchmark: str) -> dict:
    if benchmark not in BENCHMARK_ORDERS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARK_ORDERS)}")
    return BENCHMARK_ORDERS[benchmark]


def benchmark_source(benchmark: str, data_dir: str | Path | None = None, names: list[str] | None = None) -> str:
    """The data source of ``benchmark``. ``standard``/``long`` read the O-LoRA layout, or SAPT's
    Natural-Instructions copy of it when ``data_dir`` has no O-LoRA dataset but a task folder in that form."""
    source = _spec(benchmark)["source"]
    if source == "olora" and benchmark in ("standard", "long") and data_dir is not None and names:
        from slao.data.olora import list_olora_datasets
        from slao.data.superni import looks_like_superni

        path = Path(data_dir)
        if path.is_dir() and not list_olora_datasets(path) and looks_like_superni(path, names):
            return "superni"
    return source


def resolve_task_names(cfg) -> list[str] | None:
    """--tasks if given, else the benchmark's order (its first order when none is named), else the
    hf tasks file's names; then ``cfg.exclude`` is left out. None: the source must list them itself."""
    spec = _spec(cfg.benchmark)
    orders = spec["orders"]
    if cfg.tasks:
        names = list(cfg.tasks)
    elif orders:
        order = cfg.order if cfg.order is not None else min(orders)
        if order not in orders:
            raise ConfigError(
                f"benchmark {cfg.benchmark!r} has orders {', '.join(map(str, orders))}; got {order}")
        names = list(orders[order])
    elif cfg.order is not None:
        raise ConfigError(f"benchmark {cfg.benchmark!r} has no named orders; give --tasks a,b,...")
    elif cfg.benchmark == "hf" and cfg.data.hf_tasks:
        from slao.data.hf import read_tasks_file

        names = list(read_tasks_file(cfg.data.hf_tasks))
    else:
        names = None
    return apply_exclude(names, list(getattr(cfg, "exclude", []) or []), cfg.benchmark)


def apply_exclude(names: list[str] | None, exclude: list[str], benchmark: str) -> list[str] | None:
    """``names`` without ``exclude``; a name in ``exclude`` that is not in ``names`` is an error."""
    if not exclude:
        return names
    if names is None:
        raise ConfigError(f"--exclude needs a task list, and benchmark {benchmark!r} has none: give --tasks")
    unknown = [x for x in exclude if x not in names]
    if unknown:
        raise ConfigError(f"--exclude: {', '.join(map(repr, unknown))} not in the task list; "
                          f"tasks: {', '.join(names)}")
    kept = [n for n in names if n not in exclude]
    if not kept:
        raise ConfigError("--exclude leaves no task to run")
    return kept


def load_benchmark(cfg):
    """The tasks of the run that ``cfg`` describes, in training order (caps, carving and metric applied)."""
    from slao.data import load_tasks
    from slao.data.hf import spec_from_settings

    spec = _spec(cfg.benchmark)
    names = resolve_task_names(cfg)
    if spec.get("data") and cfg.data_dir is None:
        raise ConfigError(f"the {cfg.benchmark} benchmark reads {spec['data']}; give its folder with --data-dir")
    source = benchmark_source(cfg.benchmark, cfg.data_dir, names)
    return load_tasks(source, names, cfg.data_dir, cfg.seed, cfg.data.train_per_task, cfg.data.test_per_task,
                      cfg.data.carve_test, metric=cfg.data.metric, hf=spec_from_settings(cfg.data),
                      hf_tasks=cfg.data.hf_tasks)
