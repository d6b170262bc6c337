"""Reading Natural-Instructions task files (SuperNI, and SAPT's copy of the long sequence) into Tasks.

Layout: ``<data_dir>/<task_name>/{train,dev,test}.json``; each file is one Natural-Instructions task
(``Definition``: a list of strings; ``Instances``: ``{"id", "input", "output"}`` records, the output a
string or a list of acceptable strings). ``dev.json`` is never read: tuning on it would need a rule
that the benchmark does not give, and in the published copies it overlaps test.

The prompt is the Tk-Instruct "definition only" frame that SuperNI continual-learning work uses::

    Definition: <definition>\\n\\nNow complete the following example -\\nInput: <input>\\nOutput:

Only ``<input>`` is cut when a prompt is too long. No option line is added: a Natural-Instructions
definition already spells out the answers a classification task allows. SAPT's copy of the long sequence
(``CL_Benchmark/Long_Sequence/<task>/{train,dev,test,labels}.json``) is read the same way, except that its
``labels.json`` (a JSON list of label strings) is the option list, shown after the definition as
``Option: a, b`` (its definitions are O-LoRA's instructions, which say "Choose one from the option").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from slao.data.sampling import carve_split
from slao.data.task import Example, Task, carve_key
from slao.errors import ConfigError, DataError
from slao.userfiles import read_json

PREFIX = "Definition: {definition}\n\nNow complete the following example -\nInput: "
SUFFIX = "\nOutput:"
METRICS = ("auto", "exact", "rougeL")
LABELS_FILE = "labels.json"
# The long sequence's order names (design.md §4) whose SAPT folder has another name beyond case and
# punctuation (sst-2 -> sst2 is matched by ignoring '-' and '_').
ALIASES = {"boolqa": "boolq"}

# The rule that makes a task an option task (scored by exact match) rather than free text (ROUGE-L):
# its training answers form a small fixed set of short strings that repeat. The repeat condition keeps
# a small free-text task, whose every answer is distinct, from looking like a classification task.
MAX_OPTIONS = 20
MAX_OPTION_WORDS = 5
MIN_REPEATS = 3  # training answers per distinct answer, on average


def infer_options(examples: list[Example]) -> list[str] | None:
    """The sorted answer set when ``examples`` look like classification (see the rule above), else None."""
    answers = [a.strip() for ex in examples for a in ex.answers]
    counts = Counter(answers)
    if not 2 <= len(counts) <= MAX_OPTIONS:
        return None
    if any(not a or len(a.split()) > MAX_OPTION_WORDS for a in counts):
        return None
    if len(answers) < MIN_REPEATS * len(counts):
        return None
    return sorted(counts)


def pick_metric(metric: str, options: list[str] | None, where: str) -> str:
    """``auto`` -> exact for option tasks and rougeL for free text; ``exact``/``rougeL`` force one."""
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric == "auto":
        return "exact" if options else "rougeL"
    return metric


def list_superni_tasks(data_dir: str | Path) -> list[str]:
    """Names of the task folders (holding train.json or test.json) under ``data_dir``, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"SuperNI data folder not found: {data_dir}")
    return sorted(d.name for d in data_dir.iterdir() if (d / "train.json").is_file() or (d / "test.json").is_file())


def _loose(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower()).replace("-", "").replace("_", "")


def find_superni_task(data_dir: str | Path, name: str) -> Path:
    """The task folder named ``name`` under ``data_dir``: exactly, else case-insensitively, else ignoring
    '-' and '_' and through ``ALIASES`` (the long sequence's ``boolqa``, ``sst-2`` are SAPT's ``boolq``,
    ``sst2``)."""
    data_dir = Path(data_dir)
    found = list_superni_tasks(data_dir)
    if name in found:
        return data_dir / name
    for same in (lambda f: f.lower() == name.lower(), lambda f: _loose(f) == _loose(name)):
        matches = [f for f in found if same(f)]
        if len(matches) == 1:
            return data_dir / matches[0]
        if len(matches) > 1:
            raise DataError(f"task name {name!r} is ambiguous under {data_dir}: {', '.join(matches)}")
    raise DataError(
        f"no task folder named {name!r} (with train.json or test.json) under {data_dir}; "
        f"available: {', '.join(found) or 'none'}"
    )


def looks_like_superni(data_dir: str | Path, names: list[str]) -> bool:
    """True when ``data_dir`` holds a Natural-Instructions task file for the first of ``names``."""
    try:
        folder = find_superni_task(data_dir, names[0])
    except (DataError, IndexError):
        return False
    for split in ("train.json", "test.json"):
        path = folder / split
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(1 << 16)  # the keys come first in the published files; no need to parse it all
            return '"Instances"' in head or '"Definition"' in head
    return False


def load_superni_task(
    folder: str | Path,
    name: str,
    *,
    metric: str = "auto",
    carve_test: float | None = None,
    seed: int = 0,
) -> Task:
    """One task from ``folder/{train,test}.json``.

    When one of the two files is missing and ``carve_test`` is a fraction in (0, 1), the other is split
    (deterministic from ``seed``): that fraction becomes the test split, the rest the training split, and
    ``info["test_carved_from_train"]`` (or ``"train_carved_from_test"``) says so. Without ``carve_test``
    a missing file is an error that names it.
    """
    folder = Path(folder)
    train_file, test_file = folder / "train.json", folder / "test.json"
    info: dict = {"source": "superni", "files": {}}
    have = {"train": train_file.is_file(), "test": test_file.is_file()}
    if carve_test is None or all(have.values()) or not any(have.values()):
        hint = " (or set data.carve_test to split the other file)"
        definition, train = read_task_file(train_file, hint)
        _, test = read_task_file(test_file, hint)
        info["files"] = {"train": str(train_file), "test": str(test_file)}
    else:
        if not 0.0 < carve_test < 1.0:
            raise ConfigError(f"carve_test must be a fraction between 0 and 1, got {carve_test}")
        source, split = (train_file, "train") if have["train"] else (test_file, "test")
        definition, pool = read_task_file(source)
        train, test = carve_split(pool, carve_test, seed, f"{name}:test", key=carve_key)
        info["files"][split] = str(source)
        info["test_carved_from_train" if split == "train" else "train_carved_from_test"] = {
            "fraction": carve_test, "seed": seed}
    labels_file = folder / LABELS_FILE
    if labels_file.is_file():  # SAPT's long sequence: the published option list, in its order
        options = read_labels(labels_file)
        info["files"]["labels"] = str(labels_file)
        definition += "\nOption: " + ", ".join(options)
    else:
        options = infer_options(train)
    metric = pick_metric(metric, options, f"task {name!r}")
    info["metric_rule"] = "labels.json" if labels_file.is_file() else "options" if options else "free-text"
    return Task(
        name=name,
        prefix=PREFIX.format(definition=definition),
        suffix=SUFFIX,
        options=options,
        train=train,
        test=test,
        metric=metric,
        info=info,
    )


def read_labels(path: Path) -> list[str]:
    """The option list of a ``labels.json`` file: a non-empty JSON list of strings."""
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    return labels


def read_task_file(path: Path, hint: str = "") -> tuple[str, list[Example]]:
    """(definition, examples) of one Natural-Instructions task file."""
    if not path.is_file():
        raise DataError(f"missing file: {path}{hint}")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("Instances"), list):
        raise DataError(f"{path}: expected a Natural-Instructions task object with an 'Instances' list")
    definition = data.get("Definition", [])
    if isinstance(definition, str):
        definition = [definition]
    if not isinstance(definition, list) or not all(isinstance(d, str) for d in definition):
        raise DataError(f"{path}: 'Definition' must be a list of strings")
    examples = [_instance(path, i, rec) for i, rec in enumerate(data["Instances"], start=1)]
    if not examples:
        raise DataError(f"{path}: 'Instances' is empty")
    return "\n".join(d.strip() for d in definition), examples


def _instance(path: Path, i: int, rec) -> Example:
    where = f"{path}: instance {i}"
    if not isinstance(rec, dict) or not isinstance(rec.get("input"), str):
        raise DataError(f"{where}: expected an object with a string 'input'")
    output = rec.get("output")
    if isinstance(output, str):
        output = [output]
    if not isinstance(output, list) or not output or not all(isinstance(o, str) for o in output):
        raise DataError(f"{where}: 'output' must be a string or a non-empty list of strings")
    return Example(text=rec["input"], answers=tuple(output))
