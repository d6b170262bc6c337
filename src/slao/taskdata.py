"""The run's data as a method may read it: each task's encoded training examples, and forward passes of
the run's own model over them that collect the inputs of the LoRA layers.

A method gets a ``TaskData`` in ``init_lora`` (before task i trains; the adapter then holds the LoRA that
was deployed after task i-1) and in ``after_task`` (the adapter holds task i's fine-tuned LoRA). Forward
passes run in eval mode (no dropout) under ``torch.no_grad``, batched, over at most ``max_examples``
examples taken in order, with the encoding the training loop uses, so statistics cost one pass over a
capped sample and never change the run's random streams.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from slao.encoding import Encoded, training_batch

WHICH = ("current", "seen", "previous")


class TaskData:
    def __init__(self, adapter, device: torch.device, train_data: list[list[Encoded]], i: int, pad_id: int,
                 max_examples: int = 256, batch_size: int = 8):
        self.adapter, self.device = adapter, device
        self.train_data, self.i, self.pad_id = train_data, i, pad_id
        self.max_examples, self.batch_size = max_examples, batch_size

    @property
    def task_index(self) -> int:
        """i, the 1-based index of the task this data was handed for."""
        return self.i

    def examples(self, which: str = "current") -> list[Encoded]:
        """Training examples of task i (``current``), tasks 1..i (``seen``) or 1..i-1 (``previous``)."""
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        tasks = {"current": [self.i - 1], "seen": range(self.i), "previous": range(self.i - 1)}[which]
        return [x for t in tasks for x in self.train_data[t]]

    def task_examples(self, t: int) -> list[Encoded]:
        """Training examples of task t (1-based, t <= i)."""
        if not 1 <= t <= self.i:
            raise ValueError(f"task {t} is not among the tasks seen so far (1..{self.i})")
        return self.train_data[t - 1]

    def capped(self, which: str = "current", max_examples: int | None = None) -> list[Encoded]:
        """At most ``max_examples`` (default: the run's cap) of ``examples(which)``, in order; over several
        tasks an equal share of each (the first of each task), so no task's statistics crowd out the others."""
        cap = max_examples or self.max_examples
        if which == "current":
            return self.examples(which)[:cap]
        tasks = range(self.i) if which == "seen" else range(self.i - 1)
        share = max(1, cap // max(1, len(tasks)))
        return [x for t in tasks for x in self.train_data[t][:share]]

    def base_weights(self) -> dict[str, torch.Tensor]:
        """Each target layer's frozen base weight W0 (out, in), as the model holds it (no copy)."""
        return {name: m.weight.detach() for name, m in self.adapter.base_layers().items()}

    @property
    def scaling(self) -> float:
        """s = alpha / r: a LoRA (A, B) adds s * B @ A to its layer."""
        return float(self.adapter.scaling)

    def batches(self, which: str = "current", max_examples: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(ids, mask, labels) batches of ``capped(which, max_examples)``."""
        items = self.capped(which, max_examples)
        for k in range(0, len(items), self.batch_size):
            yield tuple(t.to(self.device) for t in training_batch(items[k : k + self.batch_size], self.pad_id))

    def layer_inputs(self, which: str = "current", max_examples: int | None = None, adapter: bool = True,
                     layers: list[str] | None = None,
                     per_sequence_max: bool = False) -> tuple[dict[str, torch.Tensor], int]:
        """Each LoRA layer's input covariance over the real (unpadded) tokens of the examples:
        {layer: sum_tokens x x^T (in, in), float64}, and the number of tokens summed. With ``adapter=False``
        the base model alone runs (the LoRA switched off).

        ``per_sequence_max`` gives PEFT's CorDA covariance instead (peft/tuners/lora/corda.py,
        ``calib_cov_distribution``, whose hook sees one sequence per call): each example's inputs X are
        divided by |max X| (the largest entry, as PEFT takes it), and the mean over examples of X^T X is
        returned. Its overall scale is what sets how CorDA splits a component between A and B."""
        targets = self.adapter.base_layers()
        if layers is not None:
            targets = {n: targets[n] for n in layers}
        sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in targets.items()}
        current: dict[str, torch.Tensor] = {}

        def hook(name):
            def collect(module, args):
                x, mask = args[0].detach().to(torch.float64), current["mask"]
                if per_sequence_max:  # each example over |its largest real entry|, as PEFT's hook takes it
                    top = x.masked_fill(~mask[..., None], -torch.inf).amax(dim=(1, 2)).abs()
                    x = x / torch.where(top > 0, top, 1.0)[:, None, None]
                x = x[mask]  # (real tokens, in)
                sums[name] += (x.T @ x).cpu()
            return collect

        model = self.adapter.model
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
        was_training = model.training
        tokens = sequences = 0
        try:
            model.eval()
            with torch.no_grad(), (model.disable_adapter() if not adapter else _null()):
                for ids, mask, _ in self.batches(which, max_examples):
                    current["mask"] = mask.bool()
                    model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
                    tokens += int(mask.sum())
                    sequences += int(ids.shape[0])
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        if per_sequence_max and sequences:
            sums = {n: C / sequences for n, C in sums.items()}
        return sums, tokens


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
