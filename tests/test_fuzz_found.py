"""What the fuzzing suite (test_fuzz_data.py, test_fuzz_settings.py, test_fuzz_weights.py) found, each
failure shrunk to its smallest input and kept here as a plain test: every one of these ended in a traceback
or a message that named no file, or took several lines, before it was fixed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slao.cli import build_from_args, main, make_parser
from slao.config import parse_sets
from slao.data import load_tasks
from slao.data.hf import read_tasks_file
from slao.errors import ConfigError, DataError, SlaoError

GOOD = [{"label": "good", "sentence": f"s{i}"} for i in range(4)]
NI_TRAIN = {"Definition": ["Say good or bad."],
            "Instances": [{"id": str(i), "input": f"in {i}", "output": ["good" if i % 2 else "bad"]} for i in range(6)]}


def _one_line(err: SlaoError, *names) -> str:
    message = str(err)
    assert "\n" not in message and err.exit_status == 2
    for name in names:
        assert str(name) in message, message
    return message


def _olora(root: Path, test) -> Path:
    files = {"instruction_config.json": {"SC": "Good or bad?\n"}, "SC/ds/labels.json": ["good", "bad"],
             "SC/ds/train.json": GOOD, "SC/ds/test.json": test}
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content if isinstance(content, str) else json.dumps(content))
    return root / "SC/ds/test.json"


def _superni(root: Path, **files) -> Path:
    folder = root / "task1_x"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(NI_TRAIN))
    (folder / "test.json").write_text(json.dumps(NI_TRAIN))
    for name, text in files.items():
        (folder / f"{name}.json").write_text(text)
    return folder


# -- data files ----------------------------------------------------------------------------------------
def test_a_split_left_empty_names_its_files(tmp_path):
    test_file = _olora(tmp_path, [])
    with pytest.raises(DataError, match="has 4 train and 0 test examples") as err:
        load_tasks("olora", ["ds"], tmp_path, 0)
    _one_line(err.value, test_file)


def test_options_that_leave_no_usable_answer_name_the_files(tmp_path):
    folder = _superni(tmp_path, labels='[""]')  # every answer is outside the options: both splits empty
    with pytest.raises(DataError, match="has 0 train and 0 test examples") as err:
        load_tasks("superni", ["task1_x"], tmp_path, 0)
    _one_line(err.value, folder / "train.json", folder / "test.json")


@pytest.mark.parametrize("labels, problem", [
    ("9" * 5000, "unreadable JSON value"),  # ValueError: longer than Python converts
    ("[" * 3000 + "]" * 3000, "JSON nested too deeply"),  # RecursionError
    ('["good", "\\ud800"]', r"at \[1\]: string holds an unpaired surrogate"),  # UnicodeEncodeError when hashed
])
def test_json_values_that_python_cannot_hold_are_refused(tmp_path, labels, problem):
    folder = _superni(tmp_path, labels=labels)
    with pytest.raises(DataError, match=problem) as err:
        load_tasks("superni", ["task1_x"], tmp_path, 0)
    _one_line(err.value, folder / "labels.json")


def test_unpaired_surrogate_in_a_record_names_file_and_record(tmp_path):
    test_file = _olora(tmp_path, '[{"label": "good", "sentence": "x\\udc00y"}]')
    with pytest.raises(DataError, match=r"test.json at \[0\]\['sentence'\]: string holds an unpaired surrogate"):
        load_tasks("olora", ["ds"], tmp_path, 0)
    assert test_file.exists()


def test_a_surrogate_pair_is_text_and_loads(tmp_path):
    _olora(tmp_path, '[{"label": "good", "sentence": "smile \\ud83d\\ude00"}]')
    (task,) = load_tasks("olora", ["ds"], tmp_path, 0)
    assert task.test[0].text == "smile \U0001f600"


def test_instruction_txt_that_is_not_utf8_names_the_file(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text('{"input": "a", "output": "good"}\n')
    (folder / "instruction.txt").write_bytes(b"\xed\xa0\x80")
    with pytest.raises(DataError, match="line 1: not UTF-8 text") as err:
        load_tasks("jsonl", ["t"], tmp_path, 0)
    _one_line(err.value, folder / "instruction.txt")


def test_jsonl_line_with_a_huge_integer_names_file_and_line(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"input": "a", "output": "good"}\n{"input": ' + "1" * 5000 + "}\n")
    (folder / "test.jsonl").write_text('{"input": "a", "output": "good"}\n')
    with pytest.raises(DataError, match="line 2: unreadable JSON value") as err:
        load_tasks("jsonl", ["t"], tmp_path, 0)
    _one_line(err.value, folder / "train.jsonl")


# -- the datasets (hf) path and its tasks file --------------------------------------------------------
@pytest.fixture
def hf_root(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "hf"
    root.mkdir()
    rows = "".join(f"review {i},{'good' if i % 2 else 'bad'}\n" for i in range(6))
    (root / "train.csv").write_text("text,label\n" + rows)
    (root / "test.csv").write_text("text,label\n" + rows)
    return root


def test_hf_empty_json_file_is_refused_not_a_stop_iteration(hf_root):
    (hf_root / "train.json").write_text("")
    spec = {"path": "json", "data_files": {"train": "train.json", "test": "train.json"}}
    with pytest.raises(DataError, match="datasets.load_dataset failed") as err:
        load_tasks("hf", ["t"], hf_root, 0, hf=spec)
    _one_line(err.value, hf_root / "train.json")


def test_hf_parser_error_is_one_line_naming_the_file(hf_root):
    (hf_root / "test.csv").write_text("text,label\na,good\nb,bad,extra\n")
    spec = {"path": "csv", "data_files": {"train": "train.csv", "test": "test.csv"}}
    with pytest.raises(DataError, match="Expected 2 fields in line 3, saw 3") as err:
        load_tasks("hf", ["t"], hf_root, 0, hf=spec)
    _one_line(err.value, hf_root / "test.csv")


def test_hf_missing_file_is_named_with_its_folder(hf_root):
    spec = {"path": "json", "data_files": {"train": "train.json", "test": "test.json"}}
    with pytest.raises(DataError, match="missing file for split 'train'") as err:
        load_tasks("hf", ["t"], hf_root, 0, hf=spec)
    _one_line(err.value, hf_root / "train.json")


def test_hf_builder_without_data_files_is_refused_before_it_scans_the_current_folder(hf_root):
    (hf_root / "tasks.yaml").write_text("t:\n  label_column: label\n  path: json\n")
    with pytest.raises(ConfigError, match="path 'json' is a file-format builder; give its files with data_files"):
        load_tasks("hf", None, hf_root, 0, hf_tasks=hf_root / "tasks.yaml")


@pytest.mark.parametrize("content, problem", [
    (b"(: {.", r"is not valid YAML: line 1, column 6: expected ',' or '}', but got '<stream end>'"),
    (b"&0 {}:", "is not valid YAML: line 1, column 1: found unhashable key"),
    (b"(: *0", "is not valid YAML: line 1, column 4: found undefined alias '0'"),
    (b"/: {path: csv}", r"unsafe task name '/'"),
    (b"{}\n", r"names none"),
    (b"t: {path: csv, text_column: 5}", "task 't': text_column must be a column name or a list of them, got 5"),
    (b"t: {path: [null]}", r"task 't': path must be a string, got \[None\]"),
    (b"t: {path: csv, instruction: [a]}", r"task 't': instruction must be a string, got \['a'\]"),
    (b"t: {path: csv, data_files: [a.csv]}", "data_files must be a mapping of split name -> file"),
    (b't: {path: "\\ud800"}', r"at \['t'\]\['path'\]: string holds an unpaired surrogate"),
])
def test_hf_tasks_file_errors_are_one_line_naming_the_file(hf_root, content, problem):
    path = hf_root / "tasks.yaml"
    path.write_bytes(content)
    with pytest.raises(SlaoError, match=problem) as err:
        load_tasks("hf", None, hf_root, 0, hf_tasks=path)
    _one_line(err.value, path)


def test_hf_tasks_file_with_numbers_as_task_names_still_reads(hf_root):
    (hf_root / "tasks.yaml").write_text("1234: {path: csv, data_files: {train: train.csv, test: test.csv}}\n")
    assert list(read_tasks_file(hf_root / "tasks.yaml")) == ["1234"]


# -- config files and --set ------------------------------------------------------------------------------
def _build(tmp_path, content: bytes | None = None, sets=()):
    argv = ["run", "--output", str(tmp_path / "run"), *[f"--set={s}" for s in sets]]
    if content is not None:
        (tmp_path / "c.yaml").write_bytes(content)
        argv += ["--config", str(tmp_path / "c.yaml")]
    return build_from_args(make_parser().parse_args(argv))


@pytest.mark.parametrize("content, problem", [
    (b"train: {lr: [1\n", r"is not valid YAML: line 2, column 1: expected ',' or '\]'"),
    (b"\xff\xfe", "line 1: not UTF-8 text"),
    (b"tasks: " + b"[" * 5000, r"\[ and \{ nest more than 100 levels deep"),  # seconds in PyYAML before
    (b"{1: a, foo: b}", "unknown setting 1; valid ones here"),  # TypeError: sorted() of 1 and 'foo'
    (b"a: &a [1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
     b"f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
     b"tasks: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n", "holds more than 100000 values"),  # 2 * 10^8 values
    (b'model: "\\ud800"\n', r"at \['model'\]: string holds an unpaired surrogate"),
    (b"train: {lr: x}\n", "train.lr: expected float, got 'x'"),
    (b"train: {epochs: .inf}\n", "train.epochs: expected a finite number, got inf"),
    (b"seed: 18446744073709551616\n", "seed: expected an integer of at most 64 bits"),
    (b"seed: " + b"1" * 5000 + b"\n", "is not usable YAML: Exceeds the limit"),
    (b"model: {name: x}\n", r"model: expected a single value, got \{'name': 'x'\}"),
    (b"eval: {zero_shot: {}}\n", r"eval.zero_shot: expected bool, got \{\}"),
])
def test_config_file_errors_are_one_line_naming_the_file(tmp_path, content, problem):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=problem) as err:
        _build(tmp_path, content)
    assert time.perf_counter() - start < 5  # the alias bomb stands for 10^10 values: counted, never expanded
    _one_line(err.value, tmp_path / "c.yaml")


@pytest.mark.parametrize("sets, problem", [
    (["train=5", "train.lr=1"], "--set 'train.lr=1': train is set to a single value by an earlier --set"),
    (["a..b=1"], "--set 'a..b=1': the key must be section.key, with no empty part"),
    (["=1"], "--set '=1': the key must be section.key"),
    (["lora.alpha=1e400"], "lora.alpha: expected a finite number, got '1e400'"),
    (["seed=" + "1" * 5000], "seed: expected int, got '1111"),  # ValueError from the YAML constructor
    (["train.lr=.nan"], "train.lr: expected a finite number, got nan"),
])
def test_set_errors_are_one_line(tmp_path, sets, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        _build(tmp_path, sets=sets)
    _one_line(err.value)


def test_set_value_that_is_an_alias_loop_stays_text():
    assert parse_sets(["model=&a [*a]", "tasks=["]) == {"model": "&a [*a]", "tasks": "["}


def test_a_setting_a_flag_overrides_is_not_blamed_on_the_file(tmp_path):
    cfg = _build(tmp_path, b"lora: {r: 0}\n", sets=["lora.r=4"])
    assert cfg.lora.r == 4


def test_bad_config_through_the_cli_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train: {lr: [1\n")
    code = main(["run", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "c.yaml") in err


@pytest.mark.parametrize("content, problem", [
    (b"null", "line 1: null is not a record"),
    (b"\n\n  null\n", "line 3: null is not a record"),
    (b'{"text": "a", "label": "good"}\n{"text": "b", "label": "bad"}\nnull\n', "line 3: null is not a record"),
    (b'[null, {"text": "a", "label": "good"}]', "record 1: null is not a record"),
])
def test_hf_null_json_record_is_refused_before_pyarrow_crashes_the_process(hf_root, content, problem):
    """pyarrow's JSON reader dies of a segmentation fault on these (the fuzzer's run ended with the process):
    they are refused before datasets is called."""
    (hf_root / "train.json").write_bytes(content)
    spec = {"path": "json", "data_files": {"train": "train.json", "test": "train.json"}}
    with pytest.raises(DataError, match=problem) as err:
        load_tasks("hf", ["t"], hf_root, 0, hf=spec)
    _one_line(err.value, hf_root / "train.json")


def test_hf_json_records_with_null_fields_still_load(hf_root):
    rows = [{"text": f"r{i}", "label": "good" if i % 2 else "bad", "extra": None} for i in range(4)]
    (hf_root / "train.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = {"path": "json", "data_files": {"train": "train.json", "test": "train.json"}}
    (task,) = load_tasks("hf", ["t"], hf_root, 0, hf=spec)
    assert len(task.train) == 4
