"""Turning examples into token ids: the prompt frame is kept whole and only the example text is cut,
so the instruction, the options and the answer always survive truncation; within a text that holds a
labelled passage (MultiRC, BoolQ), only the passage is cut, so the question survives too."""

from __future__ import annotations

from dataclasses import dataclass

from slao.data.task import Example, Task

IGNORE = -100


@dataclass
class Encoded:
    prompt: list[int]  # prompt ids (frame + cut text)
    answer: list[int]  # target ids (answer + end of sequence); empty for evaluation-only use


def bos_ids(tokenizer) -> list[int]:
    """``[bos_token_id]`` when the tokenizer puts it before a plain ``tokenizer(text)`` call (Llama-2:
    add_bos_token, and its chat template starts with it), else ``[]`` (SmolLM2). Prompts are encoded
    without special tokens, so this is how training and evaluation prompts both get the BOS the model saw
    in pre-training."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if with_special[:1] == [bos] and without[:1] != [bos] else []


class TaskEncoder:
    """Encodes one task's examples; the frame's ids (BOS where the tokenizer adds one) are computed once."""

    def __init__(self, tokenizer, task: Task, max_prompt_tokens: int):
        self.tok = tokenizer
        self.task = task
        self.max_prompt_tokens = max_prompt_tokens
        self.prefix = bos_ids(tokenizer) + self._ids(task.prefix)
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
        return self.prefix + self._text(example) + self.suffix

    def _text(self, example: Example) -> list[int]:
        """The example text's ids within ``room``: whole when it fits; else the passage is cut from its end
        (the text around it kept), or, without a passage, the text itself. A question side longer than the
        room on its own is kept from its start, without the passage."""
        ids = self._ids(example.text)
        span = example.passage_span
        if len(ids) <= self.room or span is None:
            return ids[: self.room]
        start, end = span
        head, tail = self._ids(example.text[:start]), self._ids(example.text[end:])
        keep = self.room - len(head) - len(tail)
        if keep < 0:
            return (head + tail)[: self.room]
        return head + self._ids(example.text[start:end])[:keep] + tail

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
