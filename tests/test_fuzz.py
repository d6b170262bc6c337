"""Fuzzing everything a user hands over: data folders of every source (O-LoRA layout, SuperNI task files,
JSONL tasks with options.json and instruction.txt, csv/json files read by ``datasets``), config YAML files,
``--set`` values, the hf tasks YAML, adapter folders and checkpoints.

Property: every input either loads (and what loads is usable: hashable, UTF-8, the promised shapes), or
raises a SlaoError, which the CLI prints as one line and exits 2 with, whose message is one line naming
the file (and the line or record where there is one); never another exception, never a hang (each example
runs under a hypothesis deadline and a hard alarm).

Counts: in the default test command each target tries the number of examples given in its ``@fuzz(...)``,
the same examples every run (derandomized). ``SLAO_FUZZ_EXAMPLES=N`` tries N fresh random examples per
target (N/10 for the ``datasets`` target): ``SLAO_FUZZ_EXAMPLES=2000 pytest -m fuzz``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_tensors

from slao import checkpoint
from slao.cli import build_from_args, main, make_parser
from slao.data import load_tasks
from slao.errors import SlaoError
from slao.harness import tasks_sha256
from slao.lora import load_adapter_weights

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("SLAO_FUZZ_EXAMPLES") or 0)
HARD_LIMIT_S = 30  # an example still running after this is a hang
DEADLINE = timedelta(seconds=5)  # tiny files load in milliseconds; this only catches pathological slowness


def fuzz(default_examples: int, large_divisor: int = 1):
    """Hypothesis settings of one target: ``default_examples`` (derandomized) or SLAO_FUZZ_EXAMPLES."""
    n = max(1, FUZZ_EXAMPLES // large_divisor) if FUZZ_EXAMPLES else default_examples
    # No explain phase: it re-runs a failure under a line tracer, slow enough to trip the hard limit.
    return settings(max_examples=n, deadline=DEADLINE, derandomize=not FUZZ_EXAMPLES, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])


class Hang(BaseException):
    """An example that ran past HARD_LIMIT_S (a BaseException: no ``except Exception`` swallows it)."""


@contextmanager
def hard_limit(seconds: float = HARD_LIMIT_S):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, names: list[str]):
    """``call()``'s result, or the SlaoError it raised after checking that its message is one line that
    names one of ``names`` (files or folders); any other exception fails the example."""
    with hard_limit():
        try:
            result = call()
        except SlaoError as err:
            event("refused: " + " ".join(re.sub(r"/\S*|'[^']*'", "_", str(err)).split()[:5]))
            message = str(err)
            assert "\n" not in message and "\r" not in message, f"message of several lines: {message!r}"
            assert any(name in message for name in names), f"message names none of {names}: {message!r}"
            assert err.exit_status == 2
            return err
    event("loaded")
    return result


# -- strategies ------------------------------------------------------------------------------------------
class Raw(str):
    """JSON text written as is by ``dump_json`` (what json.dumps never writes)."""


NASTY_JSON = [
    '"\\ud800"', '"x\\udc00y"', '"\\ud83d\\ude00"', "[" * 3000 + "]" * 3000, '{"a":' * 2000 + "1" + "}" * 2000,
    "9" * 5000, "NaN", "-Infinity", "1e999", '"\\u0000"', '""', "[]", "{}", "null", "true", "-1", "0.5",
]
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
plain_texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "-", "...", "good", "bad", "passage: p\nquestion: q?", "a, b", "\x00", "é\u2028"]),
)
texts = st.one_of(plain_texts, plain_texts, plain_texts, plain_texts, plain_texts, surrogates)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.sampled_from(NASTY_JSON).map(Raw))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3),
                      max_leaves=5)

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts,
                         st.sampled_from(["slao", "seq-lora", "linear", "0.5", "2020-01-01", "0x1f", ".inf"]))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=2),
                           max_leaves=4)


def maybe(valid):
    """Mostly ``valid`` (three times in four), else any JSON value."""
    return st.one_of(valid, valid, valid, values)


def dump_json(value) -> str:
    """JSON text of ``value``; Raw parts as they are, strings ASCII-escaped (a surrogate as \\udxxx)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump_json(v) for v in value) + "]"
    return json.dumps(value)


@st.composite
def mutate(draw, data: bytes) -> bytes:
    """``data`` with a few bytes cut, flipped, inserted or dropped."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(("cut", "flip", "insert", "drop")))
        if op == "cut":
            del out[pos:]
        elif op == "flip" and pos < len(out):
            out[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "drop":
            del out[pos:pos + draw(st.integers(1, 8))]
    return bytes(out)


def contents(near_valid):
    """A file's bytes: mostly near-valid, else random, or near-valid with bytes cut, flipped, inserted or
    dropped."""
    return st.one_of(near_valid, near_valid, near_valid, st.binary(max_size=200), near_valid.flatmap(mutate))


def as_json(strategy):
    return strategy.map(lambda v: dump_json(v).encode())


@st.composite
def folder(draw, valid: dict[str, bytes | None], fuzzed: dict[str, object], often=()) -> dict[str, bytes | None]:
    """The files ``valid`` (relative path -> bytes, None: absent) with one or two of them (those in
    ``often`` three times as likely) replaced by generated content (or removed)."""
    files = dict(valid)
    pool = st.sampled_from(sorted(fuzzed) + 2 * list(often))
    for rel in {draw(pool), draw(pool)} if draw(st.booleans()) else {draw(pool)}:
        files[rel] = None if draw(st.integers(0, 9)) == 0 else draw(contents(fuzzed[rel]))
    return files


def write_files(root: Path, files: dict[str, bytes | None]) -> list[str]:
    """Write ``files`` under ``root``; return every path (written or not), for the message check."""
    for rel, data in files.items():
        if data is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return [str(root / rel) for rel in files]


def check_tasks(tasks) -> None:
    """What loaded is usable downstream: hashed for results and checkpoints, dumped, prompted."""
    tasks_sha256(tasks)
    for task in tasks:
        json.dumps(task.info)
        assert task.train and task.test
        for ex in task.train + task.test:
            assert isinstance(ex.text, str) and ex.answers and all(isinstance(a, str) and a for a in ex.answers)
            task.prompt(ex).encode("utf-8")


LABELS = ["good", "bad"]
labels_or_junk = st.one_of(st.sampled_from(LABELS), st.sampled_from(LABELS), texts)


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


# -- config YAML and --set ------------------------------------------------------------------------------
SETTING_KEYS = ["seed", "model", "benchmark", "order", "tasks", "exclude", "data_dir", "trust_remote_code",
                "model_dtype", "train.lr", "train.batch_size", "train.epochs", "train.max_grad_norm", "lora.r",
                "lora.alpha", "lora.target_modules", "data.train_per_task", "data.carve_test", "data.hf_data_files",
                "data.hf_text_column", "eval.rows", "eval.zero_shot", "method.name", "method.slao.schedule",
                "method.magmax.scale", "method", "train", "nope", "train.nope", "a..b", ".", ""]


def _nest(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else node
        node[parts[-1]] = value
    return out


config_yaml = st.lists(st.tuples(st.sampled_from(SETTING_KEYS), yaml_values), max_size=4).map(
    lambda pairs: yaml.safe_dump(_nest(pairs)).encode())
NASTY_YAML = [
    b"a: &a [1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\n"
    b"tasks: [*e, *e, *e, *e, *e, *e, *e, *e]\n",
    b"tasks: " + b"[" * 5000, b"{1: a, foo: b}", b"? [a, b]\n: c\n", b"seed: !!python/object/apply:os.system [ls]\n",
    b'model: "\\ud800"\n', b"train: 5\n", b"- a\n- b\n", b"seed: 1e400\n", b"lora: {r: .nan}\n",
    b"\xef\xbb\xbfseed: 1\n",
]


@fuzz(60)
@given(content=st.one_of(contents(config_yaml), st.sampled_from(NASTY_YAML)))
def test_fuzz_config_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        args = make_parser().parse_args(["run", "--output", tmp, "--config", str(path)])
        outcome(lambda: build_from_args(args), [str(path)])


set_value = st.one_of(texts, st.sampled_from(["3e-4", "[a, b]", "{a: 1}", "[", "null", ".nan", "1" * 5000, "[" * 3000,
                                              "&a [*a]", "!!python/name:os.system", '"\\ud800"']))
set_pair = st.one_of(st.tuples(st.sampled_from(SETTING_KEYS), set_value).map(lambda kv: f"{kv[0]}={kv[1]}"),
                     texts)


@fuzz(80)
@given(pairs=st.lists(set_pair, min_size=1, max_size=3))
def test_fuzz_set_values(pairs):
    args = make_parser().parse_args(["run", "--output", "o", *[f"--set={p}" for p in pairs]])
    keys = [p.split("=", 1)[0].strip() for p in pairs if "=" in p]
    sections = [k.split(".")[0] for k in keys]  # "unknown method 'x'" for method.name=x
    outcome(lambda: build_from_args(args), ["--set", *filter(None, keys + sections)])  # names the flag or setting


# -- adapter folders -------------------------------------------------------------------------------------
BASE = "tiny-random(seed=0)"
SHAPES = {"model.layers.0.self_attn.q_proj": (6, 4), "model.layers.0.self_attn.v_proj": (3, 4)}
ADAPTER_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": BASE, "r": 2, "lora_alpha": 4.0,
                  "target_modules": ["q_proj", "v_proj"], "rank_pattern": {}, "alpha_pattern": {},
                  "use_rslora": False, "use_dora": False, "bias": "none", "task_type": "CAUSAL_LM"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8, torch.bool]


@st.composite
def adapter_tensors(draw) -> dict[str, torch.Tensor]:
    """Near-valid LoRA tensors for SHAPES: some with another rank, shape, dtype, NaN or inf, or missing."""
    out = {}
    for layer, (n_out, n_in) in SHAPES.items():
        for ab, shape in (("A", [2, n_in]), ("B", [n_out, 2])):
            key = f"base_model.model.{layer}.lora_{ab}.weight"
            change = draw(st.sampled_from(["none"] * 6 + ["rank", "shape", "dims", "dtype", "nan", "inf", "drop",
                                                          "rename"]))
            if change == "drop":
                continue
            if change == "rank":
                shape[0 if ab == "A" else 1] = draw(st.integers(1, 4))
            elif change == "shape":
                shape[1 if ab == "A" else 0] = draw(st.integers(0, 7))
            elif change == "dims":
                shape = draw(st.lists(st.integers(1, 3), max_size=3))
            tensor = torch.randn(shape).to(draw(st.sampled_from(DTYPES)) if change == "dtype" else torch.float32)
            if change in ("nan", "inf") and tensor.numel():
                tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = float(change)
            if change == "rename":
                key = draw(st.sampled_from([key.replace(".weight", ".bias"), key.replace(layer, "model.x"), "w"]))
            out[key] = tensor.contiguous()
    return out


def _header_length(data: bytes, draw) -> bytes:
    """``data`` with the header length (its first 8 bytes, little-endian u64) replaced."""
    n = draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, len(data), len(data) - 8, 2**63, 2**64 - 1]),
                       st.just(max(len(data) - 9, 0))))
    return n.to_bytes(8, "little") + data[8:]


@st.composite
def adapter_files(draw) -> dict[str, bytes | None]:
    config = dict(ADAPTER_CONFIG)
    for key in draw(st.sets(st.sampled_from(sorted(config) + ["layers_pattern"]), max_size=3)):
        config[key] = draw(st.one_of(
            values, st.integers(-8, 8), st.floats(), st.sampled_from(["q_proj", ".*proj", "(", "all-linear"]),
            st.lists(st.sampled_from(["q_proj", "v_proj", "k_proj", "", "self_attn.q_proj"]), max_size=3)))
        if draw(st.booleans()):
            del config[key]
    weights = save_tensors(draw(adapter_tensors()))
    how = draw(st.sampled_from(["tensors", "tensors", "bytes", "length", "random", "config-bytes", "none"]))
    if how == "bytes":
        weights = draw(mutate(weights))
    elif how == "length":
        weights = _header_length(weights, draw)
    elif how == "random":
        weights = draw(st.binary(max_size=64))
    config_bytes = dump_json(config).encode()
    if how == "config-bytes":
        config_bytes = draw(contents(st.just(config_bytes)))
    elif how == "none":
        config_bytes, weights = draw(st.sampled_from([(None, weights), (config_bytes, None)]))
    return {"adapter_config.json": config_bytes, "adapter_model.safetensors": weights}


@fuzz(80)
@given(files=adapter_files())
def test_fuzz_adapter_folder(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapter"
        root.mkdir()
        names = write_files(root, files)
        result = outcome(lambda: load_adapter_weights(root, BASE, SHAPES), names + [str(root)])
        if isinstance(result, SlaoError):
            return
        config, weights = result  # what loads is what the docstring promises
        assert type(config["r"]) is int and config["r"] >= 1
        assert 0 < float(config["lora_alpha"]) < float("inf")
        assert set(weights) == set(SHAPES)
        for layer, (A, B) in weights.items():
            assert A.shape == (config["r"], SHAPES[layer][1]) and B.shape == (SHAPES[layer][0], config["r"])
            assert A.is_floating_point() and B.is_floating_point()
            assert bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())


# -- checkpoints from elsewhere ---------------------------------------------------------------------------
META = {"method": "slao", "base_model": BASE, "tasks": "a,b"}


@st.composite
def checkpoint_tensors(draw, valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in valid.items():
        change = draw(st.sampled_from(["none"] * 4 + ["dtype", "nan", "inf", "shape", "drop"]))
        if change == "drop":
            continue
        if change == "dtype":
            tensor = tensor.to(draw(st.sampled_from(DTYPES)))
        elif change in ("nan", "inf") and tensor.is_floating_point():
            tensor = tensor.clone()
            tensor.view(-1)[0] = float(change)
        elif change == "shape":
            tensor = torch.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), dtype=tensor.dtype)
        out[key] = tensor.contiguous()
    return out


def _valid_checkpoint(run: Path) -> Path:
    state = {"merged/l/A": torch.ones(2, 3), "merged/l/B": torch.ones(4, 2)}
    deploy = {"deploy/l/A": torch.ones(2, 3), "deploy/l/B": torch.ones(4, 2)}
    return checkpoint.save(run, 1, {"accuracy": [[50.0]]}, state, deploy, META)


@fuzz(40)
@given(data=st.data(), which=st.sampled_from(checkpoint.TENSOR_FILES),
       how=st.sampled_from(["tensors", "tensors", "bytes", "length"]))
def test_fuzz_checkpoint_from_elsewhere(data, which, how):
    """A checkpoint whose tensor file was replaced and whose checksum was updated to match it."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = _valid_checkpoint(Path(tmp))
        path = folder / which
        if how == "tensors":
            content = save_tensors(data.draw(checkpoint_tensors(load_file(str(path)))))
        elif how == "bytes":
            content = data.draw(mutate(path.read_bytes()))
        else:
            content = _header_length(path.read_bytes(), data.draw)
        path.write_bytes(content)
        progress = json.loads((folder / "progress.json").read_text())
        progress["sha256"][which] = checkpoint._sha256(path)
        (folder / "progress.json").write_text(json.dumps(progress))
        result = outcome(lambda: checkpoint.load(folder, META), [str(path), str(folder)])
        if isinstance(result, SlaoError):
            return
        for tensors in (result.state, result.deploy):
            assert all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors.values())
        assert result.rng["0/torch"].dtype == torch.uint8
        assert result.rng["0/torch"].shape == torch.get_rng_state().shape


# -- end to end through the CLI --------------------------------------------------------------------------
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    with hard_limit():
        code = main(argv)
    return code, capsys.readouterr().err


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


@fuzz(12, large_divisor=10)
@given(content=st.one_of(contents(config_yaml), st.sampled_from(NASTY_YAML)))
def test_fuzz_config_through_the_cli(content, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        code, err = _cli(["run", "--config", str(path), "--benchmark", "jsonl", "--tasks", "t",
                          "--data-dir", str(Path(tmp) / "missing"), "--output", str(Path(tmp) / "run")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("slao: error: "), err
