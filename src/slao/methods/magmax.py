"""MagMax (Marczak et al., 2024, "MagMax: Leveraging Model Merging for Seamless Continual Learning";
design.md §3): sequential fine-tuning, then after every task a merge that keeps, entry by entry, the task
update of largest magnitude.

With LoRA the update of task i is the dense ``s * B_i @ A_i`` of the LoRA fine-tuned up to task i. The
running merge needs only the merged dense update so far. What is evaluated and deployed is that merge times
``method.magmax.scale`` (default 0.5): the authors' code applies the max-magnitude merged task vector with
scaling coefficient 0.5 (github.com/danielm1405/magmax, merge_splitted.py: ``(merge_max_abs, [0.5])``
passed to ``apply_to(..., scaling_coef=...)``). It is deployed as an exact LoRA: the SVD factors of the
scaled dense update, at rank min(out, in) (zero-padded to one rank for all layers).
"""

from __future__ import annotations

import math

import torch

from slao.errors import ConfigError
from slao.methods.base import LoraWeights, Method, register
from slao.methods.seq_lora import clone_lora


def max_magnitude_merge(merged: torch.Tensor | None, update: torch.Tensor) -> torch.Tensor:
    """Entry by entry, the one of ``merged`` and ``update`` with the larger magnitude (ties keep merged)."""
    if merged is None:
        return update.clone()
    return torch.where(update.abs() > merged.abs(), update, merged)


def factorize(dense: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dense (out, in) -> (A (rank, in), B (out, rank)) with B @ A == dense up to rounding.

    SVD dense = U diag(S) Vh: A = Vh, B = U * S. Components past min(out, in) are zero, so padding to a
    common rank changes nothing.
    """
    U, S, Vh = torch.linalg.svd(dense.to(torch.float64), full_matrices=False)  # k = min(out, in)
    k = S.shape[0]
    A = torch.zeros(rank, dense.shape[1], dtype=torch.float64)
    B = torch.zeros(dense.shape[0], rank, dtype=torch.float64)
    A[:k] = Vh
    B[:, :k] = U * S
    return A.to(dense.dtype), B.to(dense.dtype)


@register("magmax")
class MagMaxMethod(Method):
    """Sequential fine-tuning; after each task keep, per weight entry, the largest-magnitude task update,
    and deploy that merge times ``method.magmax.scale`` (0.5, as in Marczak et al.'s code)."""

    def __init__(self, config, lora_shapes, rank=8):
        super().__init__(config, lora_shapes, rank)
        self.scale = float(config.magmax.scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"method.magmax.scale must be a positive number, got {config.magmax.scale!r}")
        # The merged update is kept divided by s = alpha / r (that is, as B @ A): s is the same for
        # every task, so the entry-wise choice is unchanged and the factors load at PEFT's scale s.
        self.merged: dict[str, torch.Tensor] = {}  # name -> (out, in)
        self.last_ft: LoraWeights = {}
        self.deploy_rank = max(min(shape) for shape in lora_shapes.values()) if lora_shapes else rank

    def init_lora(self, i: int, default: LoraWeights) -> LoraWeights:
        return clone_lora(self.last_ft) if i > 1 and self.last_ft else default

    def after_task(self, i: int, trained: LoraWeights) -> LoraWeights:
        self.last_ft = clone_lora(trained)
        self.merged = {name: max_magnitude_merge(self.merged.get(name), B @ A)
                       for name, (A, B) in trained.items()}
        return self.deployed()

    def deployed(self) -> LoraWeights:
        """The LoRA of ``scale`` times the merged update (the merge itself is kept unscaled)."""
        return {name: factorize(self.scale * dense, self.deploy_rank) for name, dense in self.merged.items()}

    def state(self) -> dict[str, torch.Tensor]:
        dense = {f"merged/{name}/BA": d for name, d in self.merged.items()}
        return {**dense, **self.flatten("last_ft", self.last_ft)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.merged = {k[len("merged/") : -len("/BA")]: v for k, v in tensors.items()
                       if k.startswith("merged/") and k.endswith("/BA")}
        self.last_ft = self.unflatten("last_ft", tensors)
