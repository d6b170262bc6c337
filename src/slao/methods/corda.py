"""CorDA (Yang et al., "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for
Task-Aware Parameter-Efficient Fine-tuning", NeurIPS 2024), knowledge-preserved mode (KPM), for each task.
The rule is PEFT's (peft/tuners/lora/corda.py ``collect_eigens_for_layer``, ``crop_corda_eigens`` and
``LoraLayer.corda_init`` in peft/tuners/lora/layer.py, PEFT 0.21; their reference: github.com/iboing/CorDA,
cordalib/decomposition.py ``decompose_to_adapter``), computed here on tensors.

Per target layer, with W (out x in) the weight to decompose and C (in x in) the covariance of the layer's
inputs on the data whose knowledge is to be preserved:

    C' = C + damp * mean(diag C) * I          damp = 0.01, doubled until ||C' C'^-1 - I||_F < 0.05
    W C' = U S Vh  (SVD),  V = (Vh C'^-1)^T   so that W = U diag(S) V^T exactly
    KPM: the r components with the smallest singular values: U_r, S_r, V_r
    A0 = sqrt(S_r / s) V_r^T   (r x in),   B0 = U_r sqrt(S_r / s)   (out x r),   s B0 A0 = U_r S_r V_r^T

Symbols: the paper's and PEFT's ``lora_A`` / ``lora_B`` are ours (A r x in, B out x r); the reference
code's ``BLinear`` (n -> r) is our A and its ``ALinear`` (r -> m) our B.

CorDA then leaves ``W - s B0 A0`` as the frozen weight (PEFT overwrites the base layer's weight). slao's
base weights stay untouched and shared and every export is a plain LoRA at the fixed scale s, so the
residual is expressed inside the LoRA: task i's new components are r frozen ones (A0, -B0) followed by r
trainable ones (A0, B0). At the start of the task they cancel exactly (the frozen rows and columns are
bit-for-bit the trainable ones, B negated), so the model is unchanged; training moves (A0, B0); the LoRA
exported computes exactly W0 + the earlier tasks' updates + s (B A - B0 A0), an ordinary PEFT LoRA.
Earlier tasks' components stay frozen (``frozen_rank``) and summed, as in inc-lora: the state grows by
2r rank components a task (r for task 1).

Choices the paper leaves open (for continual learning; CorDA is a single-task method):
- The data to preserve for task i >= 2 is the earlier tasks' training inputs (``layer_inputs("previous")``,
  with the adapter holding the LoRA deployed after task i-1): the method reads stored earlier examples, so
  it is not data-free. TaskData takes the first ``method.stats_examples`` of them in task order, so tasks
  larger than that cap leave the later earlier tasks out. Nothing of them is kept between tasks; the
  covariance (in x in float64 per layer, ``covariance_bytes`` in the stats) lives only while the LoRA is
  built.
- Task 1 starts from PEFT's plain LoRA init at rank r: the run has nothing earlier to preserve (the paper
  preserves world knowledge with QA data, which a run does not have), and KPM on the task's own inputs
  would start the adapter in the directions that task uses least, which is not what KPM is for.
- The weight decomposed (``method.corda.weight``): ``current`` (default), the layer's weight as the model
  stands before task i, W0 + s B A of the deployed LoRA, which is what a PEFT user gets by merging each
  task's adapter and running CorDA on the merged model, and what the covariance was collected with; or
  ``base``, the frozen pre-trained W0 alone.
- The covariance is PEFT's: each example's inputs X (its real tokens) divided by |max X|, and the mean over
  examples of X^T X (PEFT's hook sees one sequence per forward call; ``layer_inputs(per_sequence_max=True)``).
  The product s B0 A0 does not depend on the overall scale of C, but the split between the factors does:
  scaling C by c scales A0 by 1/sqrt(c) and B0 by sqrt(c). Earlier versions of slao summed x x^T over
  all tokens unnormalised: c = (examples) x (max activation)^2, about 100 to 15,000 on SmolLM2 (96 to 256
  earlier examples; per-sequence maxima 1.1 in layer 0 to 7.6 in layer 29), so B0 was 10 to 120 times
  larger than PEFT makes it and A0 as much smaller, and an optimiser step on A moved the model that much
  further. Those runs collapsed from the third task on (docs/results.md).
- Arithmetic in float64 on the CPU (PEFT: float32 on the model's device).
- With fewer than r components (min(out, in) < r) the missing ones are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slao.methods.base import Method, check_choice, needs_data, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, stack_loras

WEIGHTS = ("current", "base")


def damped_covariance(C: torch.Tensor, damp: float = 0.01, max_error: float = 0.05) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(C', C'^-1) with C' = C + damp * mean(diag C) * I, damp doubled until C' C'^-1 is within
    ``max_error`` (Frobenius) of I, as PEFT and the CorDA code do. A zero C gives I (no context)."""
    C = C.to(torch.float64)
    eye = torch.eye(C.shape[0], dtype=torch.float64)
    mean = torch.diagonal(C).mean()
    if mean <= 0:
        return eye, eye
    while True:
        fixed = C + eye * mean * damp
        inverse = torch.linalg.inv(fixed)
        if float(torch.dist(fixed @ inverse, eye)) < max_error:
            return fixed, inverse
        damp *= 2


def context_decomposition(W: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CorDA's decomposition W = U diag(S) V^T from the SVD of W C' (C' the damped C): U (out, k), S (k,)
    in descending order, V (in, k) = (Vh C'^-1)^T, k = min(out, in)."""
    fixed, inverse = damped_covariance(C)
    U, S, Vh = torch.linalg.svd(W.to(torch.float64) @ fixed, full_matrices=False)
    return U, S, (Vh @ inverse).T


def kpm_lora(W: torch.Tensor, C: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knowledge-preserved mode: (A0 (rank, in), B0 (out, rank)) from the ``rank`` components of W with the
    smallest singular values of W C', each factor carrying sqrt(S / scale), so scale * B0 @ A0 =
    U_r diag(S_r) V_r^T (float64; components past min(out, in) are zero)."""
    U, S, V = context_decomposition(W, C)
    k = min(rank, S.shape[0])
    root = (S[S.shape[0] - k :] / scale).sqrt()
    A0 = torch.zeros(rank, W.shape[1], dtype=torch.float64)
    B0 = torch.zeros(W.shape[0], rank, dtype=torch.float64)
    A0[:k] = V[:, V.shape[1] - k :].T * root[:, None]
    B0[:, :k] = U[:, U.shape[1] - k :] * root
    return A0, B0


def cancelling_pair(A0: torch.Tensor, B0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-2r LoRA [(A0, -B0) frozen; (A0, B0) trainable]: its B @ A is zero, term for term."""
    return torch.cat([A0, A0], 0), torch.cat([-B0, B0], 1)


@dataclass
class CordaOptions:
    weight: str = option("current", "the weight decomposed before each task: current (W0 + the deployed LoRA, "
                                    "as a PEFT user merging after each task gets) | base (W0 alone)")


@register("corda", options=CordaOptions)
class CordaMethod(Method):
    """CorDA knowledge-preserved mode per task: the new LoRA starts from the smallest components of W C
    (C: earlier tasks' inputs), a frozen negated copy keeps the model unchanged; earlier LoRAs frozen."""

    grows = True
    data_free = False  # reads the earlier tasks' examples for the covariance

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.weight = options.weight
        check_choice(self.name, "weight", self.weight, WEIGHTS)
        self.stack: LoraWeights = {}  # rank r + 2r(t-1) after t tasks
        self.context = {"covariance_bytes": 0, "covariance_tokens": 0}  # of the last init (stats)

    def init_lora(self, i, default, data=None):
        if i == 1:
            self.context = {"covariance_bytes": 0, "covariance_tokens": 0}
            return default
        data = needs_data(data, self.name)
        weights, scale = data.base_weights(), data.scaling
        covs, tokens = data.layer_inputs("previous", per_sequence_max=True)
        self.context = {"covariance_bytes": sum(C.numel() * C.element_size() for C in covs.values()),
                        "covariance_tokens": tokens}
        pairs = {}
        for name, (A, B) in default.items():
            W = weights[name].to("cpu", torch.float64)
            if self.weight == "current":
                A_s, B_s = self.stack[name]
                W = W + scale * (B_s.to(torch.float64) @ A_s.to(torch.float64))
            A0, B0 = kpm_lora(W, covs[name], A.shape[0], scale)
            pairs[name] = (A0.to(A.dtype), B0.to(B.dtype))
        return stack_loras(self.stack, {name: cancelling_pair(A0, B0) for name, (A0, B0) in pairs.items()})

    def frozen_rank(self, i: int) -> int:
        # the earlier tasks' r + 2r(i-2) components and the r frozen copies: 2r(i-1)
        return 2 * self.rank * (i - 1)

    def after_task(self, i, trained, data=None):
        self.stack = clone_lora(trained)
        return self.stack

    def state(self) -> dict[str, torch.Tensor]:
        return self.flatten("stack", self.stack)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.stack = self.unflatten("stack", tensors)

    def stats(self) -> dict:
        return dict(self.context)
