"""Fuzzing the data folders of every source: the O-LoRA layout, SuperNI task files, JSONL tasks with
options.json and instruction.txt, ``--tasks`` names, csv/json files read by ``datasets`` and the hf tasks
YAML; and a JSONL folder end to end through ``slao run``. The harness, the property and the example
counts are in fuzzing.py."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import (
    LABELS,
    as_json,
    check_tasks,
    contents,
    dump_json,
    folder,
    fuzz,
    labels_or_junk,
    maybe,
    outcome,
    texts,
    values,
    write_files,
    yaml_values,
)
from fuzzing import run_cli as _cli
from slao.data import load_tasks
from slao.errors import SlaoError

pytestmark = pytest.mark.fuzz


# -- O-LoRA layout ---------------------------------------------------------------------------------------
def _olora_records(n: int, tag: str) -> bytes:
    return json.dumps([{"label": LABELS[i % 2], "sentence": f"{tag} {i}"} for i in range(n)]).encode()


OLORA_VALID = {
    "instruction_config.json": json.dumps({"SC": [{"instruction_type": "zero-shot",
                                                    "instruction": "Good or bad?\n"}]}).encode(),
    "SC/ds/labels.json": json.dumps(LABELS).encode(),
    "SC/ds/train.json": _olora_records(6, "train"),
    "SC/ds/test.json": _olora_records(3, "test"),
}
olora_valid_record = st.fixed_dictionaries({"label": maybe(labels_or_junk), "sentence": maybe(texts)})
olora_record = st.one_of(olora_valid_record, olora_valid_record, olora_valid_record,
                         st.dictionaries(st.sampled_from(["label", "sentence", "x"]), values, max_size=3), values)
olora_records = as_json(maybe(st.lists(olora_record, max_size=6) | st.lists(st.fixed_dictionaries(
    {"label": st.sampled_from(LABELS), "sentence": texts}), min_size=1, max_size=6)))
OLORA_FUZZED = {
    "instruction_config.json": as_json(maybe(st.fixed_dictionaries({"SC": maybe(st.lists(
        st.fixed_dictionaries({"instruction": maybe(texts)}) | texts, max_size=2))}))),
    "SC/ds/labels.json": as_json(maybe(st.lists(labels_or_junk, max_size=4))),
    "SC/ds/train.json": olora_records,
    "SC/ds/test.json": olora_records,
}


@fuzz(60)
@given(files=folder(OLORA_VALID, OLORA_FUZZED, often=["SC/ds/train.json", "SC/ds/test.json"]),
       carve=st.sampled_from([None, 0.3]), cap=st.sampled_from([None, 2]))
def test_fuzz_olora_folder(files, carve, cap):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cl"
        names = write_files(root, files)
        result = outcome(lambda: load_tasks("olora", ["ds"], root, 0, cap, cap, carve), names + [str(root)])
        if not isinstance(result, SlaoError):
            check_tasks(result)


# -- SuperNI task files --------------------------------------------------------------------------------
def _ni_file(n: int, tag: str) -> bytes:
    instances = [{"id": f"{tag}-{i}", "input": f"{tag} input {i}", "output": [LABELS[i % 2]]} for i in range(n)]
    return json.dumps({"Definition": ["Say good or bad."], "Instances": instances}).encode()


SUPERNI_VALID = {"task1_x/train.json": _ni_file(6, "train"), "task1_x/test.json": _ni_file(3, "test"),
                 "task1_x/labels.json": None}
ni_valid_instance = st.fixed_dictionaries({"id": texts, "input": maybe(texts),
                                           "output": maybe(labels_or_junk | st.lists(maybe(labels_or_junk),
                                                                                     max_size=3))})
ni_instance = st.one_of(ni_valid_instance, ni_valid_instance, ni_valid_instance, values)
ni_file = as_json(maybe(st.fixed_dictionaries({
    "Definition": maybe(st.lists(texts, max_size=2) | texts),
    "Instances": maybe(st.lists(ni_instance, max_size=6) | st.lists(st.fixed_dictionaries(
        {"id": texts, "input": texts, "output": st.sampled_from(LABELS)}), min_size=1, max_size=6))})))
SUPERNI_FUZZED = {"task1_x/train.json": ni_file, "task1_x/test.json": ni_file,
                  "task1_x/labels.json": as_json(maybe(st.lists(labels_or_junk, max_size=4)))}


@fuzz(60)
@given(files=folder(SUPERNI_VALID, SUPERNI_FUZZED, often=["task1_x/train.json", "task1_x/test.json"]),
       carve=st.sampled_from([None, 0.3]), metric=st.sampled_from(["auto", "exact", "rougeL"]))
def test_fuzz_superni_files(files, carve, metric):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ni"
        root.mkdir()
        names = write_files(root, files)
        result = outcome(lambda: load_tasks("superni", ["task1_x"], root, 0, carve_test=carve, metric=metric),
                         names + [str(root)])
        if not isinstance(result, SlaoError):
            check_tasks(result)


# -- JSONL tasks, options.json, instruction.txt ----------------------------------------------------------
def _jsonl(n: int, tag: str) -> bytes:
    return "".join(json.dumps({"input": f"{tag} {i}", "output": LABELS[i % 2]}) + "\n" for i in range(n)).encode()


JSONL_VALID = {"t/train.jsonl": _jsonl(6, "train"), "t/test.jsonl": _jsonl(3, "test"),
               "t/options.json": json.dumps(LABELS).encode(), "t/instruction.txt": b"Good or bad?"}
jsonl_valid_record = st.fixed_dictionaries({"input": maybe(texts),
                                            "output": maybe(labels_or_junk | st.lists(labels_or_junk))})
jsonl_record = st.one_of(jsonl_valid_record, jsonl_valid_record, jsonl_valid_record, values)
jsonl_line = st.one_of(jsonl_record.map(dump_json), jsonl_record.map(dump_json), jsonl_record.map(dump_json),
                       st.sampled_from(["", "  ", "{", "}{", "\ufeff{}"]))
jsonl_clean_line = st.fixed_dictionaries({"input": texts, "output": st.sampled_from(LABELS)}).map(dump_json)
jsonl_file = (st.lists(jsonl_line, max_size=6) | st.lists(jsonl_clean_line, min_size=1, max_size=6)).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))
JSONL_FUZZED = {
    "t/train.jsonl": jsonl_file, "t/test.jsonl": jsonl_file,
    "t/options.json": as_json(maybe(st.lists(labels_or_junk, max_size=4))),
    "t/instruction.txt": texts.map(lambda s: s.encode("utf-8", "surrogatepass")),
}


@fuzz(60)
@given(files=folder(JSONL_VALID, JSONL_FUZZED, often=["t/train.jsonl", "t/test.jsonl"]), cap=st.sampled_from([None, 1]))
def test_fuzz_jsonl_task(files, cap):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        names = write_files(root, files)
        result = outcome(lambda: load_tasks("jsonl", ["t"], root, 0, cap, cap), names + [str(root)])
        if not isinstance(result, SlaoError):
            check_tasks(result)


@fuzz(40)
@given(names=st.lists(st.one_of(st.just("t"), st.just("t"), texts,
                                st.sampled_from(["../t", "/t", "t/..", "T", "t\x00", "C:\\t", "t\\x"])), max_size=3))
def test_fuzz_task_names(names):
    """--tasks values on a valid folder: the names end up in paths and result keys."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        write_files(root, JSONL_VALID)
        result = outcome(lambda: load_tasks("jsonl", names, root, 0), [str(root), "task", "name"])
        if not isinstance(result, SlaoError):
            check_tasks(result)


# -- the datasets (hf) path on local csv / json files ----------------------------------------------------
@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    import datasets

    cache = tmp_path_factory.mktemp("hf-cache")
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(cache)
    datasets.disable_progress_bars()
    (cache / "warm.csv").write_bytes(_csv(HF_VALID_ROWS))  # the first load imports the builders: not timed
    load_tasks("hf", ["t"], cache, 0, carve_test=0.5, hf={"path": "csv", "data_files": {"train": "warm.csv"}})
    yield cache
    datasets.config.HF_DATASETS_CACHE = old
    datasets.enable_progress_bars()


def _csv(rows: list[list]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


HF_VALID_ROWS = [["text", "label"]] + [[f"review {i}", LABELS[i % 2]] for i in range(6)]
csv_cell = st.one_of(texts, st.integers(), st.floats(), st.sampled_from(["", "1,2", '"', "a\nb", "NaN", "None"]))
csv_clean_row = st.tuples(texts, st.sampled_from(LABELS)).map(list)
csv_file = st.one_of(
    st.lists(csv_clean_row, min_size=1, max_size=5).map(lambda rows: _csv([HF_VALID_ROWS[0], *rows])),
    st.lists(st.lists(csv_cell, max_size=3), max_size=5).map(lambda rows: _csv([HF_VALID_ROWS[0], *rows])),
    st.lists(st.lists(csv_cell, min_size=2, max_size=2), max_size=5).map(lambda rows: _csv(HF_VALID_ROWS + rows)),
)
json_clean_rows = st.lists(st.fixed_dictionaries({"text": texts, "label": st.sampled_from(LABELS)}), min_size=1,
                           max_size=5)
json_rows = json_clean_rows | st.lists(st.fixed_dictionaries({"text": maybe(texts), "label": maybe(labels_or_junk)})
                                       | values, max_size=5)
json_file = json_rows.map(lambda rows: "\n".join(map(dump_json, rows)).encode())


@fuzz(20, large_divisor=10)
@given(kind=st.sampled_from(["csv", "json"]), which=st.sampled_from(["train", "test"]), data=st.data(),
       carve=st.sampled_from([None, 0.5]))
def test_fuzz_hf_local_files(hf_cache, kind, which, data, carve):
    valid = {"csv": _csv(HF_VALID_ROWS),
             "json": "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in HF_VALID_ROWS[1:]).encode()}
    files = {f"train.{kind}": valid[kind], f"test.{kind}": valid[kind]}
    files[f"{which}.{kind}"] = data.draw(st.one_of(contents(csv_file if kind == "csv" else json_file), st.none()))
    spec = {"path": kind, "data_files": {"train": f"train.{kind}", "test": f"test.{kind}"}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_files(root, files)
        result = outcome(lambda: load_tasks("hf", ["t"], root, 0, carve_test=carve, hf=spec), names)
        if not isinstance(result, SlaoError):
            check_tasks(result)


def maybe_yaml(valid):
    return st.one_of(valid, valid, yaml_values)


hf_task_settings = st.fixed_dictionaries(
    {"path": maybe_yaml(st.just("csv") | st.sampled_from(["json", "{task}"]) | texts),
     "data_files": maybe_yaml(st.fixed_dictionaries({"train": maybe_yaml(st.just("train.csv")),
                                                     "test": maybe_yaml(st.just("test.csv"))}))},
    optional={"text_column": maybe_yaml(st.sampled_from(["text", "text,label"]) | st.lists(texts, max_size=2)),
              "label_column": maybe_yaml(st.just("label") | texts), "config": yaml_values,
              "train_split": yaml_values, "test_split": yaml_values, "instruction": yaml_values,
              "metric": yaml_values, "colum": yaml_values},
)
hf_tasks_yaml = st.dictionaries(st.one_of(st.sampled_from(["t", "u"]), texts, st.integers()),
                                maybe_yaml(hf_task_settings), min_size=1, max_size=2)
HF_TASKS_NASTY = [b"t: &a {path: csv}\nu: *a\n", b"t: [" * 200, b"t: !!python/name:os.system\n"]


@fuzz(30, large_divisor=10)
@given(content=st.one_of(contents(hf_tasks_yaml.map(lambda d: yaml.safe_dump(d).encode())),
                         st.sampled_from(HF_TASKS_NASTY)))
def test_fuzz_hf_tasks_yaml(hf_cache, content):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_files(root, {"train.csv": _csv(HF_VALID_ROWS), "test.csv": _csv(HF_VALID_ROWS), "tasks.yaml": content})
        path = root / "tasks.yaml"
        result = outcome(lambda: load_tasks("hf", None, root, 0, hf_tasks=path), [str(root), "hf task"])
        if not isinstance(result, SlaoError):
            check_tasks(result)


# -- a JSONL folder end to end through the CLI -----------------------------------------------------------
NO_MODEL = "/nonexistent/model"  # data that loads then fails here, before any model or training


@fuzz(8, large_divisor=10)
@given(files=folder(JSONL_VALID, JSONL_FUZZED, often=["t/train.jsonl", "t/test.jsonl"]))
def test_fuzz_jsonl_through_the_cli(files, capsys):
    """Through ``slao run`` (with a model that is not there, so that data that loads ends at the model):
    always exit 2 and one line on stderr, naming the file when the data is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        names = write_files(root, files)
        code, err = _cli(["run", "--benchmark", "jsonl", "--data-dir", str(root), "--tasks", "t", "--model", NO_MODEL,
                          "--output", str(Path(tmp) / "run")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("slao: error: "), err
        assert NO_MODEL in err or any(name in err for name in [*names, str(root)]), err
