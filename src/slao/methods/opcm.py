"""OPCM (Tang et al. 2025, "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable
Continual Model Merging"; design.md §3): continual merging of task updates, each projected off the merged
update's principal subspace, with a rescaling that grows about as sqrt(t).

The rule, per weight matrix, with the merged task vector tau_m (the merge of tasks 1..t-1) and the new
task vector tau_t (reference code: github.com/tanganke/fusion_bench, fusion_bench/method/opcm/opcm.py,
``OPCMForCLIP.merge_linear_weights`` and ``run``):

- SVD: tau_m = U S V^T (the code takes full bases, U out x out and V in x in);
- split k = the first index i (0-based) where cumsum(S)[i] / sum(S) > alpha, i.e. the leading k singular
  directions hold at most a fraction alpha of the sum of singular values (the code's
  ``(s.cumsum(0) / s.sum() > alpha).float().argmax()``; the FusionBench docs write it 1-based, one
  direction more: we follow the code);
- P = U^T tau_t V; P's whole diagonal is set to 0 (P_ii, every i up to min(out, in), also past tau_m's
  rank) and its top-left block P[:k, :k] is set to 0; the cleaned update is U P V^T: it has no component
  u_i v_j^T with i, j < k and none u_i v_i^T;
- tau_m,t = (lambda_{t-1} tau_m,t-1 + cleaned) / lambda_t, with lambda_1 = 1 and, as in ``run``,
  lambda_t = ||lambda_{t-1} tau_m,t-1 + cleaned|| / mean_{j<=t} ||tau_j||, the norms taken over every
  merged matrix at once (the whole "model"): the merged update keeps the mean norm of the task updates,
  and lambda_t = sqrt(t) exactly when the cleaned updates are orthogonal and of equal norm (the code logs
  sqrt(t) as the "empirical" lambda). ``method.opcm.scale=sqrt`` uses lambda_t = sqrt(t) itself.
- alpha = 0.5: FusionBench's config/method/opcm/opcm.yaml (``alpha: 0.5``), the value of the paper's runs.
  Task 1's merge is tau_1 itself (the code starts from the first model).

Mapped to LoRA (choices the paper leaves open, since it merges fully fine-tuned models):

- Every task trains a fresh LoRA (PEFT's default init, A random, B zero), as OPCM's task models are each
  fine-tuned from the pre-trained model independently; nothing of earlier tasks enters training.
- ``method.opcm.space=factors`` (default): the SLAO paper's reading (its OPCM row, A and B treated the same
  way): the merged "task vectors" are the LoRA factors themselves (relative to no LoRA, the pre-trained
  model), so the rule runs on A (r x in) and on B (out x r) as two matrices per layer; the norms for
  lambda_t are over every A and B. What is evaluated and deployed is the merged (A_m, B_m), rank r.
- ``method.opcm.space=dense``: the rule runs on each layer's dense update B @ A (out x in), the norms over
  all layers' dense updates; the merged dense update is deployed as an exact LoRA (``lora_ops.factorize``,
  rank min(out, in), zero-padded to one rank for all layers).
- Updates are taken as B @ A, without the adapter's fixed scale s = alpha/r: s is common to every task and
  every layer, so the projection and lambda_t are unchanged by it.

State (constant in the number of tasks): the merged matrices, lambda_{t-1}, and the running sum of the
task-vector norms with the task count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, check_choice, option, register
from slao.methods.lora_ops import LoraWeights, factorize, full_rank

SPACES = ("factors", "dense")
SCALES = ("norm", "sqrt")


def split_rank(S: torch.Tensor, alpha: float) -> int:
    """k: the first index where the cumulative share of the singular values exceeds alpha (0 when S is 0)."""
    total = S.sum()
    if not total > 0:
        return 0
    return int((S.cumsum(0) / total > alpha).to(torch.int64).argmax())


def project_update(merged: torch.Tensor, update: torch.Tensor, alpha: float) -> tuple[torch.Tensor, int]:
    """The new task's update with, in the SVD bases of ``merged``, the diagonal and the leading k x k
    block removed; and k. Both matrices are (m, n); the result is computed in float64."""
    M, T = merged.to(torch.float64), update.to(torch.float64)
    # The code reconstructs U P V^T from full bases; every removed coordinate u_i^T T v_j has i, j < q =
    # min(m, n), so subtracting the removed part in the reduced bases is the same rule, without the
    # n x n basis of a LoRA's A (r x in).
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)  # U (m, q), S (q,), Vh (q, n)
    k = split_rank(S, alpha)
    P = U.T @ T @ Vh.T  # (q, q): the update's coordinates u_i^T T v_j
    removed = torch.diag_embed(torch.diagonal(P))
    removed[:k, :k] = P[:k, :k]
    return (T - U @ removed @ Vh).to(update.dtype), k


def merge_step(merged: dict[str, torch.Tensor], cleaned: dict[str, torch.Tensor], lam_prev: float,
               mean_norm: float, t: int, scale: str = "norm") -> tuple[dict[str, torch.Tensor], float]:
    """tau_m,t = (lambda_{t-1} tau_m + cleaned) / lambda_t for every matrix at once, and lambda_t:
    ||lambda_{t-1} tau_m + cleaned|| / mean_norm (``norm``, the code's rule) or sqrt(t) (``sqrt``)."""
    summed = {key: lam_prev * merged[key].to(torch.float64) + cleaned[key].to(torch.float64) for key in merged}
    if scale == "sqrt":
        lam = math.sqrt(t)
    else:
        total = math.sqrt(sum(float((m**2).sum()) for m in summed.values()))
        lam = total / mean_norm if total > 0 and mean_norm > 0 else 1.0  # a zero sum stays zero
    return {key: (m / lam).to(merged[key].dtype) for key, m in summed.items()}, lam


def global_norm(matrices: dict[str, torch.Tensor]) -> float:
    """The norm of all matrices taken as one vector (OPCM's task-vector norm over the whole model)."""
    return math.sqrt(sum(float((m.to(torch.float64) ** 2).sum()) for m in matrices.values()))


@dataclass
class OpcmOptions:
    alpha: float = option(0.5, "share of the merged update's singular values whose directions the new update "
                               "is projected off (FusionBench's opcm.yaml: 0.5)")
    space: str = option("factors", "what is merged: factors (A and B each as a matrix; the SLAO paper's reading) "
                                   "| dense (each layer's B @ A, deployed as an exact LoRA)")
    scale: str = option("norm", "lambda_t: norm (||lambda_{t-1} tau_m + cleaned|| / mean task norm, the code) "
                                "| sqrt (sqrt(t))")


@register("opcm", options=OpcmOptions)
class OpcmMethod(Method):
    """OPCM: each task's fresh LoRA merged in after the task, projected off the merged update's principal
    subspace and rescaled by lambda_t ~ sqrt(t) (Tang et al. 2025); A and B merged alike by default."""

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.alpha = float(options.alpha)
        if not 0.0 <= self.alpha <= 1.0:  # also refuses nan
            raise ConfigError(f"method.opcm.alpha must be a number in [0, 1], got {options.alpha!r}")
        check_choice(self.name, "space", options.space, SPACES)
        check_choice(self.name, "scale", options.scale, SCALES)
        self.space, self.scale = options.space, options.scale
        self.merged: dict[str, torch.Tensor] = {}  # "layer/A", "layer/B" (factors) or "layer/BA" (dense)
        self.lam = 1.0  # lambda_t of the last merge
        self.norm_sum, self.tasks = 0.0, 0  # sum of the task vectors' norms, and how many were merged
        self.kept: dict[str, int] = {}  # the split k of each matrix at the last merge (for stats)
        self.deploy_rank = full_rank(lora_shapes, rank)

    def task_vectors(self, trained: LoraWeights) -> dict[str, torch.Tensor]:
        if self.space == "dense":
            return {f"{name}/BA": B @ A for name, (A, B) in trained.items()}
        out = {}
        for name, (A, B) in trained.items():
            out[f"{name}/A"], out[f"{name}/B"] = A.clone(), B.clone()
        return out

    def after_task(self, i, trained, data=None):
        tau = self.task_vectors(trained)
        self.norm_sum += global_norm(tau)
        self.tasks += 1
        if not self.merged:  # task 1: the merge is the first task vector
            self.merged, self.lam = tau, 1.0
            self.kept = {key: 0 for key in tau}
            return self.deployed()
        cleaned = {}
        for key, update in tau.items():
            cleaned[key], self.kept[key] = project_update(self.merged[key], update, self.alpha)
        self.merged, self.lam = merge_step(self.merged, cleaned, self.lam, self.norm_sum / self.tasks,
                                           self.tasks, self.scale)
        return self.deployed()

    def deployed(self) -> LoraWeights:
        names = sorted({key.rsplit("/", 1)[0] for key in self.merged})
        if self.space == "dense":
            return {n: factorize(self.merged[f"{n}/BA"], self.deploy_rank) for n in names}
        return {n: (self.merged[f"{n}/A"].clone(), self.merged[f"{n}/B"].clone()) for n in names}

    def state(self) -> dict[str, torch.Tensor]:
        scalars = torch.tensor([self.lam, self.norm_sum, float(self.tasks)], dtype=torch.float64)
        return {**{f"merged/{k}": v for k, v in self.merged.items()}, "scalars": scalars}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.merged = {k[len("merged/"):]: v for k, v in tensors.items() if k.startswith("merged/")}
        lam, norm_sum, tasks = tensors["scalars"].tolist()
        self.lam, self.norm_sum, self.tasks = lam, norm_sum, int(tasks)

    def stats(self) -> dict:
        kept = list(self.kept.values())
        return {"lambda": self.lam, "mean_split_rank": sum(kept) / len(kept) if kept else 0}
