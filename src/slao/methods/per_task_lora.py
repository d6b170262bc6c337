"""Per-task LoRA (design.md §3): an independent LoRA per task, chosen by the task's name at inference
(an oracle: it is told which task a prompt belongs to, which the other methods are not)."""

from __future__ import annotations

import torch

from slao.methods.base import Method, register
from slao.methods.lora_ops import LoraWeights, clone_lora, flatten_list, unflatten_list


def folder_name(task: str) -> str:
    """A task name usable as one sub-folder of adapter/ (no separators, not '.' or '..')."""
    name = task.replace("/", "_").replace("\\", "_")
    return name if name.strip(".") else f"task-{name}"


@register("per-task-lora")
class PerTaskLoraMethod(Method):
    """An independent LoRA per task, picked by task name at inference (an oracle; grows a LoRA a task)."""

    grows = True
    oracle = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.loras: list[LoraWeights] = []  # task j (0-based) -> its LoRA

    def after_task(self, i, trained, data=None):
        del self.loras[i - 1 :]  # a task trained again (never in a normal run) replaces its LoRA
        self.loras.append(clone_lora(trained))
        return self.loras[-1]

    def eval_weights(self, j: int) -> LoraWeights | None:
        return self.loras[j] if j < len(self.loras) else None

    def exports(self, deployed: LoraWeights) -> dict[str, LoraWeights]:
        names = list(self.task_names) or [f"task-{j + 1}" for j in range(len(self.loras))]
        # The root first: writing adapter/ replaces the whole folder, sub-folders included.
        out = {"": deployed}
        out.update({folder_name(names[j]): lora for j, lora in enumerate(self.loras)})
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return flatten_list(self.loras)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.loras = unflatten_list(tensors)
