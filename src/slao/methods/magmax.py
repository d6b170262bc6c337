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
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, factorize, full_rank


def max_magnitude_merge(merged: torch.Tensor | None, update: torch.Tensor) -> torch.Tensor:
    """Entry by entry, the one of ``merged`` and ``update`` with the larger magnitude (ties keep merged)."""
    if merged is None:
        return update.clone()
    return torch.where(update.abs() > merged.abs(), update, merged)


@dataclass
class MagmaxOptions:
    scale: float = option(0.5, "factor on the merged update that is deployed (the MagMax authors' code: 0.5)")


@register("magmax", options=MagmaxOptions)
class MagMaxMethod(Method):
    """Sequential fine-tuning; after each task keep, per weight entry, the largest-magnitude task update,
    and deploy that merge times ``method.magmax.scale`` (0.5, as in Marczak et al.'s code)."""

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.scale = float(options.scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"method.magmax.scale must be a positive number, got {options.scale!r}")
        # The merged update is kept divided by s = alpha / r (that is, as B @ A): s is the same for
        # every task, so the entry-wise choice is unchanged and the factors load at PEFT's scale s.
        self.merged: dict[str, torch.Tensor] = {}  # name -> (out, in)
        self.last_ft: LoraWeights = {}
        self.deploy_rank = full_rank(lora_shapes, rank)

    def init_lora(self, i, default, data=None):
        return clone_lora(self.last_ft) if i > 1 and self.last_ft else default

    def after_task(self, i, trained, data=None):
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
