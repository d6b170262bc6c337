"""Multi-task learning (design.md §3): one LoRA trained on the union of all tasks, evaluated once."""

from __future__ import annotations

import torch

from slao.methods.base import LoraWeights, Method, register
from slao.methods.seq_lora import clone_lora


@register("mtl")
class MultiTaskMethod(Method):
    """One LoRA trained once on the union of all tasks (the upper bound); evaluated once at the end."""

    multi_task = True

    def __init__(self, config, lora_shapes, rank=8):
        super().__init__(config, lora_shapes, rank)
        self.lora: LoraWeights = {}

    def after_task(self, i: int, trained: LoraWeights) -> LoraWeights:
        self.lora = clone_lora(trained)
        return self.lora

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("lora", self.lora)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.lora = self.unflatten("lora", tensors)
