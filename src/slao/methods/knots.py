"""KnOTS (Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025; design.md §3): the LoRA
updates of every task so far are aligned in one shared basis by an SVD and merged there, TIES-style.

The rule (reference code: github.com/gstoica27/KnOTS, task_merger.py ``SVDMerger.apply_svd`` and
``SVDMerger.merge``, masking_ops.py ``ties_masking`` / ``topk_values_mask`` / ``masked_merge``), per layer,
with dW_j = B_j @ A_j (out x in) the update of task j's LoRA (KnOTS' ft_handlers.py takes B @ A too):

- concatenate across the output side: W = [dW_1 | dW_2 | ... | dW_t] (out x t*in), SVD in float64,
  W = U diag(s) V^T, keeping the components with s > 1e-5 (the code's threshold): U (out x k);
- task j's coordinates in the shared basis: diag(s) V_j^T (k x in), V_j^T the j-th block of in columns of
  V^T, so that dW_j = U @ diag(s) V_j^T (exactly, up to the dropped s <= 1e-5);
- TIES on the coordinates of all layers at once, one vector per task (the code flattens every layer's
  coordinates into one vector): keep each task's top ``top_k`` percent entries by magnitude (ties at the
  threshold kept; 100 keeps all), elect each entry's sign as the sign of the sum of the kept values (a zero
  sum takes the sign of the sum of the elected signs), keep the entries that agree with it, and take the
  disjoint mean (the sum of the kept entries over their count, 0 where none is kept), times ``scale``;
- the merged update is U @ merged coordinates, deployed as an exact LoRA (``lora_ops.factorize`` at rank
  min(t*r, the largest min(out, in)), which holds it exactly: U has at most t*r columns).

Defaults top_k = 40 and scale = 1.0: the values of the reference's language (Llama-3-8B LoRA, NLI) runs,
eval_scripts/nli_pertask_linearsearch.py (``search_config = {'scaling_coeffs': [1.0], 'topK': [40]}``,
which override configs/llama8B_r16_knots_ties.py's topK 100 / scaling 0.5; the vision configs use topK 20
and 0.6). Sign election ``sum_of_values`` and the disjoint ``mean`` are those configs' settings.

Choices the paper leaves open (it merges a fixed set of LoRAs once): in a task sequence the merge is
redone from scratch after every task over all LoRAs seen so far, so the state is every task's fine-tuned
LoRA (it grows by one LoRA a task). Each task's LoRA trains from a fresh PEFT init (A random, B zero), as
the merged LoRAs are independently fine-tuned in the paper; nothing of earlier tasks enters training.
Updates are B @ A without the adapter's fixed scale s = alpha/r (s is common to all tasks; only the
absolute 1e-5 cut-off sees it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, factorize, flatten_list, full_rank, unflatten_list

SV_CUTOFF = 1e-5  # KnOTS task_merger.py apply_svd: singular values kept where s > 1e-5


def shared_basis(updates: list[torch.Tensor], cutoff: float = SV_CUTOFF) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """updates: t matrices (out, in) -> U (out, k) and each task's coordinates diag(s) V_j^T (k, in), from
    the SVD of their concatenation along the input side; U @ coords[j] reconstructs updates[j]."""
    n_in = updates[0].shape[1]
    W = torch.cat([u.to(torch.float64) for u in updates], dim=1)  # (out, t*in)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    keep = S > cutoff
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    coords = [S[:, None] * block for block in torch.split(Vh, n_in, dim=1)]  # each (k, in)
    return U, coords


def ties_merge(vectors: torch.Tensor, top_k: float = 40.0, scale: float = 1.0) -> torch.Tensor:
    """TIES over tasks (rows of ``vectors``, (t, d)): trim each row to its top ``top_k`` percent by magnitude,
    elect signs by the sum of the trimmed values, and return scale * the disjoint mean of the agreeing
    entries (d,)."""
    V = vectors
    t, d = V.shape
    fraction = top_k / 100.0
    trimmed = V
    if fraction < 1.0:  # keep the entries at least as large as the (d - int(d * fraction))-th smallest
        kth = V.abs().kthvalue(d - int(d * fraction), dim=1, keepdim=True).values  # (t, 1)
        trimmed = V * (V.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())  # the code's "majority" for entries whose sum is 0
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    kept = trimmed * agree
    count = agree.sum(0).clamp(min=1)
    return scale * kept.sum(0) / count


def knots_merge(loras: list[LoraWeights], top_k: float = 40.0, scale: float = 1.0,
                cutoff: float = SV_CUTOFF) -> dict[str, torch.Tensor]:
    """The merged dense update (out, in) of every layer: shared basis per layer, TIES over all layers'
    coordinates at once, mapped back."""
    names = sorted(loras[0])
    dtype = loras[0][names[0]][0].dtype  # the SVD runs in float64; the merge in the LoRA's dtype, as KnOTS'
    bases, coords = {}, {}
    for name in names:
        U, C = shared_basis([lora[name][1] @ lora[name][0] for lora in loras], cutoff)
        bases[name], coords[name] = U.to(dtype), [c.to(dtype) for c in C]
    shapes = [coords[name][0].shape for name in names]
    rows = torch.stack([torch.cat([coords[name][j].reshape(-1) for name in names]) for j in range(len(loras))])
    merged = ties_merge(rows, top_k, scale)  # (sum over layers of k * in,)
    out, start = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = math.prod(shape)
        out[name] = bases[name] @ merged[start : start + size].reshape(shape)
        start += size
    return out


@dataclass
class KnotsOptions:
    top_k: float = option(40.0, "percent of each task's shared-basis coordinates kept by TIES trimming "
                                "(100 keeps all; the KnOTS language runs: 40)")
    scale: float = option(1.0, "factor on the merged coordinates (the KnOTS language runs: 1.0)")


@register("knots", options=KnotsOptions)
class KnotsMethod(Method):
    """KnOTS: every task's LoRA so far aligned in one SVD basis per layer and merged there with TIES, after
    each task (Stoica et al. 2025); keeps every task's LoRA (grows a LoRA a task)."""

    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.top_k, self.scale = float(options.top_k), float(options.scale)
        if not 0.0 < self.top_k <= 100.0:
            raise ConfigError(f"method.knots.top_k must be a percentage in (0, 100], got {options.top_k!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"method.knots.scale must be a positive number, got {options.scale!r}")
        self.loras: list[LoraWeights] = []  # task j (0-based) -> its fine-tuned LoRA

    def after_task(self, i, trained, data=None):
        del self.loras[i - 1 :]  # a task trained again (never in a normal run) replaces its LoRA
        self.loras.append(clone_lora(trained))
        merged = knots_merge(self.loras, self.top_k, self.scale)
        rank = min(len(self.loras) * self.rank, full_rank(self.lora_shapes, self.rank))
        return {name: factorize(dense, rank) for name, dense in merged.items()}

    def state(self) -> dict[str, torch.Tensor]:
        return flatten_list(self.loras)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.loras = unflatten_list(tensors)

    def stats(self) -> dict:
        return {"loras_kept": len(self.loras)}
