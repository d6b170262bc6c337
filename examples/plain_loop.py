"""SLAO around a plain PyTorch training loop.

One LoRA learns slao's packaged tasks one after another; ``ContinualLoRA`` puts SLAO's orthogonal init
into the model before each task and merges the fine-tuned LoRA into the single adapter after it. After
every task the model is scored on the tasks seen so far. Tasks, prompts and scoring are slao's own, with
the settings of ``slao demo``, so the numbers read like those of ``slao run --method slao``.

    python examples/plain_loop.py                      # SmolLM2-135M, 240 train / 64 test examples a task
    python examples/plain_loop.py --model tiny-random --train-per-task 16 --test-per-task 4
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

from slao import ContinualLoRA
from slao.cli import DEMO_SETTINGS
from slao.config import build_config
from slao.encoding import TaskEncoder, training_batch
from slao.evaluate import evaluate_task
from slao.metrics import all_metrics
from slao.models import load_model
from slao.tables import results_table
from slao.tasks import load_benchmark


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny-random"])
    p.add_argument("--tasks", help="packaged tasks in training order, comma-separated (default: all four)")
    p.add_argument("--train-per-task", type=int, default=240, help="training examples a task")
    p.add_argument("--test-per-task", type=int, default=64, help="test examples a task")
    p.add_argument("--max-new-tokens", type=int, default=12, help="most tokens generated per answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/example-plain-loop", help="folder for the merged adapter")
    return p.parse_args()


def settings(args):
    """``slao demo``'s settings (lr 3e-4, batch 8, bf16 training, prompts cut to 96 tokens) with this budget."""
    layer = {"model": args.model, "seed": args.seed,
             "data": {"train_per_task": args.train_per_task, "test_per_task": args.test_per_task},
             "eval": {"max_new_tokens": args.max_new_tokens, "zero_shot": False}}
    if args.tasks:
        layer["tasks"] = args.tasks.split(",")
    return build_config(DEMO_SETTINGS, layer)


def train(model, examples, cfg, pad_id: int, seed: int) -> float:
    """One epoch of AdamW; the loss is on the answer tokens only (``training_batch`` labels the rest -100)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    model.train()
    for k in range(0, len(order), cfg.batch_size):
        ids, mask, labels = training_batch([examples[j] for j in order[k : k + cfg.batch_size]], pad_id)
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


def main() -> None:
    args = parse_args()
    cfg = settings(args)
    tasks = load_benchmark(cfg)  # the packaged tasks, sampled from the seed
    base, tokenizer = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # LoRA dropout
    accelerator = Accelerator()  # evaluate_task takes one (it splits the test prompts over processes)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora).to(accelerator.device)
    continual = ContinualLoRA(model, method="slao", seed=cfg.seed)

    encoders = [TaskEncoder(tokenizer, task, cfg.data.max_prompt_tokens) for task in tasks]
    accuracy = [[None] * len(tasks) for _ in tasks]  # row i: after task i; column j: task j scored
    for i, (task, encoder) in enumerate(zip(tasks, encoders, strict=True)):
        continual.begin_task()  # SLAO's init for task i (task 1: the LoRA as it is)
        loss = train(model, [encoder.train_example(x) for x in task.train], cfg.train, tokenizer.pad_token_id,
                     seed=cfg.seed * 1000 + i)
        continual.end_task()  # merge: the model now holds the merged LoRA
        for j in range(i + 1):
            prompts = [encoders[j].prompt(x) for x in tasks[j].test]
            accuracy[i][j], _, _ = evaluate_task(accelerator, model, tokenizer, tasks[j], prompts, cfg.eval)
        print(f"after task {i + 1} ({task.name}, last loss {loss:.3f}): "
              + ", ".join(f"{tasks[j].name} {accuracy[i][j]:.1f}" for j in range(i + 1)), flush=True)

    print(results_table({"method": "slao (plain PyTorch loop)", "model": cfg.model, "benchmark": cfg.benchmark,
                         "seed": cfg.seed, "tasks": [t.name for t in tasks], "accuracy": accuracy,
                         "metrics": all_metrics(accuracy)}))
    continual.save_pretrained(args.output)
    print(f"merged adapter: {args.output}  (peft.PeftModel.from_pretrained(base_model, {args.output!r}))")


if __name__ == "__main__":
    main()
