"""Turning examples into token ids: the prompt frame is kept whole and only the example text is cut,
so the instruction, the options and the answer always survive truncation."""

from __future__ import annotations

from dataclasses import dataclass

from slao.data.task import Example, Task

IGNORE = -100


@dataclass
class Encoded:
    prompt: list[int]  # prompt ids (frame + cut text)
    answer: list[int]  # target ids (answer + end of sequence); empty for evaluation-only use


class TaskEncoder:
    """Encodes one task's examples; the frame's ids are computed once."""

    def __init__(self, tokenizer, task: Task, max_prompt_tokens: int):
        self.tok = tokenizer
        self.task = task
        self.max_prompt_tokens = max_prompt_tokens
        self.prefix = self._ids(task.prefix)
        self.suffix = self._ids(task.suffix)
        room = max_prompt_tokens - len(self.prefix) - len(self.suffix)
        if room < 1:
            from slao.errors import ConfigError

            raise ConfigError(
                f"task {task.name}: its prompt frame alone is {len(self.prefix) + len(self.suffix)} "
                f"tokens; raise data.max_prompt_tokens above {max_prompt_tokens}"
            )
        self.room = room

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt(self, example: Example) -> list[int]:
        text = self._ids(example.text)[: self.room]
        return self.prefix + text + self.suffix

    def answer(self, example: Example) -> list[int]:
        # The answer follows "Answer:" after a space; the end-of-sequence token teaches the model to stop.
        return self._ids(" " + example.target) + [self.tok.eos_token_id]

    def train_example(self, example: Example) -> Encoded:
        return Encoded(self.prompt(example), self.answer(example))


def training_batch(items: list[Encoded], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 outside the answer)."""
    import torch

    length = max(len(e.prompt) + len(e.answer) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for row, e in enumerate(items):
        seq = e.prompt + e.answer
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
    return ids, mask, labels
