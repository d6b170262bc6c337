"""Reading the O-LoRA benchmark layout (``<Type>/<dataset>/{train,test,labels}.json``) into Tasks."""

from __future__ import annotations

from pathlib import Path

from slao.data.normalize import has_answer
from slao.data.sampling import carve_split
from slao.data.task import Example, Task, carve_key
from slao.errors import ConfigError, DataError
from slao.userfiles import read_json

SUFFIX = "\nAnswer:"
INSTRUCTION_FILE = "instruction_config.json"


def find_olora_dataset(data_dir: str | Path, name: str) -> str:
    """The ``"<Type>/<dataset>"`` folder whose dataset name matches ``name`` case-insensitively."""
    found = list_olora_datasets(Path(data_dir))
    matches = [rel for rel in found if rel.split("/")[1].lower() == name.lower()]
    if not matches:
        available = ", ".join(sorted(rel.split("/")[1].lower() for rel in found)) or "none"
        raise DataError(f"no O-LoRA dataset named {name!r} under {data_dir}; available: {available}")
    if len(matches) > 1:
        raise DataError(f"O-LoRA dataset name {name!r} is ambiguous under {data_dir}: {', '.join(matches)}")
    return matches[0]


def list_olora_datasets(data_dir: str | Path) -> list[str]:
    """Every ``"<Type>/<dataset>"`` folder (one holding labels.json) under ``data_dir``, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"O-LoRA data folder not found: {data_dir}")
    return sorted(
        f"{d.parent.name}/{d.name}"
        for d in data_dir.glob("*/*")
        if d.is_dir() and (d / "labels.json").is_file()
    )


def load_olora_task(
    data_dir: str | Path,
    dataset_path: str,
    name: str,
    *,
    carve_test: float | None = None,
    seed: int = 0,
) -> Task:
    """Load one O-LoRA dataset (``dataset_path`` as ``"<Type>/<dataset>"``) as the task ``name``.

    When ``test.json`` is missing and ``carve_test`` is a fraction in (0, 1), that fraction of train is
    held out as test (deterministic from ``seed``) and ``info["test_carved_from_train"]`` says so;
    when only ``test.json`` exists, the other part of it becomes train (``train_carved_from_test``).
    """
    data_dir = Path(data_dir)
    task_type, dataset = dataset_path.split("/")
    folder = data_dir / task_type / dataset
    labels = _read_labels(folder / "labels.json")
    train_file, test_file = folder / "train.json", folder / "test.json"
    info: dict = {"source": "olora", "dataset": dataset_path, "files": {}}
    if carve_test is not None and not 0.0 < carve_test < 1.0:
        raise ConfigError(f"carve_test must be a fraction between 0 and 1, got {carve_test}")
    if not train_file.is_file() and test_file.is_file() and carve_test is not None:
        # Only the test split exists (dbpedia in the local copy): a disjoint training part is carved out
        # of it and the results say so. Records outside the options are dropped later (drop_unanswerable).
        pool = _read_split(test_file, labels, strict=False)
        test, train = carve_split(pool, 1.0 - carve_test, seed, f"{name}:train", key=carve_key)
        info["files"]["test"] = str(test_file)
        info["train_carved_from_test"] = {"fraction_kept_as_test": carve_test, "seed": seed}
    else:
        train = _read_split(train_file, labels, strict=True)
        info["files"]["train"] = str(train_file)
        if test_file.is_file() or carve_test is None:
            test = _read_split(test_file, labels, strict=False)
            info["files"]["test"] = str(test_file)
        else:
            train, test = carve_split(train, carve_test, seed, f"{name}:test", key=carve_key)
            info["test_carved_from_train"] = {"fraction": carve_test, "seed": seed}
    info["files"]["labels"] = str(folder / "labels.json")
    instruction = _read_instruction(data_dir / INSTRUCTION_FILE, task_type)
    info["instruction"] = instruction
    return Task(
        name=name,
        prefix=_prefix(task_type, dataset, instruction, labels),
        suffix=SUFFIX,
        options=labels,
        train=train,
        test=test,
        metric="exact",
        info=info,
    )


def _prefix(task_type: str, dataset: str, instruction: str | None, labels: list[str]) -> str:
    head = f"Task:{task_type}\nDataset:{dataset}\n"
    # A type without an instruction (COPA) was published with no instruction and no option line:
    # its sentences already spell out the choices.
    if instruction is None:
        return head
    return head + instruction + "Option: " + ", ".join(labels) + " \n"


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    return read_json(path)


def _read_labels(path: Path) -> list[str]:
    labels = _read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def _read_split(path: Path, labels: list[str], strict: bool) -> list[Example]:
    """Records of one split; ``strict`` makes a label outside ``labels`` an error (train), except one that
    is no answer at all ("-"); such records, and test records outside the options, are dropped later."""
    records = _read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of {{'label', 'sentence'}} records")
    option_set = set(labels)
    examples = []
    for i, rec in enumerate(records, start=1):
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("label"), str)
            or not isinstance(rec.get("sentence"), str)
        ):
            raise DataError(f"{path}: record {i}: expected an object with string 'label' and 'sentence'")
        if strict and has_answer(rec["label"]) and rec["label"] not in option_set:
            raise DataError(f"{path}: record {i}: label {rec['label']!r} is not one of the options {labels}")
        examples.append(Example(text=rec["sentence"], answers=(rec["label"],)))
    return examples


def _read_instruction(path: Path, task_type: str) -> str | None:
    """The first instruction for ``task_type``, or None when the config has no entry for it."""
    config = _read_json(path)
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a JSON object keyed by task type")
    entry = config.get(task_type)
    if entry is None:
        return None
    if isinstance(entry, list):
        if not entry:
            raise DataError(f"{path}: task type {task_type!r} has an empty instruction list")
        entry = entry[0]
    if isinstance(entry, dict):
        entry = entry.get("instruction")
    if not isinstance(entry, str):
        raise DataError(f"{path}: task type {task_type!r}: expected an instruction string")
    return entry
