"""The small interface every continual-learning method implements, and the registry of methods by name.

A method never touches PEFT or the training loop. The harness hands it plain tensors and asks:
which LoRA to start task i from, which factors train, an extra loss term, and what to evaluate and
deploy after the task. ``LoraWeights`` maps a target layer's name to its pair (A (r, in), B (out, r)).
"""

from __future__ import annotations

import torch

from slao.errors import ConfigError

LoraWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]

METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a method available as ``slao run --method NAME``."""

    def add(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def get_method(name: str) -> type[Method]:
    import slao.methods  # noqa: F401 - fills the registry

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


class Method:
    """Do-nothing defaults. ``lora_shapes`` maps each target layer to (out, in); ``rank`` is r."""

    name = "base"
    #: True for joint training on the union of all tasks (one evaluation, at the end).
    multi_task = False
    #: The run's task names in training order (set by the harness; for methods that name exports).
    task_names: tuple[str, ...] = ()

    def __init__(self, config, lora_shapes: dict[str, tuple[int, int]], rank: int = 8):
        self.config = config
        self.lora_shapes = lora_shapes
        self.rank = rank

    # -- before a task --------------------------------------------------------------------------
    def init_lora(self, i: int, default: LoraWeights) -> LoraWeights:
        """The LoRA that task i (1-based) starts from; ``default`` is PEFT's fresh init at rank r."""
        return default

    def trainable(self, i: int) -> tuple[bool, bool]:
        """Which factors train during task i (1-based): (A, B)."""
        return True, True

    def frozen_rank(self, i: int) -> int:
        """Leading rank components that stay frozen during task i (for methods that stack LoRAs)."""
        return 0

    # -- during a task --------------------------------------------------------------------------
    def extra_loss(self, i: int, params: LoraWeights) -> torch.Tensor | None:
        """A term added to the task loss; ``params`` are the live, trainable tensors."""
        return None

    # -- after a task ---------------------------------------------------------------------------
    def after_task(self, i: int, trained: LoraWeights) -> LoraWeights:
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
        """Every adapter tensor the method keeps between tasks (checkpointed; counted in bytes)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state`` returned."""

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state().values())

    # -- helpers for subclasses -------------------------------------------------------------------
    @staticmethod
    def flatten(prefix: str, weights: LoraWeights) -> dict[str, torch.Tensor]:
        out = {}
        for name, (A, B) in weights.items():
            out[f"{prefix}/{name}/A"] = A
            out[f"{prefix}/{name}/B"] = B
        return out

    @staticmethod
    def unflatten(prefix: str, tensors: dict[str, torch.Tensor]) -> LoraWeights:
        out: LoraWeights = {}
        start = prefix + "/"
        for key in tensors:
            if key.startswith(start) and key.endswith("/A"):
                name = key[len(start) : -2]
                out[name] = (tensors[key], tensors[f"{start}{name}/B"])
        return out
