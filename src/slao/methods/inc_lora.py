"""Incremental LoRA (design.md §3): a new LoRA per task, earlier ones frozen, all summed at inference.

The k LoRAs live as one stacked LoRA of rank k*r: A's rows and B's columns are the per-task slices in
task order. With the scale s = alpha/r fixed, s * B @ A of the stack is exactly the sum of the k LoRAs,
so one PEFT adapter evaluates and exports them all.
"""

from __future__ import annotations

import torch

from slao.methods.base import LoraWeights, Method, register
from slao.methods.seq_lora import clone_lora


def stack_loras(old: LoraWeights, new: LoraWeights) -> LoraWeights:
    """Append ``new``'s rank components after ``old``'s: A rows (k*r + r, in), B columns (out, k*r + r)."""
    if not old:
        return clone_lora(new)
    return {name: (torch.cat([A, new[name][0]], 0), torch.cat([B, new[name][1]], 1))
            for name, (A, B) in old.items()}


@register("inc-lora")
class IncLoraMethod(Method):
    """A new LoRA per task, earlier ones frozen, all summed at inference (grows by one LoRA a task)."""

    def __init__(self, config, lora_shapes, rank=8):
        super().__init__(config, lora_shapes, rank)
        self.stack: LoraWeights = {}  # name -> (A (k*r, in), B (out, k*r)) after k tasks

    def init_lora(self, i: int, default: LoraWeights) -> LoraWeights:
        return stack_loras(self.stack if i > 1 else {}, default)

    def frozen_rank(self, i: int) -> int:
        return (i - 1) * self.rank

    def after_task(self, i: int, trained: LoraWeights) -> LoraWeights:
        self.stack = clone_lora(trained)
        return self.stack

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("stack", self.stack)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.stack = self.unflatten("stack", tensors)
