"""The small interface every continual-learning method implements, and the registry of methods by name.

A method never touches PEFT or the training loop. The harness hands it plain tensors (``LoraWeights``,
name -> (A (r, in), B (out, r))) and asks: which LoRA to start task i from, which factors train, an
extra loss term, extra training examples, and what to evaluate and deploy after the task. A method that
needs the task's data (layer-input statistics, a replay buffer) reads it through the ``TaskData`` handed
to ``init_lora`` and ``after_task``; it never reaches into the harness.

A method's settings are a small dataclass in its own file, registered with it:
``@register("name", options=NameOptions)``; the config section ``method.<name>`` (dashes become
underscores) is built from the registry, so adding a method touches one file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import TYPE_CHECKING, Any

import torch

from slao.errors import ConfigError
from slao.methods.lora_ops import LoraWeights, flatten, tensors_bytes, unflatten

if TYPE_CHECKING:  # the harness builds it; methods only call it
    from slao.taskdata import TaskData

METHODS: dict[str, type[Method]] = {}


def option(default, help: str):
    """A method setting with its one help text (shown by ``slao config``)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(name: str) -> str:
    """The config section of a method's settings: ``method.<section>``."""
    return name.replace("-", "_")


def check_choice(method: str, name: str, value, allowed) -> None:
    """Refuse a method setting outside its choices, with the setting's path and the choices."""
    if value not in allowed:
        raise ConfigError(f"method.{section(method)}.{name} must be one of {', '.join(allowed)}; got {value!r}")


def register(name: str, options: type | None = None):
    """Class decorator: make a method available as ``slao run --method NAME``, with its settings."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of method {name!r} must be a dataclass")

    def add(cls):
        cls.name = name
        cls.Options = options
        METHODS[name] = cls
        return cls

    return add


def get_method(name: str) -> type[Method]:
    import slao.methods  # noqa: F401 - fills the registry

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config_class() -> type:
    """The dataclass of the ``method`` config section: the method's name, the settings every method shares,
    and one sub-section per method that declares options."""
    import slao.methods  # noqa: F401 - fills the registry

    fields: list[tuple[str, Any, Any]] = [
        ("name", str, option("slao", "continual-learning method (slao list shows them)")),
        ("stats_examples", int, option(256, "most training examples a method reads for its statistics "
                                            "(layer-input covariances); drawn in order, batched, no gradients")),
        ("stats_batch_size", int, option(8, "examples per forward pass when a method collects statistics")),
    ]
    for name, cls in sorted(METHODS.items()):
        if cls.Options is not None:
            doc = (cls.__doc__ or name).strip().splitlines()[0]
            fields.append((section(name), cls.Options,
                           field(default_factory=cls.Options, metadata={"help": f"{name}: {doc}"})))
    return dataclasses.make_dataclass("MethodConfig", fields)


def method_options(method_cfg, name: str | None = None):
    """The options object of the named method (or the configured one) in a ``method`` config section."""
    name = name or method_cfg.name
    cls = get_method(name)
    return getattr(method_cfg, section(name)) if cls.Options is not None else None


def build_method(method_cfg, lora_shapes: dict[str, tuple[int, int]], rank: int, num_tasks: int = 0) -> Method:
    """The configured method, given its own options (checked in its constructor)."""
    cls = get_method(method_cfg.name)
    return cls(method_options(method_cfg), lora_shapes, rank, num_tasks)


class Method:
    """Do-nothing defaults. ``lora_shapes`` maps each target layer to (out, in); ``rank`` is r; ``num_tasks``
    is the run's T (0 where a method is built without a run, as when its settings are checked)."""

    name = "base"
    Options: type | None = None
    #: True for joint training on the union of all tasks (one evaluation, at the end).
    multi_task = False
    #: False for a method that keeps earlier tasks' data (tables label it).
    data_free = True
    #: True when the state kept between tasks grows with the number of tasks.
    grows = False
    #: True for a method told at inference which task an input belongs to (a bound, not a baseline).
    oracle = False
    #: The run's task names in training order (set by the harness; for methods that name exports).
    task_names: tuple[str, ...] = ()

    def __init__(self, options, lora_shapes: dict[str, tuple[int, int]], rank: int = 8, num_tasks: int = 0):
        self.options = options
        self.lora_shapes = lora_shapes
        self.rank = rank
        self.num_tasks = num_tasks

    # -- before a task --------------------------------------------------------------------------
    def init_lora(self, i: int, default: LoraWeights, data: TaskData | None = None) -> LoraWeights:
        """The LoRA that task i (1-based) starts from; ``default`` is PEFT's fresh init at rank r."""
        return default

    def trainable(self, i: int) -> tuple[bool, bool]:
        """Which factors train during task i (1-based): (A, B)."""
        return True, True

    def frozen_rank(self, i: int) -> int:
        """Leading rank components that stay frozen during task i (for methods that stack LoRAs)."""
        return 0

    def extra_examples(self, i: int) -> list:
        """Encoded examples trained on with task i's own (replay); none for a data-free method."""
        return []

    # -- during a task --------------------------------------------------------------------------
    def extra_loss(self, i: int, params: LoraWeights) -> torch.Tensor | None:
        """A term added to the task loss; ``params`` are the live, trainable tensors."""
        return None

    # -- after a task ---------------------------------------------------------------------------
    def after_task(self, i: int, trained: LoraWeights, data: TaskData | None = None) -> LoraWeights:
        """Fold the fine-tuned LoRA into the method's state; return the LoRA to evaluate and deploy."""
        return trained

    def eval_weights(self, j: int) -> LoraWeights | None:
        """The LoRA to evaluate task j (0-based) with; None means the one ``after_task`` returned."""
        return None

    def exports(self, deployed: LoraWeights) -> dict[str, LoraWeights]:
        """The adapters to write at the end: sub-folder of ``adapter/`` ("" for itself) -> LoRA."""
        return {"": deployed}

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor the method keeps between tasks (checkpointed; counted in bytes)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state`` returned."""

    def state_bytes(self) -> int:
        return tensors_bytes(self.state().values())

    def stats(self) -> dict:
        """Figures a method records after each task besides its state's bytes (a basis's size, a buffer's
        examples); JSON values."""
        return {}

    # Kept as methods for the methods' convenience; the functions live in lora_ops.
    flatten = staticmethod(flatten)
    unflatten = staticmethod(unflatten)


def needs_data(data: TaskData | None, method: str) -> TaskData:
    """``data`` or a clear error: the method reads task data, and was called without any."""
    if data is None:
        raise ValueError(f"method {method!r} needs the task's data (a TaskData) in this hook")
    return data
