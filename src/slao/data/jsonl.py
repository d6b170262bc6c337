"""Reading user tasks from JSONL files of ``{"input": ..., "output": ...}`` records."""

from __future__ import annotations

from pathlib import Path

from slao.data.normalize import has_answer
from slao.data.task import Example, Task
from slao.errors import ConfigError, DataError
from slao.userfiles import parse_json, read_text

SUFFIX = "\nAnswer:"
METRICS = ("exact", "rougeL")


def load_jsonl_task(
    name: str,
    train_path: str | Path,
    test_path: str | Path,
    options: list[str] | None = None,
    instruction: str = "",
    *,
    metric: str = "exact",
) -> Task:
    """A task from two JSONL files; each line is ``{"input": str, "output": str | [str, ...]}``.

    The prompt is ``"Dataset:<name>\\n" + instruction + "Option: a, b \\n" + input + "\\nAnswer:"``, the
    option line only when ``options`` is given; then every training output must be one of the options
    (or have no answer at all, like "-": such records are dropped later).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if options is not None and (not options or not all(isinstance(o, str) for o in options)):
        raise DataError(f"task {name!r}: options must be a non-empty list of strings, got {options!r}")
    train_path, test_path = Path(train_path), Path(test_path)
    # A training output outside the options is an error (a typo in the file or in options.json); test
    # records without a usable answer are dropped and counted by data.drop_unanswerable.
    train = read_jsonl_examples(train_path, options)
    test = read_jsonl_examples(test_path)
    if instruction and not instruction.endswith("\n"):
        instruction += "\n"
    prefix = f"Dataset:{name}\n{instruction}"
    if options is not None:
        prefix += "Option: " + ", ".join(options) + " \n"
    return Task(
        name=name,
        prefix=prefix,
        suffix=SUFFIX,
        options=list(options) if options is not None else None,
        train=train,
        test=test,
        metric=metric,
        info={"source": "jsonl", "files": {"train": str(train_path), "test": str(test_path)}},
    )


def read_jsonl_examples(path: Path, options: list[str] | None = None) -> list[Example]:
    """Every record of one JSONL file; blank lines are skipped, anything else malformed is an error."""
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    examples = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            examples.append(_parse_line(path, lineno, line, options))
    if not examples:
        raise DataError(f"{path}: empty file: no records")
    return examples


def _parse_line(path: Path, lineno: int, line: str, options: list[str] | None) -> Example:
    where = f"{path}: line {lineno}"
    rec = parse_json(line, where, with_line=False)
    if not isinstance(rec, dict):
        raise DataError(f"{where}: record is not a JSON object")
    for key in ("input", "output"):
        if key not in rec:
            raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(rec["input"], str):
        raise DataError(f"{where}: field 'input' must be a string")
    answers = _answers(where, rec["output"])
    if options is not None:
        for answer in answers:
            if has_answer(answer) and answer not in options:
                raise DataError(f"{where}: output {answer!r} is not an option; options: {options}")
    return Example(text=rec["input"], answers=answers)


def _answers(where: str, output) -> tuple[str, ...]:
    if isinstance(output, str):
        return (output,)
    if isinstance(output, list) and output and all(isinstance(x, str) for x in output):
        return tuple(output)
    raise DataError(f"{where}: field 'output' must be a string or a non-empty list of strings")
