"""Experience replay (design.md §3): sequential LoRA, as ``seq-lora``, with a small buffer of earlier
tasks' training examples trained on together with each new task's own. Not data-free: it keeps examples.

The buffer is filled after each task from that task's encoded training examples, in one of two modes:

- ``quota`` (default): ``method.replay.per_task`` examples of every finished task, drawn without
  replacement by a generator seeded with (``method.replay.seed``, task index). ``per_task`` below 1 is a
  fraction of the task's training examples (default 0.02, i.e. 2%, and at least 1 example); 1 or more is
  a count. The buffer grows by one quota a task.
- ``reservoir``: reservoir sampling (Vitter's algorithm R) over every training example of the finished
  tasks, in task order, into a buffer of capacity (T - 1) x the quota of task 1, the size the quota buffer
  reaches before the last task when tasks are of one size (as slao's benchmarks draw them). The draws for
  task t come from a generator seeded with (``method.replay.seed``, t), so a resumed run draws the same.

Choices left open by "a small buffer of earlier tasks' examples", and ours: the buffer's examples are
added to the task's (not a separate loss or a fixed share of each batch), so a task trains for
ceil((n + buffer) * epochs / batch) steps on their shuffled union; the last task's quota is kept too, so
the buffer after T tasks holds every task's (the state grows with every task). The run's training
examples are themselves a seeded draw (``seed``), so the buffer changes with the run's seed through them.

State: the buffer's token ids (prompt and answer of each example, concatenated, with their lengths) and,
for each buffered example, its (task, index) among the task's training examples; in reservoir mode also
the number of examples seen and the capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slao.encoding import Encoded
from slao.errors import ConfigError
from slao.methods.base import Method, check_choice, needs_data, option, register
from slao.methods.lora_ops import clone_lora, tensors_bytes

MODES = ("quota", "reservoir")
_SEED_STRIDE = 1_000_003


def quota(per_task: float, n: int) -> int:
    """Examples kept from a task of n training examples: a fraction (below 1; rounded half up, at least 1)
    or a count; never more than n."""
    k = max(1, math.floor(per_task * n + 0.5)) if per_task < 1 else int(per_task)
    return min(k, n)


def task_generator(seed: int, t: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * _SEED_STRIDE + t)


def quota_draw(n: int, k: int, generator: torch.Generator) -> list[int]:
    """k distinct indices of 0..n-1: the first k of a seeded permutation, in increasing order."""
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def reservoir_update(slots: list, seen: int, items: list, capacity: int, generator: torch.Generator) -> int:
    """Algorithm R: offer ``items`` in order to a reservoir ``slots`` (changed in place) of ``capacity``
    that has seen ``seen`` items; the item at stream position p (0-based) enters while the reservoir is not
    full, then replaces slot j, drawn uniformly from 0..p, when j < capacity. Returns the new count seen."""
    for item in items:
        if len(slots) < capacity:
            slots.append(item)
        else:
            j = int(torch.randint(0, seen + 1, (1,), generator=generator))
            if j < capacity:
                slots[j] = item
        seen += 1
    return seen


@dataclass
class ReplayOptions:
    per_task: float = option(0.02, "examples kept from each finished task: a fraction of its training "
                                   "examples if below 1 (at least 1 example), else a count")
    mode: str = option("quota", "quota: per_task examples of every finished task | reservoir: reservoir "
                                "sampling of every seen example into (T-1) x task 1's quota")
    seed: int = option(0, "seed of the buffer's draws (combined with the task index)")


@register("replay", options=ReplayOptions)
class ReplayMethod(Method):
    """Sequential LoRA plus a buffer of earlier tasks' training examples (per-task quota or reservoir)
    mixed into each task's training; not data-free."""

    data_free = False
    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.per_task, self.mode, self.seed = float(options.per_task), options.mode, int(options.seed)
        check_choice(self.name, "mode", self.mode, MODES)
        if not (self.per_task > 0 and math.isfinite(self.per_task)) or (
                self.per_task >= 1 and self.per_task != int(self.per_task)):
            raise ConfigError("method.replay.per_task must be a fraction in (0, 1) or a whole count >= 1, "
                              f"got {options.per_task!r}")
        self.lora = {}
        # The buffer: (task, index) of each example (1-based task), and the examples themselves.
        self.sources: list[tuple[int, int]] = []
        self.examples: list[Encoded] = []
        self.seen, self.capacity = 0, 0

    def init_lora(self, i, default, data=None):
        return clone_lora(self.lora) if i > 1 and self.lora else default

    def extra_examples(self, i: int) -> list:
        return list(self.examples)

    def after_task(self, i, trained, data=None):
        self.lora = clone_lora(trained)
        items = needs_data(data, "replay").task_examples(i)
        generator = task_generator(self.seed, i)
        if self.mode == "quota":
            for k in quota_draw(len(items), quota(self.per_task, len(items)), generator):
                self.sources.append((i, k))
                self.examples.append(items[k])
        else:
            if not self.capacity:
                self.capacity = quota(self.per_task, len(items)) * max(self.num_tasks - 1, 1)
            slots = list(zip(self.sources, self.examples, strict=True))
            self.seen = reservoir_update(slots, self.seen, [((i, k), x) for k, x in enumerate(items)],
                                         self.capacity, generator)
            self.sources = [s for s, _ in slots]
            self.examples = [x for _, x in slots]
        return self.lora

    # -- state: the buffer as integer tensors --------------------------------------------------------
    def _buffer_tensors(self) -> dict[str, torch.Tensor]:
        if not self.examples:
            return {}
        ids = [t for e in self.examples for t in e.prompt + e.answer]
        return {"buffer/ids": torch.tensor(ids, dtype=torch.int32),
                "buffer/prompt_len": torch.tensor([len(e.prompt) for e in self.examples], dtype=torch.int32),
                "buffer/answer_len": torch.tensor([len(e.answer) for e in self.examples], dtype=torch.int32),
                "buffer/source": torch.tensor(self.sources, dtype=torch.int64)}

    def state(self) -> dict[str, torch.Tensor]:
        out = {**self.flatten("lora", self.lora), **self._buffer_tensors()}
        if self.mode == "reservoir":
            out["reservoir/seen"] = torch.tensor(self.seen, dtype=torch.int64)
            out["reservoir/capacity"] = torch.tensor(self.capacity, dtype=torch.int64)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.lora = self.unflatten("lora", tensors)
        self.sources, self.examples = [], []
        if "buffer/ids" in tensors:
            ids = tensors["buffer/ids"].tolist()
            start = 0
            for p, a in zip(tensors["buffer/prompt_len"].tolist(), tensors["buffer/answer_len"].tolist(),
                            strict=True):
                self.examples.append(Encoded(ids[start : start + p], ids[start + p : start + p + a]))
                start += p + a
            self.sources = [tuple(s) for s in tensors["buffer/source"].tolist()]
        self.seen = int(tensors["reservoir/seen"]) if "reservoir/seen" in tensors else 0
        self.capacity = int(tensors["reservoir/capacity"]) if "reservoir/capacity" in tensors else 0

    def stats(self) -> dict:
        return {"buffer_examples": len(self.examples), "buffer_bytes": tensors_bytes(self._buffer_tensors().values())}
