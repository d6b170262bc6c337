"""Multi-task learning (design.md §3): one LoRA trained on the union of all tasks, evaluated once."""

from __future__ import annotations

import torch

from slao.methods.base import Method, register
from slao.methods.lora_ops import LoraWeights, clone_lora


@register("mtl")
class MultiTaskMethod(Method):
    """One LoRA trained once on the union of all tasks (the upper bound); evaluated once at the end."""

    multi_task = True
    data_free = False  # it trains on every task's data at once

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.lora: LoraWeights = {}

    def after_task(self, i, trained, data=None):
        self.lora = clone_lora(trained)
        return self.lora

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("lora", self.lora)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.lora = self.unflatten("lora", tensors)
