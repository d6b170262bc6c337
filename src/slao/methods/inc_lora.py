"""Incremental LoRA (design.md §3): a new LoRA per task, earlier ones frozen, all summed at inference.

The k LoRAs live as one stacked LoRA of rank k*r: A's rows and B's columns are the per-task slices in
task order. With the scale s = alpha/r fixed, s * B @ A of the stack is exactly the sum of the k LoRAs,
so one PEFT adapter evaluates and exports them all.
"""

from __future__ import annotations

import torch

from slao.methods.base import Method, register
from slao.methods.lora_ops import LoraWeights, clone_lora, stack_loras


@register("inc-lora")
class IncLoraMethod(Method):
    """A new LoRA per task, earlier ones frozen, all summed at inference (grows by one LoRA a task)."""

    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.stack: LoraWeights = {}  # name -> (A (k*r, in), B (out, k*r)) after k tasks

    def init_lora(self, i, default, data=None):
        return stack_loras(self.stack if i > 1 else {}, default)

    def frozen_rank(self, i: int) -> int:
        return (i - 1) * self.rank

    def after_task(self, i, trained, data=None):
        self.stack = clone_lora(trained)
        return self.stack

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("stack", self.stack)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.stack = self.unflatten("stack", tensors)
