"""LoRM (Salami et al., ICLR 2025, "Closed-form merging of parameter-efficient modules for Federated
Continual Learning"; design.md §3): one LoRA factor trains while the other is held, and the trained factor
is merged in closed form so that the merged LoRA matches the responses of every learned module; the
factor that trains alternates. ``lorm-ab`` trains A first (task 1 A, task 2 B, ...), ``lorm-ba`` trains B
first (the reference code's own order).

The paper merges K modules that share the held factor. With X_k a task's layer inputs and G_k = X_k X_k^T
its Gram matrix, the merged LoRA minimises sum_k ||B A X_k - B_k A_k X_k||_F^2 over the trained factor:

- B trains, A held:  B = (sum_k B_k A G_k) A^T (A (sum_k G_k) A^T)^+
- A trains, B held:  A = (sum_k A_k G_k) (sum_k G_k)^+

(reference: github.com/aimagelab/fed-mammoth, _models/lorm.py, ``end_round_server``: ``E2 @ A.T @ G_inv``
and ``E @ torch.pinverse(G)``). The paper's A and B are ours (A r x in, B out x r), and its modules are
ours without the scale s = alpha / r, which is the same for every task.

Mapping to slao's sequential setting (one learner, no clients): the paper's communication rounds, which
alternate the trained factor (``train_matrix=alt``, B in the first round), are our tasks, and the modules
merged in closed form are the fine-tuned updates dW_k = B_ft,k A_ft,k of every task so far. Earlier tasks'
updates do not share the factor held now, so the A merge is the exact least-squares solution of the same
objective, A = (B^T B)^+ B^T (sum_k dW_k G_k) (sum_k G_k)^+, which equals the paper's formula when every
dW_k = B A_k. The objective needs only two running sums per layer, P = sum_k dW_k G_k (out, in) and
G = sum_k G_k, so no task's LoRA is kept: the state is constant in the number of tasks (not data: Gram
statistics, as RegMean keeps).

Choices the paper leaves open, and ours:
- Gram matrices are RegMean's, with off-diagonal entries scaled by ``method.lorm_*.gram_alpha``; the
  published LoRM scripts pass ``--alpha_regmean_backbone=0`` (README.md of the reference), so the default
  keeps the diagonal only, and the state then holds G's diagonal (in,) per layer.
- G_k is the sum of x x^T over the real tokens of task k's first ``method.stats_examples`` training
  examples (no normalisation by token count, as in the reference), read after the task with the task's
  fine-tuned LoRA in the model.
- Task i starts from the merged LoRA (as every round of the reference starts from the server's merged
  factors); the held factor stays bit-identical during the task.
- Task 1 of ``lorm-ab`` (A trains first) starts from the reference's reversed init (``init_matrices(
  reverse=True)`` in _models/lora_pre.py: A zero, B Kaiming-uniform with a = sqrt(5)): with PEFT's zero B,
  A would get no gradient. B is drawn from a generator seeded by the bytes of PEFT's seeded default A, so
  it follows the run's seed.
- Pseudo-inverses (the reference's ``torch.pinverse``) and float64 arithmetic (its ``reg_dtype_64``);
  P and G are kept in float32 (its ``gram_dtype=32``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, needs_data, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora

ORDERS = {"lorm-ab": "ab", "lorm-ba": "ba"}


# -- the closed form ----------------------------------------------------------------------------------
def regmean_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """RegMean's Gram: off-diagonal entries scaled by alpha. With alpha = 0 only the diagonal is left, and
    it is returned as a vector (in,); otherwise the (in, in) matrix."""
    if alpha == 0:
        return torch.diagonal(gram).clone()
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def times_gram(M: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """M @ G for G an (in, in) matrix or the vector (in,) of a diagonal one."""
    return M * G if G.dim() == 1 else M @ G


def _gram_pinv(G: torch.Tensor) -> torch.Tensor:
    if G.dim() == 2:
        return torch.linalg.pinv(G)
    tol = G.abs().max() * G.numel() * torch.finfo(G.dtype).eps  # pinv's default cut-off
    return torch.where(G.abs() > tol, 1.0 / G, torch.zeros_like(G))


def merge_b(P: torch.Tensor, G: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """argmin_B sum_k ||B A X_k - dW_k X_k||^2 given A (r, in), P = sum_k dW_k G_k (out, in) and
    G = sum_k G_k: B = P A^T (A G A^T)^+ (out, r)."""
    return P @ A.T @ torch.linalg.pinv(times_gram(A, G) @ A.T)


def merge_a(P: torch.Tensor, G: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """argmin_A sum_k ||B A X_k - dW_k X_k||^2 given B (out, r): A = (B^T B)^+ B^T P G^+ (r, in); with
    every dW_k = B A_k this is the paper's (sum_k A_k G_k)(sum_k G_k)^+."""
    return torch.linalg.pinv(B.T @ B) @ B.T @ times_gram(P, _gram_pinv(G))


def reversed_init(default: LoraWeights) -> LoraWeights:
    """A zero and B Kaiming-uniform (a = sqrt(5)), for a LoRA whose A trains first. B's generator is seeded
    by the bytes of ``default``'s (seeded) A, layer by layer."""
    out = {}
    for name, (A, B) in default.items():
        digest = hashlib.sha256(A.detach().to(torch.float32).contiguous().numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        B0 = torch.empty(B.shape, dtype=B.dtype)
        torch.nn.init.kaiming_uniform_(B0, a=math.sqrt(5), generator=generator)
        out[name] = (torch.zeros_like(A), B0)
    return out


# -- the method ------------------------------------------------------------------------------------------
@dataclass
class LormOptions:
    gram_alpha: float = option(0.0, "RegMean's alpha on each task's layer-input Gram matrix: off-diagonal "
                                    "entries scaled by it (LoRM's scripts: 0, the diagonal only)")


def _lorm_class(name: str) -> type[Method]:
    """The method for one order. The two orders are one rule with one setting that the name fixes; the
    registry keeps one options class and one name per class, so each order is its own direct subclass of
    Method, built here from one body (neither inherits the other)."""
    order = ORDERS[name]
    first, second = ("A", "B") if order == "ab" else ("B", "A")

    class LormMethod(Method):
        __doc__ = (f"LoRM ({first} first): the trained factor alternates by task ({first}, {second}, ...) and is "
                   "merged in closed form over every task's update (Gram-weighted least squares)")

        def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
            super().__init__(options, lora_shapes, rank, num_tasks)
            self.alpha = float(options.gram_alpha)
            if not 0.0 <= self.alpha <= 1.0:  # also refuses nan
                raise ConfigError(f"method.{name.replace('-', '_')}.gram_alpha must be in [0, 1], "
                                  f"got {options.gram_alpha!r}")
            self.merged: LoraWeights = {}
            self.P: dict[str, torch.Tensor] = {}  # sum_k dW_k G_k (out, in)
            self.G: dict[str, torch.Tensor] = {}  # sum_k G_k: (in,) diagonal, or (in, in)
            self.last = ""

        @staticmethod
        def factor(i: int) -> str:
            """The factor that trains during task i (1-based): "A" or "B"."""
            return (first, second)[(i - 1) % 2]

        def init_lora(self, i, default, data=None):
            if i > 1 and self.merged:
                return clone_lora(self.merged)
            return reversed_init(default) if first == "A" else default

        def trainable(self, i: int) -> tuple[bool, bool]:
            return self.factor(i) == "A", self.factor(i) == "B"

        def after_task(self, i, trained, data=None):
            grams, _ = needs_data(data, name).layer_inputs("current")
            trains = self.factor(i)
            merged = {}
            for layer, (A, B) in trained.items():
                A64, B64 = A.to(torch.float64), B.to(torch.float64)
                G_i = regmean_gram(grams[layer].to(torch.float64), self.alpha)
                P = times_gram(B64 @ A64, G_i)
                if layer in self.P:
                    P, G_i = P + self.P[layer].to(torch.float64), G_i + self.G[layer].to(torch.float64)
                self.P[layer], self.G[layer] = P.to(torch.float32), G_i.to(torch.float32)
                if trains == "B":
                    merged[layer] = (A.clone(), merge_b(P, G_i, A64).to(B.dtype))
                else:
                    merged[layer] = (merge_a(P, G_i, B64).to(A.dtype), B.clone())
            self.merged, self.last = merged, trains
            return clone_lora(merged)

        def state(self) -> dict[str, torch.Tensor]:
            return {**self.flatten("merged", self.merged),
                    **{f"P/{layer}": P for layer, P in self.P.items()},
                    **{f"G/{layer}": G for layer, G in self.G.items()}}

        def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
            self.merged = self.unflatten("merged", tensors)
            self.P = {k[2:]: v for k, v in tensors.items() if k.startswith("P/")}
            self.G = {k[2:]: v for k, v in tensors.items() if k.startswith("G/")}

        def stats(self) -> dict:
            return {"merged_factor": self.last} if self.last else {}

    LormMethod.__name__ = LormMethod.__qualname__ = f"Lorm{order.upper()}Method"
    return LormMethod


LormABMethod = register("lorm-ab", options=LormOptions)(_lorm_class("lorm-ab"))
LormBAMethod = register("lorm-ba", options=LormOptions)(_lorm_class("lorm-ba"))
