"""Sequential LoRA (design.md §3): one LoRA trained on each task in turn, never merged (the lower bound)."""

from __future__ import annotations

import torch

from slao.methods.base import Method, register
from slao.methods.lora_ops import LoraWeights, clone_lora


@register("seq-lora")
class SeqLoraMethod(Method):
    """One LoRA trained on every task in turn from the previous task's LoRA; no merging (lower bound)."""

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.lora: LoraWeights = {}

    def init_lora(self, i, default, data=None):
        return clone_lora(self.lora) if i > 1 and self.lora else default

    def after_task(self, i, trained, data=None):
        self.lora = clone_lora(trained)
        return self.lora

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("lora", self.lora)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.lora = self.unflatten("lora", tensors)
