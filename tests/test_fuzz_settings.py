"""Fuzzing config YAML files (``--config``) and ``--set`` values, read into the run's settings; and a
config file end to end through ``slao run``. The harness, the property and the example counts are in
fuzzing.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import contents, fuzz, outcome, texts, yaml_values
from fuzzing import run_cli as _cli
from slao.cli import build_from_args, make_parser

pytestmark = pytest.mark.fuzz


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


# -- a config file end to end through the CLI ------------------------------------------------------------
@fuzz(12, large_divisor=10)
@given(content=st.one_of(contents(config_yaml), st.sampled_from(NASTY_YAML)))
def test_fuzz_config_through_the_cli(content, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        code, err = _cli(["run", "--config", str(path), "--benchmark", "jsonl", "--tasks", "t",
                          "--data-dir", str(Path(tmp) / "missing"), "--output", str(Path(tmp) / "run")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("slao: error: "), err
