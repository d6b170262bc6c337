"""Task loading: one entry point, ``load_tasks``, over the packaged, O-LoRA, JSONL, SuperNI and
``datasets`` (hf) sources."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from slao.data.hf import load_hf_task, make_spec, read_tasks_file
from slao.data.jsonl import load_jsonl_task
from slao.data.normalize import usable_answers
from slao.data.olora import find_olora_dataset, list_olora_datasets, load_olora_task
from slao.data.packaged import PACKAGED_TASKS, load_packaged_task
from slao.data.sampling import cap_examples
from slao.data.superni import find_superni_task, list_superni_tasks, load_superni_task
from slao.data.task import Example, Task, check_names
from slao.errors import ConfigError, DataError
from slao.userfiles import read_json, read_text

__all__ = ["BENCHMARKS", "PACKAGED_TASKS", "Example", "Task", "load_tasks"]

# (name, data_dir, seed, train_n, test_n, carve_test, **source settings) -> Task
Loader = Callable[..., Task]


def load_tasks(
    benchmark: str,
    names: list[str] | None,
    data_dir: str | Path | None,
    seed: int,
    train_n: int | None = None,
    test_n: int | None = None,
    carve_test: float | None = None,
    *,
    metric: str = "auto",
    hf: dict | None = None,
    hf_tasks: str | Path | None = None,
) -> list[Task]:
    """The tasks ``names`` of ``benchmark``, in the given order, with at most train_n/test_n examples.

    ``packaged`` reads files of installed asset packages (names default to PACKAGED_TASKS; caps are
    class-balanced draws). ``olora`` reads ``data_dir`` in the O-LoRA layout (names like ``mnli``,
    ``sst-2``; ``carve_test`` holds out part of train where test.json is missing). ``jsonl`` reads
    ``<data_dir>/<name>/{train,test}.jsonl`` with optional ``options.json`` and ``instruction.txt``.
    ``superni`` reads ``<data_dir>/<name>/{train,test}.json`` Natural-Instructions files; ``metric``
    (auto | exact | rougeL) picks their score. ``hf`` opens datasets with ``datasets.load_dataset`` from
    the HfSpec keys in ``hf`` (the data.hf_* settings), overridden per task by the ``hf_tasks`` YAML file;
    its ``data_dir`` is optional (relative paths are taken from it).
    """
    loader = BENCHMARKS.get(benchmark)
    if loader is None:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    for n, what in ((train_n, "train_n"), (test_n, "test_n")):
        if n is not None and n < 0:
            raise ConfigError(f"{what} must be >= 0 or unset, got {n}")
    extra: dict = {}
    if benchmark == "packaged":
        names = list(PACKAGED_TASKS) if names is None else names
    elif benchmark == "hf":
        per_task = read_tasks_file(hf_tasks) if hf_tasks else {}
        names = names or list(per_task)
        if not names:
            empty = f" ({hf_tasks} names none)" if hf_tasks else ""
            raise ConfigError(f"the hf benchmark needs task names: --tasks a,b or a data.hf_tasks YAML file{empty}")
        extra = {"hf": {"metric": metric, **(hf or {})}, "per_task": per_task}
        data_dir = Path(data_dir) if data_dir is not None else None
    else:
        data_dir = _require_dir(benchmark, data_dir)
        if not names:
            available = _available(benchmark, data_dir)
            raise ConfigError(f"the {benchmark} benchmark needs task names; available: {available}")
        if benchmark == "superni":
            extra = {"metric": metric}
    check_names(names)
    tasks = []
    for name in names:
        task = loader(name, data_dir, seed, train_n, test_n, carve_test, **extra)
        if not task.train or not task.test:
            raise DataError(
                f"task {name!r} has {len(task.train)} train and {len(task.test)} test examples ({_files(task)}); "
                "both must be non-empty (check the files and the train_n/test_n caps)"
            )
        tasks.append(task)
    return tasks


def _files(task: Task) -> str:
    """The files a task was read from, for a message."""
    files = task.info.get("files")
    if isinstance(files, dict) and files:
        return ", ".join(f"{split}: {path}" for split, path in files.items())
    return f"from {task.info.get('dataset') or task.info.get('source') or 'its source'}"


def _require_dir(benchmark: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise ConfigError(f"the {benchmark} benchmark needs a data folder (data_dir)")
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"data folder not found: {path}")
    return path


def drop_unanswerable(task: Task) -> Task:
    """Drop the records that no prediction could be scored on (no answer left by ``usable_answers``, like
    MNLI's "-" test labels), keep only the usable answers of the rest, and count the drops per split in
    ``info["dropped_no_answer"]``. Every source goes through here, before caps, so caps count usable records."""
    dropped = {}
    for split in ("train", "test"):
        examples = getattr(task, split)
        kept = []
        for ex in examples:
            answers = usable_answers(ex.answers, task.options)
            if answers:
                kept.append(ex if answers == ex.answers else dataclasses.replace(ex, answers=answers))
        dropped[split] = len(examples) - len(kept)
        setattr(task, split, kept)
    task.info["dropped_no_answer"] = dropped
    return task


def _capped(task: Task, seed: int, train_n: int | None, test_n: int | None) -> Task:
    """Drop unanswerable records, cap both splits (salted by task and split) and record the sizes before
    and after."""
    task = drop_unanswerable(task)
    before = {"train": len(task.train), "test": len(task.test)}
    task.train = cap_examples(task.train, train_n, seed, f"{task.name}:train")
    task.test = cap_examples(task.test, test_n, seed, f"{task.name}:test")
    task.info["caps"] = {"train_n": train_n, "test_n": test_n, "available": before}
    return task


def _load_packaged(name, data_dir, seed, train_n, test_n, carve_test) -> Task:
    # Packaged tasks draw their own class-balanced caps; data_dir and carve_test do not apply.
    return drop_unanswerable(load_packaged_task(name, seed, train_n, test_n))


def _load_olora(name, data_dir, seed, train_n, test_n, carve_test) -> Task:
    dataset_path = find_olora_dataset(data_dir, name)
    task = load_olora_task(data_dir, dataset_path, name, carve_test=carve_test, seed=seed)
    return _capped(task, seed, train_n, test_n)


def _load_jsonl(name, data_dir, seed, train_n, test_n, carve_test) -> Task:
    folder = data_dir / name
    if not (folder / "train.jsonl").is_file() and not (folder / "test.jsonl").is_file():
        available = _available("jsonl", data_dir)
        raise DataError(f"no JSONL task named {name!r} in {data_dir}; available: {available}")
    options = _read_options(folder / "options.json")
    instruction_file = folder / "instruction.txt"
    instruction = read_text(instruction_file).strip() if instruction_file.is_file() else ""
    task = load_jsonl_task(name, folder / "train.jsonl", folder / "test.jsonl", options, instruction)
    return _capped(task, seed, train_n, test_n)


def _load_superni(name, data_dir, seed, train_n, test_n, carve_test, *, metric="auto") -> Task:
    folder = find_superni_task(data_dir, name)
    task = load_superni_task(folder, name, metric=metric, carve_test=carve_test, seed=seed)
    return _capped(task, seed, train_n, test_n)


def _load_hf(name, data_dir, seed, train_n, test_n, carve_test, *, hf, per_task) -> Task:
    spec = make_spec(name, hf, per_task.get(name))
    task = load_hf_task(name, spec, base=data_dir, carve_test=carve_test, seed=seed)
    return _capped(task, seed, train_n, test_n)


def _read_options(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    options = read_json(path)
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise DataError(f"{path}: expected a non-empty JSON list of option strings")
    return options


def _available(benchmark: str, data_dir: Path) -> str:
    if benchmark == "olora":
        found = [rel.split("/")[1].lower() for rel in list_olora_datasets(data_dir)]
    elif benchmark == "superni":
        found = list_superni_tasks(data_dir)
    else:
        found = [d.name for d in data_dir.iterdir() if (d / "train.jsonl").is_file()]
    return ", ".join(sorted(found)) or "none"


BENCHMARKS: dict[str, Loader] = {"packaged": _load_packaged, "olora": _load_olora, "jsonl": _load_jsonl,
                                  "superni": _load_superni, "hf": _load_hf}
