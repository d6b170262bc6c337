"""One explicit training loop for one task (Accelerate), read top to bottom.

The configured batch is the global batch of an optimiser step: it is split into ``grad_accum``
micro-batches, and each micro-batch across the processes. The loss is the mean over every answer
token of the global batch, so one process and several give the same update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from slao.config import TrainConfig
from slao.encoding import IGNORE, Encoded, training_batch
from slao.errors import SlaoError
from slao.lora import LoraAdapter
from slao.methods.base import Method


class TrainingDiverged(SlaoError):
    """The loss became NaN or infinite."""

    exit_status = 3


def step_batches(n: int, cfg: TrainConfig, generator: torch.Generator) -> list[list[int]]:
    """The data order: a seeded permutation per epoch, cut into global batches of ``batch_size``."""
    total = max(1, math.ceil(n * cfg.epochs))
    order: list[int] = []
    while len(order) < total:
        order += torch.randperm(n, generator=generator).tolist()
    order = order[:total]
    return [order[k : k + cfg.batch_size] for k in range(0, total, cfg.batch_size)]


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - step / total)
    return cfg.lr


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each next token whose label is not IGNORE."""
    logits = logits[:, :-1].float()  # (B, L-1, V)
    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def _freeze_leading(params, k: int):
    """Zero the gradients of the first k rank components (rows of A, columns of B)."""
    if k == 0:
        return []
    handles = []
    for A, B in params.values():
        if A.requires_grad:
            handles.append(A.register_hook(lambda g: torch.cat([torch.zeros_like(g[:k]), g[k:]], 0)))
        if B.requires_grad:
            handles.append(B.register_hook(lambda g: torch.cat([torch.zeros_like(g[:, :k]), g[:, k:]], 1)))
    return handles


def train_task(
    accelerator: Accelerator,
    adapter: LoraAdapter,
    method: Method,
    i: int,
    task_name: str,
    examples: list[Encoded],
    cfg: TrainConfig,
    seed: int,
    pad_id: int,
    log: Callable[[dict], None],
) -> dict:
    """Train the adapter's LoRA on one task (i is 1-based). Returns step count, seconds, tokens.

    bf16 autocast is applied here rather than through Accelerate's mixed precision, which would wrap
    the model's forward for good and make evaluation run in bf16 too.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + i)
    batches = step_batches(len(examples), cfg, generator)
    params = adapter.set_trainable(*method.trainable())
    frozen = method.frozen_rank(i)
    hooks = _freeze_leading(adapter.params(), frozen)
    frozen_copy = {n: (A[:frozen].clone(), B[:, :frozen].clone()) for n, (A, B) in adapter.get().items()}
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(adapter.model, optimizer)
    model.train()
    world, rank = accelerator.num_processes, accelerator.process_index

    bar = tqdm(total=len(batches), desc=f"train {i}:{task_name}", disable=not accelerator.is_main_process,
               dynamic_ncols=True, leave=False)
    start, tokens_seen, loss_value = time.perf_counter(), 0, float("nan")
    for step, batch in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, step - 1, len(batches))
        items = [examples[k] for k in batch]
        n_answer = sum(len(e.answer) for e in items)  # the global batch's answer tokens
        micro = [items[k :: cfg.grad_accum] for k in range(cfg.grad_accum)]
        step_loss = torch.zeros(())
        for m, micro_items in enumerate(micro):
            mine = micro_items[rank::world]
            if not mine:
                continue
            ids, mask, labels = training_batch(mine, pad_id)
            ids, mask, labels = (t.to(accelerator.device) for t in (ids, mask, labels))
            sync = m == len(micro) - 1
            context = accelerator.no_sync(model) if (world > 1 and not sync) else _nullcontext()
            with context, torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.bf16):
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = _token_nll(logits, labels) / n_answer
                extra = method.extra_loss(i, adapter.params())
                if extra is not None:
                    loss = loss + extra / (len(micro) * world)
                # DDP averages gradients over processes; scale so the sum over processes is the mean.
                accelerator.backward(loss * world)
            step_loss += loss.detach().float()
            tokens_seen += int(mask.sum())
        loss_value = float(accelerator.reduce(step_loss.to(accelerator.device), reduction="sum"))
        if not math.isfinite(loss_value):
            bar.close()
            _remove(hooks)
            raise TrainingDiverged(
                f"the loss became {loss_value} at task {i} ({task_name}), step {step}; "
                "the last finished task's checkpoint is kept. Lower train.lr or turn off train.bf16."
            )
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if frozen:
            with torch.no_grad():  # exact: frozen components do not move, whatever the optimiser does
                for name, (A, B) in adapter.params().items():
                    A[:frozen].copy_(frozen_copy[name][0])
                    B[:, :frozen].copy_(frozen_copy[name][1])
        elapsed = time.perf_counter() - start
        tok_s = tokens_seen * world / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:.0f}")
        bar.update(1)
        if step % cfg.log_every == 0 or step == len(batches):
            log({"task": task_name, "task_index": i, "step": step, "steps": len(batches),
                 "loss": loss_value, "lr": _lr_at(cfg, step - 1, len(batches)),
                 "tokens": tokens_seen * world, "seconds": round(elapsed, 3)})
    bar.close()
    _remove(hooks)
    adapter.set_trainable(False, False)
    accelerator.free_memory()
    return {"steps": len(batches), "seconds": time.perf_counter() - start,
            "tokens": tokens_seen * world, "final_loss": loss_value}


def _remove(handles) -> None:
    for h in handles:
        h.remove()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
