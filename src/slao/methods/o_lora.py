"""O-LoRA (Wang et al., 2023; design.md §3): incremental LoRA plus a loss that keeps each new task's A
orthogonal to the earlier tasks' A, so the new LoRA learns in a subspace the old ones do not use."""

from __future__ import annotations

import torch

from slao.errors import ConfigError
from slao.methods.base import LoraWeights, register
from slao.methods.inc_lora import IncLoraMethod


def orthogonality_penalty(A_old: torch.Tensor, A_new: torch.Tensor) -> torch.Tensor:
    """sum |A_old @ A_new^T| for A_old (k, in) and A_new (r, in); zero when their rows are orthogonal."""
    return (A_old @ A_new.T).abs().sum()


@register("o-lora")
class OLoraMethod(IncLoraMethod):
    """inc-lora plus lambda1 * sum |A_old @ A_new^T| + lambda2 * L2 norm of the new LoRA (O-LoRA).

    The stacking, freezing and state are inc-lora's (this class only adds the loss). The loss during
    task i, over the target layers, with k = (i-1)*r frozen leading rank components:
    ``lambda1 * sum_layers orthogonality_penalty(A[:k], A[k:])
    + lambda2 * sum_layers (||A[k:]||_F + ||B[:, k:]||_F)``, i.e. the (unsquared) Frobenius norm of
    every new factor, summed, as in the O-LoRA code. Settings: method.o_lora.lambda1 / lambda2.
    """

    def __init__(self, config, lora_shapes, rank=8):
        super().__init__(config, lora_shapes, rank)
        self.lambda1 = float(config.o_lora.lambda1)
        self.lambda2 = float(config.o_lora.lambda2)
        for key, value in (("lambda1", self.lambda1), ("lambda2", self.lambda2)):
            if not value >= 0:
                raise ConfigError(f"method.o_lora.{key} must be a number >= 0, got {value}")

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
