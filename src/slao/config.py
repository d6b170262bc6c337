"""Run configuration: nested dataclasses with one help text per field; YAML in, resolved YAML out,
and ``--set section.key=value`` overrides. Defaults follow the paper (design.md §4) and are safe."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slao.errors import ConfigError
from slao.methods.base import build_method, method_config_class
from slao.userfiles import MAX_YAML_DEPTH, check_strings, flow_depth, read_yaml_file


def _f(default, help: str, **kw):
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    train_per_task: int | None = _f(None, "cap on training examples per task (sampled from the seed)")
    test_per_task: int | None = _f(None, "cap on test examples per task (sampled from the seed)")
    max_prompt_tokens: int = _f(256, "longest prompt in tokens; the example text is cut, never the frame")
    carve_test: float | None = _f(None, "fraction of train held out as test where a test split is missing")
    metric: str = _f("auto", "superni/hf score: auto (exact for option tasks, rougeL for free text) | exact | rougeL")
    hf_path: str | None = _f(None, "hf source: hub id, local folder, or csv/json/parquet ({task} = task name)")
    hf_config: str | None = _f(None, "hf source: the dataset's configuration name")
    hf_data_files: dict[str, str] | None = _f(None, "hf source: split -> file for csv/json/parquet")
    hf_text_column: list[str] = _f(["text"], "hf source: input column(s); several become 'name: value' lines")
    hf_label_column: str = _f("label", "hf source: answer column (a ClassLabel's names are the options)")
    hf_train_split: str = _f("train", "hf source: split used for training")
    hf_test_split: str = _f("test", "hf source: split used for testing")
    hf_instruction: str = _f("", "hf source: instruction line shown before the options and the text")
    hf_tasks: str | None = _f(None, "hf source: YAML file of task name -> the hf_* keys without 'hf_'")


@dataclass
class LoraSettings:
    r: int = _f(8, "LoRA rank")
    alpha: float = _f(32.0, "LoRA alpha; the update is (alpha / r) * B @ A")
    dropout: float = _f(0.1, "dropout on the LoRA input during training")
    target_modules: list[str] = _f(["q_proj", "v_proj"], "names of the linear layers that get a LoRA")


@dataclass
class TrainConfig:
    lr: float = _f(1e-4, "AdamW learning rate (constant unless lr_schedule says otherwise)")
    lr_schedule: str = _f("constant", "constant | linear (decay to 0 over the task)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    epochs: float = _f(1.0, "passes over each task's training examples")
    batch_size: int = _f(8, "examples per optimiser step, over all processes and micro-batches (the global batch)")
    grad_accum: int = _f(1, "micro-batches accumulated per optimiser step")
    max_grad_norm: float | None = _f(1.0, "gradient clipping norm; null turns it off")
    bf16: bool = _f(False, "bf16 autocast for training")
    group_by_length: bool = _f(False, "batch examples of similar length (less padding; off: the paper's shuffle)")
    log_every: int = _f(1, "write a line to train_log.jsonl every N optimiser steps")


@dataclass
class EvalConfig:
    batch_size: int = _f(32, "prompts per generation batch")
    max_new_tokens: int = _f(50, "most tokens generated per answer (greedy)")
    zero_shot: bool = _f(False, "also score the untrained model on every task (needed for FWT)")
    bf16: bool = _f(False, "bf16 autocast for generation (faster on CPUs with bf16 units; may flip near-ties)")
    rows: str = _f("all", "rows of the accuracy matrix scored: all (every metric) | diagonal-last (AA, BWT, LA; "
                          "F n/a) | last (AA only); the next task too with eval.zero_shot (FWT)")


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class LogConfig:
    trackers: list[str] = _f([], "experiment trackers (Accelerate's): tensorboard | wandb | mlflow; per-step loss "
                                 "and lr, and after each task the scores and running AA, BWT, F")
    project: str = _f("slao", "project (experiment) name given to the trackers")


# The method section is built from the registry: each method declares its settings in its own file.
MethodConfig = method_config_class()


@dataclass
class RunConfig:
    seed: int = _f(0, "seed for sampling, initialisation, dropout and data order")
    model: str = _f("tiny-random", "tiny-random | smollm2-135m | a local folder | a hub id")
    trust_remote_code: bool = _f(False, "allow a hub model's own code to run")
    model_dtype: str = _f("float32", "dtype of the frozen base weights: float32 | bfloat16 | float16")
    benchmark: str = _f("packaged", "standard | long | superni | packaged | olora | jsonl | hf (slao list)")
    order: int | None = _f(None, "task order of the benchmark")
    tasks: list[str] | None = _f(None, "task names in training order (overrides the order)")
    exclude: list[str] = _f([], "task names left out of the order (recorded in results.json)")
    data_dir: str | None = _f(None, "folder with the benchmark's files")
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "method"})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"help": "experiment tracking"})


# ------------------------------------------------------------------------------------------------
def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _coerce(value, tp, where: str):
    """Turn a YAML/flag value into the field's type, or fail with the field's path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if tp is str and isinstance(value, dict | list):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
                return bool(value)
            raise ValueError
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        out = tp(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    if tp is float and not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if tp is int and not -(2**63) <= out < 2**63:
        raise ConfigError(f"{where}: expected an integer of at most 64 bits, got {value!r}")
    return out


def _from_dict(cls, data: dict, where: str = ""):
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(
            f"unknown setting {path}{unknown[0]}; valid ones here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_sets(pairs: list[str]) -> dict:
    """["train.lr=3e-4", "seed=1"] -> nested dict with YAML-parsed values."""
    tree: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects section.key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {pair!r}: the key must be section.key, with no empty part")
        try:
            if flow_depth(raw) > MAX_YAML_DEPTH:
                raise ConfigError("too deep to parse")
            value = yaml.safe_load(raw) if raw != "" else ""
            check_strings(value, f"--set {pair!r}", ConfigError, limit=10_000)
        except (yaml.YAMLError, RecursionError, ValueError, ConfigError):
            value = raw  # not a YAML value (or too large a number for Python): the text itself
        node = tree
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {'.'.join(parts[:i + 1])} is set to a single value by an "
                                  "earlier --set, so it has no keys")
        node[parts[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    data = read_yaml_file(path, ConfigError, "config file ") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def build_config(*layers: dict) -> RunConfig:
    """Defaults, then each layer (a config file, flags, --set) in turn; validated once, here."""
    merged: dict = to_dict(RunConfig())
    for layer in layers:
        merged = _merge(merged, layer)
    cfg = _from_dict(RunConfig, merged)
    _validate(cfg)
    return cfg


def _validate(cfg: RunConfig) -> None:
    checks = [
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.model_dtype in ("float32", "bfloat16", "float16"), "model_dtype must be float32, bfloat16 or float16"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (cfg.train.epochs > 0, "train.epochs must be positive"),
        (cfg.lora.r >= 1, "lora.r must be at least 1"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be at least 1"),
        (cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens must be at least 1"),
        (cfg.data.max_prompt_tokens >= 16, "data.max_prompt_tokens must be at least 16"),
        (cfg.train.lr_schedule in ("constant", "linear"), "train.lr_schedule must be constant or linear"),
        (cfg.data.metric in ("auto", "exact", "rougeL"), "data.metric must be auto, exact or rougeL"),
        (cfg.eval.rows in ("all", "diagonal-last", "last"), "eval.rows must be all, diagonal-last or last"),
    ]
    for cap in ("train_per_task", "test_per_task"):
        n = getattr(cfg.data, cap)
        checks.append((n is None or n >= 1, f"data.{cap} must be at least 1"))
    if cfg.data.carve_test is not None:
        checks.append((0 < cfg.data.carve_test < 1, "data.carve_test must be a fraction in (0, 1)"))
    for name in cfg.log.trackers:
        checks.append((name in TRACKERS, f"log.trackers: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.method.stats_examples < 1 or cfg.method.stats_batch_size < 1:
        raise ConfigError("method.stats_examples and method.stats_batch_size must be at least 1")
    # The method's own settings (a schedule, a scale) are checked by the method: here, before any model loads.
    build_method(cfg.method, {}, cfg.lora.r)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
