"""One explicit training loop for one task (Accelerate), read top to bottom.

The configured batch is the global batch of an optimiser step: it is split into ``grad_accum``
micro-batches, and each micro-batch across the processes. The loss is the mean over every answer
token of the global batch, so one process and several give the same update.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from slao.config import TrainConfig
from slao.encoding import IGNORE, Encoded, training_batch
from slao.errors import ConfigError, SlaoError
from slao.lora import LoraAdapter
from slao.methods.base import Method


def _mask_logits_to_keep() -> bool:
    """Whether this transformers takes a (batch, length) boolean mask as ``logits_to_keep`` (5.21 on)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


_MASK_LOGITS_TO_KEEP = _mask_logits_to_keep()


class TrainingDiverged(SlaoError):
    """The loss became NaN or infinite."""

    exit_status = 3


GROUP_CHUNK_BATCHES = 50  # length grouping sorts within chunks of this many batches


def step_batches(n: int, cfg: TrainConfig, generator: torch.Generator,
                 lengths: list[int] | None = None) -> list[list[int]]:
    """The data order: a seeded permutation per epoch, cut into global batches of ``batch_size``.

    With ``cfg.group_by_length`` (and ``lengths``, tokens per example), each epoch's permutation is cut
    into chunks of GROUP_CHUNK_BATCHES batches, each chunk sorted by length (longest first), cut into
    batches, and the epoch's batches shuffled: a batch holds examples of similar length, so short ones
    do not pay for a long one's padding, while the chunk keeps the draw random. Every example still
    appears once per epoch; an epoch's last batch may be short. Off by default: it changes which
    examples share a step, and the paper's runs shuffle plainly.
    """
    total = max(1, math.ceil(n * cfg.epochs))
    if cfg.group_by_length and lengths is not None:
        return _grouped_batches(n, total, cfg.batch_size, generator, lengths)
    order: list[int] = []
    while len(order) < total:
        order += torch.randperm(n, generator=generator).tolist()
    order = order[:total]
    return [order[k : k + cfg.batch_size] for k in range(0, total, cfg.batch_size)]


def _grouped_batches(n: int, total: int, size: int, generator: torch.Generator,
                     lengths: list[int]) -> list[list[int]]:
    batches: list[list[int]] = []
    chunk = GROUP_CHUNK_BATCHES * size
    for start in range(0, total, n):  # one epoch (the last may be partial) at a time
        epoch = torch.randperm(n, generator=generator).tolist()[: min(n, total - start)]
        mine: list[list[int]] = []
        for c in range(0, len(epoch), chunk):
            part = sorted(epoch[c : c + chunk], key=lambda k: -lengths[k])  # stable: ties keep the draw
            mine += [part[k : k + size] for k in range(0, len(part), size)]
        batches += [mine[k] for k in torch.randperm(len(mine), generator=generator).tolist()]
    return batches


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - step / total)
    return cfg.lr


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions whose next token is an answer token (the only logits the loss needs)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def _answer_nll(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the answer tokens. Only the answer positions go through the vocabulary
    projection (``logits_to_keep``): a prompt of ~90 tokens has 2-4 answer tokens, and the projection
    onto 49k tokens is a fifth of SmolLM2's forward FLOPs."""
    keep = answer_positions(labels)
    if _MASK_LOGITS_TO_KEEP:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # (answer tokens, V)
    else:  # older transformers take only positions shared by the batch: their union, then each row's own
        cols = keep.any(0).nonzero().squeeze(1)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=cols).logits[keep[:, cols]]
    logits = logits.reshape(-1, logits.size(-1)).float()
    return torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep[:, :-1]], reduction="sum")


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


def check_backend(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Refuse the launch set-ups this loop cannot run right (docs/distributed.md).

    FSDP shards the parameters, but the harness reads, writes and evaluates the LoRA on every process's
    own full copy of the model. DeepSpeed steps its optimiser inside every backward pass, so micro-batches
    accumulated here would each become an optimiser step.
    """
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise ConfigError("FSDP shards the model's parameters, which slao's harness does not support; launch "
                          "with DDP (accelerate_configs/ddp.yaml, or torchrun) or DeepSpeed ZeRO-2 instead")
    if kind == DistributedType.DEEPSPEED and cfg.grad_accum > 1:
        raise ConfigError(f"train.grad_accum={cfg.grad_accum} does not work under DeepSpeed (it steps the "
                          "optimiser after every micro-batch); set train.grad_accum=1")


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
    check_backend(accelerator, cfg)
    data_seed = seed * 100_003 + i
    generator = torch.Generator().manual_seed(data_seed)
    batches = step_batches(len(examples), cfg, generator, [len(e.prompt) + len(e.answer) for e in examples])
    # Recorded in the checkpoint, so a resumed run can be shown to have used the same order.
    data_order = {"generator_seed": data_seed, "steps": len(batches),
                  "batches_sha256": hashlib.sha256(json.dumps(batches).encode()).hexdigest()}
    params = adapter.set_trainable(*method.trainable(i))
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
    recent: collections.deque = collections.deque(maxlen=11)
    for step, batch in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, step - 1, len(batches))
        items = [examples[k] for k in batch]
        n_answer = sum(len(e.answer) for e in items)  # the global batch's answer tokens
        micro = [items[k :: cfg.grad_accum] for k in range(min(cfg.grad_accum, len(items)))]
        step_stats = torch.zeros(2, dtype=torch.float64)  # this process's (loss, real tokens)
        for m, micro_items in enumerate(micro):
            # Every process runs every micro-batch so that DDP's gradient all-reduce and the reduce
            # below line up: a process with no share of a short (last) batch runs a stand-in example
            # with weight 0; skipping it would leave the others waiting for it for ever.
            mine = micro_items[rank::world]
            weight = 1.0 if mine else 0.0
            ids, mask, labels = training_batch(mine or micro_items[:1], pad_id)
            ids, mask, labels = (t.to(accelerator.device) for t in (ids, mask, labels))
            sync = m == len(micro) - 1
            context = accelerator.no_sync(model) if (world > 1 and not sync) else _nullcontext()
            with context, torch.autocast(accelerator.device.type, torch.bfloat16, enabled=cfg.bf16):
                loss = weight * _answer_nll(model, ids, mask, labels) / n_answer
                extra = method.extra_loss(i, adapter.params())
                if extra is not None:
                    loss = loss + extra / (len(micro) * world)
                # DDP averages gradients over processes; scale so the sum over processes is the mean.
                accelerator.backward(loss * world)
            step_stats += torch.tensor([float(loss.detach()), weight * int(mask.sum())], dtype=torch.float64)
        step_stats = accelerator.reduce(step_stats.to(accelerator.device), reduction="sum").cpu()
        loss_value, tokens_seen = float(step_stats[0]), tokens_seen + int(step_stats[1])  # global figures
        if not math.isfinite(loss_value):
            bar.close()
            _remove(hooks)
            raise TrainingDiverged(
                f"the loss became {loss_value} at task {i} ({task_name}), step {step}; "
                "the checkpoint of the last finished task is kept (the same settings would diverge again). "
                "Start a new run (another --output) with a lower train.lr, or with train.bf16 off."
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
        recent.append((elapsed, tokens_seen))  # the rate over the last steps, not since the task began
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        tok_s = (n1 - n0) / max(t1 - t0, 1e-9) if len(recent) > 1 else tokens_seen / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:.0f}")
        bar.update(1)
        if step % cfg.log_every == 0 or step == len(batches):
            log({"task": task_name, "task_index": i, "step": step, "steps": len(batches),
                 "loss": loss_value, "lr": _lr_at(cfg, step - 1, len(batches)),
                 "tokens": tokens_seen, "seconds": round(elapsed, 3)})
    bar.close()
    _remove(hooks)
    adapter.set_trainable(False, False)
    accelerator.free_memory()
    return {"steps": len(batches), "seconds": time.perf_counter() - start,
            "tokens": tokens_seen, "final_loss": loss_value, "data_order": data_order}


def _remove(handles) -> None:
    for h in handles:
        h.remove()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
