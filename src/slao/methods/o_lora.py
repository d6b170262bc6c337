"""O-LoRA (Wang et al., 2023; design.md §3): incremental LoRA plus a loss that keeps each new task's A
orthogonal to the earlier tasks' A, so the new LoRA learns in a subspace the old ones do not use."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, stack_loras


def orthogonality_penalty(A_old: torch.Tensor, A_new: torch.Tensor) -> torch.Tensor:
    """sum |A_old @ A_new^T| for A_old (k, in) and A_new (r, in); zero when their rows are orthogonal."""
    return (A_old @ A_new.T).abs().sum()


@dataclass
class OLoraOptions:
    lambda1: float = option(0.5, "weight of the orthogonality loss sum |A_old @ A_new^T|")
    lambda2: float = option(0.0, "weight of the L2 norm of the new LoRA")


@register("o-lora", options=OLoraOptions)
class OLoraMethod(Method):
    """Incremental LoRA plus lambda1 * sum |A_old @ A_new^T| + lambda2 * L2 norm of the new LoRA (O-LoRA).

    Earlier tasks' LoRAs are stacked and frozen as in inc-lora (grows by one LoRA a task). The loss during
    task i, over the target layers, with k = (i-1)*r frozen leading rank components:
    ``lambda1 * sum_layers orthogonality_penalty(A[:k], A[k:])
    + lambda2 * sum_layers (||A[k:]||_F + ||B[:, k:]||_F)``, i.e. the (unsquared) Frobenius norm of
    every new factor, summed, as in the O-LoRA code. Settings: method.o_lora.lambda1 / lambda2.
    """

    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.lambda1 = float(options.lambda1)
        self.lambda2 = float(options.lambda2)
        for key, value in (("lambda1", self.lambda1), ("lambda2", self.lambda2)):
            if not value >= 0:
                raise ConfigError(f"method.o_lora.{key} must be a number >= 0, got {value}")
        self.stack: LoraWeights = {}  # name -> (A (k*r, in), B (out, k*r)) after k tasks

    def init_lora(self, i, default, data=None):
        return stack_loras(self.stack if i > 1 else {}, default)

    def frozen_rank(self, i: int) -> int:
        return (i - 1) * self.rank

    def extra_loss(self, i: int, params: LoraWeights) -> torch.Tensor | None:
        k = self.frozen_rank(i)
        use_orth = self.lambda1 != 0 and k > 0
        if not use_orth and self.lambda2 == 0:
            return None
        total = None
        for A, B in params.values():
            term = 0.0
            if use_orth:
                # The old rows are frozen: only the new rows should be pushed away from them.
                term = term + self.lambda1 * orthogonality_penalty(A[:k].detach(), A[k:])
            if self.lambda2 != 0:
                term = term + self.lambda2 * (torch.linalg.vector_norm(A[k:]) + torch.linalg.vector_norm(B[:, k:]))
            total = term if total is None else total + term
        return total

    def after_task(self, i, trained, data=None):
        self.stack = clone_lora(trained)
        return self.stack

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("stack", self.stack)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.stack = self.unflatten("stack", tensors)
