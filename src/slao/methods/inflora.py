"""InfLoRA (Liang & Li, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning", CVPR 2024;
reference code github.com/liangyanshuo/InfLoRA, methods/inflora.py and models/vit_inflora.py).

Symbols. The paper writes a branch as ``W + A_t B_t`` with B_t (r x d_in) the designed, frozen
dimensionality-reduction matrix and A_t (d_out x r) the trained one, from zero: the paper's B_t is our A
(r x in) and the paper's A_t is our B (out x r). H_t are the layer inputs of task t; here the harness hands
their second moment C_t = sum over real tokens of x x^T (in x in), which is what the reference code's
``cur_matrix`` holds (divided there by the token count; every rule below is invariant to that scale).

Before task t, per target layer, with M (in x k, orthonormal columns) the basis of the earlier tasks'
input subspace (the paper's DualGPM memory M_t):

    C_hat = C_t - M M^T C_t                    (the task's inputs projected off the earlier ones)
    A_t   = a_scale * U[:, :r]^T                U: left singular vectors of C_hat, a_scale = 1/sqrt(3)

so A_t M = 0 and the rows of A_t lie in the span of the projected inputs (reference methods/inflora.py,
``_train``: ``cur_matrix - feature_mat @ cur_matrix``, ``svd``, ``U[:, :rank].T / math.sqrt(3)``; for
task 1, M is empty and C_hat = C_1). A_t stays frozen; B_t trains from zero. Earlier tasks' branches are
kept frozen and summed (as the reference's forward sums ``lora_B[t] @ lora_A[t]`` over t <= task): one
stacked LoRA of rank t*r, the earlier (t-1)*r components frozen (``frozen_rank``), like inc-lora, so the
state grows by one LoRA a task (the paper reports this growth) plus the basis.

After task t, C_t is collected again (the adapter then holds the trained LoRA, as in the reference, which
runs the trained network) and M grows by the top left singular directions of C_hat until the retained
energy reaches eps_t (reference ``update_DualGPM``, Eq. 8-9 there):

    energy   = squared singular values of the covariance, as the reference code computes them
               (``S**2`` of ``svd(cur_matrix)``: the eigenvalues of C_t squared)
    retained = ||M M^T C_t||_F^2 / ||C_t||_F^2, then + S_j^2 / ||C_t||_F^2 for each added direction j,
               directions added while retained < eps_t
    eps_t    = threshold + (threshold_end - threshold) * (t - 1) / T

T is the run's number of tasks (``self.num_tasks``; the reference's ``total_sessions``, which an LLM port
of it fixes at 15). The reference's ``_cur_task`` is 0 after the first task, hence (t - 1). Defaults:
threshold 0.995 (design.md: the published LLM scripts; the vision configs of the reference use
``lamb`` 0.95-0.98), threshold_end 1.0 (``lame`` in every reference config).

Choices the paper leaves open, or where this implementation departs from the reference code:
- Task 1 uses the same growth rule as the later tasks (the fewest directions whose energy reaches eps_1).
  The reference's first task takes ``np.sum(np.cumsum(ratio) < threshold)`` (at least 1), one direction
  fewer whenever the threshold is not hit exactly (its ``#+1`` is commented out).
- M is always stored as the basis itself. The reference's DualGPM switches a layer to storing the
  orthogonal complement once k > in/2 (a memory saving; the projection it applies is the same, and its
  growth test differs only at equality with the threshold). M is capped at ``in`` columns as there.
- When C_hat has fewer than r directions above round-off (1e-10 of C_t's largest eigenvalue), the rest of
  A's rows are zero (their B columns then get no gradient); A is finally projected off M once more so that
  A M = 0 holds to float64 round-off rather than to the SVD's.
- The statistics are the first ``method.stats_examples`` training examples of the task (the reference uses
  the whole training set), collected under no_grad in eval mode (no dropout), over real tokens only.
- M is kept in float32 (the arithmetic runs in float64).
Settings: method.inflora.threshold / threshold_end / a_scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, needs_data, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, stack_loras

ROUND_OFF = 1e-10  # singular values of C_hat below this fraction of C's largest are round-off


def project_off(C: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """(I - M M^T) C: C's columns without their components in span(M) (M: in x k, orthonormal columns)."""
    return C - M @ (M.T @ C) if M.shape[1] else C.clone()


def design_a(C: torch.Tensor, M: torch.Tensor, rank: int, a_scale: float) -> torch.Tensor:
    """InfLoRA's A (rank x in): a_scale times the top left singular vectors of (I - M M^T) C, as rows.

    Rows for directions that the projected inputs do not have (singular value at round-off) are zero."""
    C, M = C.to(torch.float64), M.to(torch.float64)
    U, S, _ = torch.linalg.svd(project_off(C, M))
    top = torch.linalg.matrix_norm(C, ord=2)
    k = int((S[:rank] > ROUND_OFF * top).sum()) if top > 0 else 0
    A = torch.zeros(rank, C.shape[0], dtype=torch.float64)
    A[:k] = a_scale * U[:, :k].T
    return A - (A @ M) @ M.T if M.shape[1] else A


def grow_basis(C: torch.Tensor, M: torch.Tensor, threshold: float) -> torch.Tensor:
    """M extended by the top left singular directions of (I - M M^T) C, fewest first, until the retained
    energy (squared singular values of C, as the reference computes it) reaches ``threshold``; at most
    ``in`` columns. Returns M unchanged when it already retains enough, or when C is zero."""
    C, M = C.to(torch.float64), M.to(torch.float64)
    total = float(torch.linalg.matrix_norm(C) ** 2)  # sum of the squared singular values of C
    if total == 0:
        return M
    U, S, _ = torch.linalg.svd(project_off(C, M))
    retained = (total - float((S**2).sum())) / total  # = ||M M^T C||^2 / ||C||^2
    ratios = (S**2 / total).tolist()
    k = 0
    while k < len(ratios) and retained < threshold:
        retained += ratios[k]
        k += 1
    return torch.cat([M, U[:, :k]], 1)[:, : C.shape[0]]


def threshold_at(t: int, T: int, start: float, end: float) -> float:
    """eps_t = start + (end - start) * (t - 1) / T, for task t (1-based) of T."""
    return start + (end - start) * (t - 1) / T


@dataclass
class InfLoraOptions:
    threshold: float = option(0.995, "retained-energy threshold eps_1 of the basis after task 1 (the published "
                                     "LLM scripts' 0.995; the reference's vision configs use 0.95-0.98)")
    threshold_end: float = option(1.0, "the threshold approached at the last task: eps_t = threshold + "
                                       "(threshold_end - threshold) * (t-1)/T (reference: lame = 1.0)")
    a_scale: float = option(1 / math.sqrt(3), "norm of each designed row of A (reference: U^T / sqrt(3))")


@register("inflora", options=InfLoraOptions)
class InfLoraMethod(Method):
    """InfLoRA: each task's A designed from its inputs projected off earlier tasks' input subspace and frozen;
    B trains; earlier branches frozen and summed (grows by one LoRA a task, plus the basis)."""

    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.start, self.end, self.a_scale = float(options.threshold), float(options.threshold_end), \
            float(options.a_scale)
        if not 0 < self.start <= self.end <= 1:
            raise ConfigError("method.inflora.threshold and threshold_end must satisfy 0 < threshold <= "
                              f"threshold_end <= 1, got {self.start} and {self.end}")
        if not (math.isfinite(self.a_scale) and self.a_scale > 0):
            raise ConfigError(f"method.inflora.a_scale must be a positive number, got {options.a_scale!r}")
        self.stack: LoraWeights = {}  # name -> (A (t*r, in), B (out, t*r)) after t tasks
        self.basis = {name: torch.zeros(n_in, 0) for name, (_, n_in) in lora_shapes.items()}  # name -> M
        self.eps: float | None = None  # the threshold of the last growth (for stats)

    def threshold(self, i: int) -> float:
        """eps_i with T the run's number of tasks (a method built without a run takes T = i)."""
        return threshold_at(i, max(self.num_tasks, i), self.start, self.end)

    def init_lora(self, i, default, data=None):
        # The adapter holds the earlier tasks' branches: C_i is the inputs of the model as it stands.
        covs, _ = needs_data(data, self.name).layer_inputs("current")
        new = {name: (design_a(covs[name], self.basis[name], self.rank, self.a_scale).to(A.dtype),
                      torch.zeros_like(B))
               for name, (A, B) in default.items()}
        return stack_loras(self.stack if i > 1 else {}, new)

    def trainable(self, i: int) -> tuple[bool, bool]:
        return False, True

    def frozen_rank(self, i: int) -> int:
        return (i - 1) * self.rank

    def after_task(self, i, trained, data=None):
        covs, _ = needs_data(data, self.name).layer_inputs("current")  # the trained LoRA in the adapter
        self.eps = self.threshold(i)
        self.basis = {name: grow_basis(covs[name], M, self.eps).to(torch.float32)
                      for name, M in self.basis.items()}
        self.stack = clone_lora(trained)
        return self.stack

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.flatten("stack", self.stack), **{f"basis/{n}": M for n, M in self.basis.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.stack = self.unflatten("stack", tensors)
        self.basis = {k[len("basis/") :]: v for k, v in tensors.items() if k.startswith("basis/")}

    def stats(self) -> dict:
        dims = {name: int(M.shape[1]) for name, M in self.basis.items()}
        return {"threshold": self.eps, "basis_dims": dims, "basis_dims_mean": sum(dims.values()) / max(len(dims), 1),
                "basis_bytes": sum(M.numel() * M.element_size() for M in self.basis.values())}
