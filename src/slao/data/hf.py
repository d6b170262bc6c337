"""Tasks from anything ``datasets.load_dataset`` opens: a hub id, a local folder, or a builder (csv, json,
parquet) with data files; the user names the text and label columns.

Settings come from the ``data.hf_*`` fields (one dataset; ``{task}`` in a path is replaced by the task
name, so one setting can serve several tasks) and, per task, from a YAML file (``data.hf_tasks``) that
maps each task name to the same keys without the ``hf_`` prefix, for example::

    sentiment:
      path: csv
      data_files: {train: sent/train.csv, test: sent/test.csv}
      text_column: review
      label_column: stars
    nli:
      path: glue
      config: rte
      text_column: [sentence1, sentence2]
      test_split: validation

Relative local paths are taken from ``--data-dir`` when it is given. The prompt follows the O-LoRA frame:
``"Dataset:<task>\\n" + instruction + "Option: a, b \\n" + text + "\\nAnswer:"``, the option line only for
option tasks (a ClassLabel column, or answers that pass superni.infer_options' rule).

``datasets`` is the optional extra ``slao[hf]``: imported when a task is loaded, and its absence is a
one-line error that names the extra.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from slao.data.sampling import carve_split
from slao.data.superni import infer_options, pick_metric
from slao.data.task import Example, Task, carve_key, check_names
from slao.errors import ConfigError, DataError, import_extra
from slao.userfiles import oneline, read_json, read_yaml_file, short

SUFFIX = "\nAnswer:"


@dataclass
class HfSpec:
    """Where one task's data is and which columns hold the text and the answer."""

    path: str | None = None
    config: str | None = None
    data_files: dict[str, str] | None = None
    text_column: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    instruction: str = ""
    metric: str = "auto"


def spec_from_settings(data_cfg) -> dict:
    """The ``data.hf_*`` fields of a DataConfig as HfSpec keys (the defaults for every task)."""
    out = {}
    for f in dataclasses.fields(HfSpec):
        value = getattr(data_cfg, f"hf_{f.name}", None)
        if f.name == "metric":
            value = getattr(data_cfg, "metric", "auto")
        if value is not None:
            out[f.name] = value
    return out


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_str_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _is_columns(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v))


# Each key of a task's settings: (its check, what it must be). ``config`` and ``data_files`` may be null.
_SETTING_TYPES = {
    "path": (_is_str, "a string"), "config": (lambda v: v is None or _is_str(v), "a string or null"),
    "data_files": (lambda v: v is None or _is_str_map(v), "a mapping of split name -> file"),
    "text_column": (_is_columns, "a column name or a list of them"), "label_column": (_is_str, "a column name"),
    "train_split": (_is_str, "a split name"), "test_split": (_is_str, "a split name"),
    "instruction": (_is_str, "a string"), "metric": (_is_str, "a string"),
}


def read_tasks_file(path: str | Path) -> dict[str, dict]:
    """The per-task mapping of a ``data.hf_tasks`` YAML file, checked key by key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.hf_tasks: file not found: {path}")
    data = read_yaml_file(path, ConfigError) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of task name -> settings (path, text_column, ...)")
    data = {str(k): v for k, v in data.items()}  # a task named 1234 is the YAML integer 1234
    check_names(list(data), f"{path}: ")
    valid = {f.name for f in dataclasses.fields(HfSpec)}
    for name, settings in data.items():
        unknown = sorted(str(k) for k in set(settings) - valid)
        if unknown:
            raise ConfigError(f"{path}: task {name!r}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
        for key, value in settings.items():
            ok, what = _SETTING_TYPES[key]
            if not ok(value):
                raise ConfigError(f"{path}: task {name!r}: {key} must be {what}, got {short(value)}")
    return data


def make_spec(name: str, defaults: dict, per_task: dict | None) -> HfSpec:
    """Defaults, then the task's own settings; ``{task}`` replaced by ``name``."""
    merged = {**defaults, **(per_task or {})}
    if isinstance(merged.get("text_column"), str):
        merged["text_column"] = [c.strip() for c in merged["text_column"].split(",") if c.strip()]
    spec = HfSpec(**merged)
    if not spec.text_column:
        raise ConfigError(f"hf task {name!r} names no text column (data.hf_text_column or text_column)")
    if not spec.path:
        raise ConfigError(
            f"hf task {name!r} names no dataset: set data.hf_path (a hub id, a local folder, or csv/json/parquet "
            "with data.hf_data_files) or give it an entry in the data.hf_tasks YAML file"
        )
    spec.path = spec.path.replace("{task}", name)
    if spec.data_files is not None:
        if not isinstance(spec.data_files, dict):
            raise ConfigError(f"hf task {name!r}: data_files must map split names to files, got {spec.data_files!r}")
        spec.data_files = {str(k): str(v).replace("{task}", name) for k, v in spec.data_files.items()}
    return spec


def _local(path: str, base: Path | None) -> str:
    """``path`` under ``base`` when that exists (a relative local path), else ``path`` unchanged."""
    if base is not None and not Path(path).is_absolute() and (base / path).exists():
        return str(base / path)
    return path


def load_hf_task(
    name: str,
    spec: HfSpec,
    *,
    base: Path | None = None,
    carve_test: float | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> Task:
    """One task read with ``datasets.load_dataset``; a missing test split is carved from train when
    ``carve_test`` is set (recorded in ``info["test_carved_from_train"]``), else an error; likewise a
    missing train split is carved from test (``info["train_carved_from_test"]``)."""
    datasets = import_extra("datasets", "hf", "the hf benchmark")

    path = _local(spec.path, base)
    if not spec.data_files and path in _builders():
        # Without data files a builder reads whatever files it finds under the current folder.
        raise ConfigError(f"hf task {name!r}: path {path!r} is a file-format builder; give its files with "
                          "data_files (data.hf_data_files), e.g. {train: train.csv, test: test.csv}")
    data_files = None
    if spec.data_files:
        data_files = {split: _local(f, base) for split, f in spec.data_files.items()}
        for split, f in data_files.items():
            if "://" not in f and not any(ch in f for ch in "*?[") and not Path(f).is_file():
                shown = base / f if base is not None and not Path(f).is_absolute() else f
                raise DataError(f"hf task {name!r}: missing file for split {split!r}: {shown}")
    if path == "json" and data_files:
        _refuse_null_records(data_files)
    files = f": {', '.join(data_files.values())}" if data_files else ""
    where = oneline(f"hf task {name!r} ({path}" + (f", {spec.config}" if spec.config else "") + files + ")")
    verbosity = datasets.logging.get_verbosity()
    # The builders log a failure (lines of their own) before raising it: the DataError below says it all.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(path, name=spec.config, data_files=data_files, cache_dir=cache_dir)
    except Exception as err:  # the builders raise whatever their parsers raise (even StopIteration)
        cause = f" ({err.__cause__})" if err.__cause__ else ""  # the builder's own error says which file
        message = " ".join(f"{err}{cause}".split())
        raise DataError(f"{where}: datasets.load_dataset failed: {message[:400]}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    info: dict = {"source": "hf", "dataset": path, "config": spec.config, "files": data_files,
                  "columns": {"text": spec.text_column, "label": spec.label_column}, "splits": {}}
    wanted = {"train": spec.train_split, "test": spec.test_split}
    missing = [role for role, split in wanted.items() if split not in dataset]
    if missing and (carve_test is None or len(missing) == 2):
        role = missing[0]
        raise DataError(f"{where}: no split {wanted[role]!r} (found: {', '.join(dataset)}); add "
                        f"{_split_hint(spec, role)}, set data.hf_{role}_split, or set data.carve_test to split "
                        "the other one")
    present = [role for role in wanted if role not in missing]
    label_names = _label_names(dataset[wanted[present[0]]], spec.label_column)
    split_examples = {role: _examples(dataset[wanted[role]], spec, label_names, f"{where}, split {wanted[role]!r}")
                      for role in present}
    for role in present:
        info["splits"][role] = wanted[role]
    if missing:
        if not 0.0 < carve_test < 1.0:
            raise ConfigError(f"carve_test must be a fraction between 0 and 1, got {carve_test}")
        (role,) = present
        train, test = carve_split(split_examples[role], carve_test, seed, f"{name}:test", key=carve_key)
        key = "test_carved_from_train" if role == "train" else "train_carved_from_test"
        info[key] = {"fraction": carve_test, "seed": seed}
    else:
        train, test = split_examples["train"], split_examples["test"]
    options = label_names or infer_options(train)
    metric = pick_metric(spec.metric, options, where)
    instruction = spec.instruction
    if instruction and not instruction.endswith("\n"):
        instruction += "\n"
    prefix = f"Dataset:{name}\n{instruction}"
    if options:
        prefix += "Option: " + ", ".join(options) + " \n"
    return Task(name=name, prefix=prefix, suffix=SUFFIX, options=options, train=train, test=test,
                metric=metric, info=info)


def _refuse_null_records(data_files: dict[str, str]) -> None:
    """pyarrow's JSON reader, under the json builder, kills the process (a segmentation fault) on a JSON
    Lines record that is ``null`` where a block starts, or on a JSON array whose first element is null:
    local files holding a null record are refused first, naming the line or record."""
    for f in data_files.values():
        path = Path(f)
        if not path.is_file():  # a URL or a pattern: datasets resolves it
            continue
        with open(path, "rb") as fh:
            head = fh.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"["):
            rows = read_json(path)
            nulls = [i for i, row in enumerate(rows, start=1) if row is None] if isinstance(rows, list) else []
            if nulls:
                raise DataError(f"{path}: record {nulls[0]}: null is not a record (an object with the columns)")
            continue
        with open(path, "rb") as fh:
            lines = ((n, line) for n, line in enumerate(fh, start=1) if line.strip())
            first = next(lines, None)
            try:
                json.loads(first[1]) if first else None
            except (ValueError, RecursionError):
                continue  # not JSON Lines (one object over several lines): pyarrow is not asked to read lines
            for n, line in itertools.chain([first] if first else [], lines):
                if line.strip() == b"null":
                    raise DataError(f"{path}: line {n}: null is not a record (an object with the columns)")


def _builders() -> set[str]:
    """The names of datasets' file-format builders (csv, json, parquet, text, ...)."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return set(_PACKAGED_DATASETS_MODULES)


def _split_hint(spec: HfSpec, split: str) -> str:
    if spec.data_files:
        return f"a {split!r} entry to data_files"
    return f"a {split} file (e.g. {split}.csv or {split}.json) to {spec.path}"


def _label_names(split, column: str) -> list[str] | None:
    """The names of a ClassLabel column (integers in the data stand for them), else None."""
    datasets = import_extra("datasets", "hf", "the hf benchmark")

    feature = split.features.get(column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _examples(split, spec: HfSpec, label_names: list[str] | None, where: str) -> list[Example]:
    columns = list(split.column_names)
    for col in [*spec.text_column, spec.label_column]:
        if col not in columns:
            raise DataError(f"{where}: no column {col!r}; columns: {', '.join(columns)} "
                            "(set data.hf_text_column / data.hf_label_column)")
    texts = [list(split[c]) for c in spec.text_column]
    labels = list(split[spec.label_column])
    examples = []
    for row, label in enumerate(labels):
        values = [t[row] for t in texts]
        if any(v is None for v in values):
            raise DataError(f"{where}: row {row}: empty text column")
        if len(values) == 1:
            text = str(values[0])
        else:  # several columns: one "column: value" line each, so the model sees which is which
            text = "\n".join(f"{c}: {v}" for c, v in zip(spec.text_column, values, strict=True))
        examples.append(Example(text=text, answers=_answers(label, label_names, f"{where}: row {row}")))
    if not examples:
        raise DataError(f"{where}: no rows")
    return examples


def _answers(label, label_names: list[str] | None, where: str) -> tuple[str, ...]:
    values = label if isinstance(label, list) else [label]
    out = []
    for v in values:
        if v is None or isinstance(v, dict):
            raise DataError(f"{where}: label {v!r} is not a string, number or list of them")
        if label_names is not None and isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v < len(label_names):
                raise DataError(f"{where}: label {v} is not a class index (0..{len(label_names) - 1})")
            v = label_names[v]
        out.append(str(v))
    if not out:
        raise DataError(f"{where}: empty label list")
    return tuple(out)
