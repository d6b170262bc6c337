"""Batched greedy generation and scoring. Prompts are sorted by length and left-padded; generation
stops when every sequence in the batch has ended or after ``max_new_tokens``."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from slao.config import EvalConfig
from slao.data.normalize import exact_match
from slao.data.task import Task


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :] = torch.tensor(p)
        mask[row, length - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], cfg: EvalConfig, desc: str = "",
             show: bool = True) -> list[str]:
    """Greedy answers to ``prompts`` (token ids), in the order given."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda k: -len(prompts[k]))
    answers: list[str] = [""] * len(prompts)
    batches = [order[k : k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    for batch in tqdm(batches, desc=desc or "eval", disable=not show, leave=False, dynamic_ncols=True):
        ids, mask = left_pad([prompts[k] for k in batch], tokenizer.pad_token_id)
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
            out = _greedy(model, tokenizer, ids.to(device), mask.to(device), cfg.max_new_tokens)
        new = out[:, ids.shape[1] :]
        for k, row in zip(batch, new, strict=True):
            answers[k] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


def _greedy(model, tokenizer, ids, mask, max_new_tokens):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def example_scores(task: Task, predictions: list[str]) -> list[float]:
    """Each test example's score in [0, 1] (exact match 0/1, or ROUGE-L F), in test order: what the
    paired comparisons resample."""
    if task.metric == "rougeL":
        from slao.scores import rouge_l

        return [max(rouge_l(p, a) for a in ex.answers) for p, ex in zip(predictions, task.test, strict=True)]
    return [float(exact_match(p, ex.answers)) for p, ex in zip(predictions, task.test, strict=True)]


def score(task: Task, predictions: list[str]) -> float:
    """Percent of test examples answered correctly (normalised exact match); ROUGE-L where set."""
    values = example_scores(task, predictions)
    return 100.0 * sum(values) / len(values)


def evaluate_task(accelerator: Accelerator, model, tokenizer, task: Task, prompts: list[list[int]],
                  cfg: EvalConfig, desc: str = "") -> tuple[float, list[str], float]:
    """Score one task; the processes split the prompts and gather the answers. -> (score, answers, s)."""
    start = time.perf_counter()
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = list(range(rank, len(prompts), world))
    answers = generate(model, tokenizer, [prompts[k] for k in mine], cfg, desc,
                       show=accelerator.is_main_process)
    if world > 1:
        pairs = gather_object(list(zip(mine, answers, strict=True)))
        merged = [""] * len(prompts)
        for k, a in pairs:
            merged[k] = a
        answers = merged
    return score(task, answers), answers, time.perf_counter() - start


class AnswerCache:
    """The base model's answers to a task's test prompts, kept in a folder that the runs of one comparison
    share. Zero-shot scoring depends on neither the method nor its training, so in a grid the first run of
    each seed and order generates them and the other methods read them back.

    An entry is named by a hash of everything its answers depend on: ``identity`` (the base model and its
    dtype, the generation settings, the number of processes, the versions and git commit of the code) and
    the prompts' token ids. The caller passes no cache for a checkout with uncommitted changes. A missing,
    unreadable or malformed entry is generated again; a failed write only costs the next run the time."""

    def __init__(self, folder: str | Path, identity: dict):
        self.folder, self.identity = Path(folder), identity

    def _path(self, prompts: list[list[int]]) -> Path:
        blob = json.dumps({**self.identity, "prompts": prompts}, sort_keys=True).encode()
        return self.folder / f"{hashlib.sha256(blob).hexdigest()}.json"

    def get(self, prompts: list[list[int]]) -> list[str] | None:
        try:
            answers = json.loads(self._path(prompts).read_text()).get("answers")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(answers, list) or len(answers) != len(prompts) or not all(isinstance(a, str)
                                                                                    for a in answers):
            return None
        return answers

    def put(self, prompts: list[list[int]], answers: list[str], task: str) -> bool:
        from slao.checkpoint import write_atomic

        entry = {"task": task, "model": self.identity.get("model"), "answers": answers}
        try:
            write_atomic(self._path(prompts), json.dumps(entry) + "\n")
        except OSError:
            return False
        return True
