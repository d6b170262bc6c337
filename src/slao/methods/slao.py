"""SLAO (design.md §2): orthogonal initialisation from the last fine-tuned LoRA and a time-aware,
asymmetric merge after every task, so one LoRA serves every task learned so far.

The arithmetic is pure functions on tensors; ``SlaoMethod`` applies them to every target layer.
Variants (the paper's ablations) are settings of the one method, not copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slao.errors import ConfigError
from slao.methods.base import Method, check_choice, option, register
from slao.methods.lora_ops import LoraWeights


def orthogonal_init(A: torch.Tensor) -> torch.Tensor:
    """A (r, in) -> A0 (r, in) with orthonormal rows: Q^T of the reduced QR of A^T, diag(R) > 0."""
    Q, R = torch.linalg.qr(A.T.to(torch.float64), mode="reduced")  # Q (in, r), R (r, r)
    d = torch.sign(torch.diagonal(R))
    d[d == 0] = 1.0  # a zero pivot keeps its column as it is
    return (Q * d).T.to(A.dtype).contiguous()


def schedule_weight(i: int, schedule: str | float = "inv-sqrt") -> float:
    """lambda(i) for task i (1-based): 1/sqrt(i) (default), 1/i (a running mean), or a constant."""
    if i < 1:
        raise ValueError(f"task index is 1-based, got {i}")
    if i == 1:
        return 1.0
    if schedule == "inv-sqrt":
        return 1.0 / math.sqrt(i)
    if schedule == "inv":
        return 1.0 / i
    return float(schedule)


def merge(
    A_merged: torch.Tensor | None,
    B_merged: torch.Tensor | None,
    A_ft: torch.Tensor,
    B_ft: torch.Tensor,
    i: int,
    *,
    schedule: str | float = "inv-sqrt",
    a_rule: str = "replace",
    b_rule: str = "interpolate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The merge after task i (1-based). Default: A_m = A_ft; B_m = B_m + lambda(i) (B_ft - B_m)."""
    if i == 1 or A_merged is None or B_merged is None:
        return A_ft.clone(), B_ft.clone()
    lam = schedule_weight(i, schedule)
    A_new = A_ft.clone() if a_rule == "replace" else A_merged + lam * (A_ft - A_merged)
    B_new = B_ft.clone() if b_rule == "replace" else B_merged + lam * (B_ft - B_merged)
    return A_new, B_new


INITS = ("last-ft", "merged", "random")
A_RULES = ("replace", "interpolate")
B_RULES = ("interpolate", "replace")
TRAINS = ("both", "a", "b")


def _parse_schedule(value) -> str | float:
    """'inv-sqrt', 'inv', or a constant lambda in (0, 1]: 0 would never merge a new task's B, and a value
    outside [0, 1] extrapolates past B_m or B_ft instead of interpolating between them."""
    if value in ("inv-sqrt", "inv"):
        return value
    message = f"method.slao.schedule must be 'inv-sqrt', 'inv' or a number in (0, 1], got {value!r}"
    try:
        constant = float(value)
    except (TypeError, ValueError):
        raise ConfigError(message) from None
    if not 0.0 < constant <= 1.0:  # also refuses nan
        raise ConfigError(message)
    return constant


@dataclass
class SlaoOptions:
    init: str = option("last-ft", "initialise task i from: last-ft | merged | random")
    a_rule: str = option("replace", "merge rule for A: replace | interpolate")
    b_rule: str = option("interpolate", "merge rule for B: interpolate | replace")
    train: str = option("both", "factors that train: both | a | b")
    schedule: str = option("inv-sqrt", "merge weight lambda(i): inv-sqrt | inv | a constant")


@register("slao", options=SlaoOptions)
class SlaoMethod(Method):
    """SLAO: orthogonal init from the last fine-tuned LoRA, merge after every task (A replaced, B interpolated).

    State between tasks: the merged LoRA and the last fine-tuned LoRA, nothing that grows.
    """

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        opts = options
        check_choice(self.name, "init", opts.init, INITS)
        check_choice(self.name, "a_rule", opts.a_rule, A_RULES)
        check_choice(self.name, "b_rule", opts.b_rule, B_RULES)
        check_choice(self.name, "train", opts.train, TRAINS)
        self.opts = opts
        self.schedule = _parse_schedule(opts.schedule)
        self.merged: LoraWeights = {}
        self.last_ft: LoraWeights = {}

    def init_lora(self, i, default, data=None):
        if i == 1 or self.opts.init == "random":
            return default
        source = self.last_ft if self.opts.init == "last-ft" else self.merged
        return {name: (orthogonal_init(A), B.clone()) for name, (A, B) in source.items()}

    def trainable(self, i: int) -> tuple[bool, bool]:
        """``train=both`` trains A and B on every task. The one-factor ablations ``train=a`` and ``train=b``
        start, like the method, from ordinary LoRA fine-tuning of both factors on task 1 (B starts at zero,
        so with B frozen there A would get no gradient and nothing would learn); from task 2 on only the
        named factor trains and the other stays at its initialisation (for ``a``: B = B_ft,i-1, which is
        then B_ft,1 on every task)."""
        if i == 1:
            return True, True
        return {"both": (True, True), "a": (True, False), "b": (False, True)}[self.opts.train]

    def after_task(self, i, trained, data=None):
        self.last_ft = {name: (A.clone(), B.clone()) for name, (A, B) in trained.items()}
        merged = {}
        for name, (A_ft, B_ft) in trained.items():
            A_m, B_m = self.merged.get(name, (None, None))
            merged[name] = merge(
                A_m, B_m, A_ft, B_ft, i,
                schedule=self.schedule, a_rule=self.opts.a_rule, b_rule=self.opts.b_rule,
            )
        self.merged = merged
        return merged

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.flatten("merged", self.merged), **self.flatten("last_ft", self.last_ft)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.merged = self.unflatten("merged", tensors)
        self.last_ft = self.unflatten("last_ft", tensors)
