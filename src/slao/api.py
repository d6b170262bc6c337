"""SLAO inside a user's own training code: ``ContinualLoRA`` wraps a ``PeftModel`` with a LoRA adapter and
does the method's part around any training loop, and ``ContinualLoRACallback`` calls it from
transformers' ``Trainer`` (or TRL's ``SFTTrainer``, which is one).

    cl = ContinualLoRA(peft_model, method="slao")
    for task in tasks:
        cl.begin_task()          # task 1: the adapter as it is; later: orthogonal A from the last fine-tuned A
        train(peft_model, task)  # any loop; only the LoRA's A and B change
        cl.end_task()            # merge: the model now holds the merged LoRA (evaluate or deploy it)
    cl.save_pretrained("adapter/")  # a PEFT adapter folder

It runs the same method objects as ``slao run`` (``slao.methods``), so the merge is the same code. Only
methods whose rule is "a LoRA of the adapter's rank before the task, a LoRA of that rank after it" fit a
model the user owns; ``API_METHODS`` names them, and the README says why the others do not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slao.errors import ConfigError, SlaoError
from slao.lora import ADAPTER, LoraAdapter
from slao.methods import get_method

# Methods whose hooks need nothing but the LoRA itself at the adapter's rank: no extra loss in the user's
# loss, no frozen rank slices, no stacked or full-rank adapter, no task data, no per-task adapters.
# (OPCM only in its default space=factors: space=dense deploys a full-rank LoRA and is refused at end_task.)
API_METHODS = ("slao", "seq-lora", "opcm", "lora-lego")


class ContinualLoRA:
    """A continual-learning method around a user's ``PeftModel``.

    ``seed``: when given, the fresh LoRA a task may start from (task 1, and SLAO's ``init=random``) is drawn
    exactly as ``slao run --set seed=N`` draws it; when None, task 1 starts from the adapter the model
    holds (PEFT's init) and later fresh LoRAs draw from torch's global generator. ``options`` are the
    method's settings (``slao config`` lists them under ``method.<name>``).
    """

    def __init__(self, model, method: str = "slao", adapter_name: str = ADAPTER, seed: int | None = None,
                 **options):
        if method not in API_METHODS:
            get_method(method)  # an unknown name: the list of every method
            raise SlaoError(f"method {method!r} does not fit a model you own (the Python API runs "
                            f"{', '.join(API_METHODS)}); run it with `slao run --method {method}` instead")
        self.adapter = LoraAdapter.attach(model, adapter_name)
        cls = get_method(method)
        self.method = cls(_options(cls, method, options), self.adapter.shapes(), self.adapter.rank)
        self.seed, self.tasks_done, self.in_task = seed, 0, False

    @property
    def model(self):
        return self.adapter.model

    # -- around each task ---------------------------------------------------------------------------
    def begin_task(self) -> None:
        """Put the LoRA that task i starts from into the model, and mark which factors train."""
        if self.in_task:
            raise SlaoError(f"task {self.tasks_done + 1} has begun and not ended; call end_task() first")
        i = self.tasks_done + 1
        if self.seed is not None:
            default = self.adapter.default_init(torch.Generator().manual_seed(self.seed * 7919 + i))
        elif i == 1:
            default = self.adapter.get()
        else:
            default = self.adapter.default_init(torch.default_generator)
        self.adapter.set(self.method.init_lora(i, default, None))
        train_a, train_b = self.method.trainable(i)
        for A, B in self.adapter.params().values():
            A.requires_grad_(train_a)
            B.requires_grad_(train_b)
        self.in_task = True

    def end_task(self) -> None:
        """Fold the fine-tuned LoRA into the method's state; the model then holds the LoRA to deploy."""
        if not self.in_task:
            raise SlaoError("end_task() without begin_task(): call begin_task() before training each task")
        i = self.tasks_done + 1
        deploy = self.method.after_task(i, self.adapter.get(), None)
        self.adapter.set(deploy)
        self.tasks_done, self.in_task = i, False

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The method's state (SLAO: merged and last fine-tuned LoRA), the LoRA the model holds, and the
        number of tasks done: everything ``load_state_dict`` needs to go on after a restart."""
        if self.in_task:
            raise SlaoError("save the state between tasks (after end_task()), not during one")
        return {**self.method.state(), **self.method.flatten("deploy", self.adapter.get()),
                "tasks_done": torch.tensor(self.tasks_done)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.method.load_state({k: v for k, v in state.items() if not k.startswith("deploy/") and k != "tasks_done"})
        self.adapter.set(self.method.unflatten("deploy", state))
        self.tasks_done, self.in_task = int(state["tasks_done"]), False

    def save(self, path: str | Path) -> None:
        """``state_dict()`` as one safetensors file (with the method's name, checked by ``load``)."""
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"method": self.method.name})

    def load(self, path: str | Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            saved = (f.metadata() or {}).get("method")
        if saved != self.method.name:
            raise SlaoError(f"{path} holds the state of method {saved!r}, not {self.method.name!r}")
        self.load_state_dict(load_file(str(path)))

    def save_pretrained(self, out_dir: str | Path) -> None:
        """The LoRA the model holds (after ``end_task``: the merged one) as a PEFT adapter folder."""
        base = self.model.peft_config[self.adapter.adapter_name].base_model_name_or_path
        self.adapter.export(self.adapter.get(), Path(out_dir), base)


def _options(cls, name: str, given: dict):
    if cls.Options is None:
        if given:
            raise ConfigError(f"method {name!r} takes no options; got {', '.join(given)}")
        return None
    valid = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} of method {name!r}; valid: {', '.join(sorted(valid))}")
    return cls.Options(**given)


def _callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError as err:  # transformers is a dependency; this only guards a broken install
        raise SlaoError(f"the Trainer callback needs transformers ({err})") from None
    return TrainerCallback


class ContinualLoRACallback(_callback_base()):
    """Runs a task sequence in ``Trainer``/``SFTTrainer``: call ``trainer.train()`` once per task (with that
    task's dataset); the callback begins the task when training begins and merges when it ends."""

    def __init__(self, continual: ContinualLoRA):
        self.continual = continual

    def on_train_begin(self, args, state, control, **kwargs):
        self.continual.begin_task()

    def on_train_end(self, args, state, control, **kwargs):
        self.continual.end_task()
