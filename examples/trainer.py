"""SLAO with transformers' ``Trainer``: one ``trainer.train()`` per task, ``ContinualLoRACallback`` around it.

One LoRA learns slao's packaged tasks one after another. The callback puts SLAO's orthogonal init into
the model when training begins and merges the fine-tuned LoRA into the single adapter when it ends. After
every task the model is scored on the tasks seen so far. Tasks, prompts and scoring are slao's own, with
the settings of ``slao demo``, so the numbers read like those of ``slao run --method slao``.

    python examples/trainer.py                      # SmolLM2-135M, 240 train / 64 test examples a task
    python examples/trainer.py --model tiny-random --train-per-task 16 --test-per-task 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from slao import ContinualLoRA, ContinualLoRACallback
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
    p.add_argument("--output", default="runs/example-trainer", help="folder for the merged adapter")
    return p.parse_args()


def settings(args):
    """``slao demo``'s settings (lr 3e-4, batch 8, bf16 training, prompts cut to 96 tokens) with this budget."""
    layer = {"model": args.model, "seed": args.seed,
             "data": {"train_per_task": args.train_per_task, "test_per_task": args.test_per_task},
             "eval": {"max_new_tokens": args.max_new_tokens, "zero_shot": False}}
    if args.tasks:
        layer["tasks"] = args.tasks.split(",")
    return build_config(DEMO_SETTINGS, layer)


def main() -> None:
    args = parse_args()
    cfg = settings(args)
    tasks = load_benchmark(cfg)  # the packaged tasks, sampled from the seed
    base, tokenizer = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # LoRA dropout
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    continual = ContinualLoRA(model, method="slao", seed=cfg.seed)
    callback = ContinualLoRACallback(continual)

    def collate(items):  # prompt + answer ids, right-padded; labels -100 outside the answer
        ids, mask, labels = training_batch(items, tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    training_args = TrainingArguments(
        output_dir=str(Path(args.output) / "trainer"), num_train_epochs=cfg.train.epochs,
        per_device_train_batch_size=cfg.train.batch_size, learning_rate=cfg.train.lr,
        lr_scheduler_type="constant", weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm,
        bf16=cfg.train.bf16, use_cpu=torch.accelerator.current_accelerator() is None, seed=cfg.seed,
        save_strategy="no", report_to="none", logging_steps=10, remove_unused_columns=False)
    encoders = [TaskEncoder(tokenizer, task, cfg.data.max_prompt_tokens) for task in tasks]
    accuracy = [[None] * len(tasks) for _ in tasks]  # row i: after task i; column j: task j scored
    for i, (task, encoder) in enumerate(zip(tasks, encoders, strict=True)):
        trainer = Trainer(model=model, args=training_args, data_collator=collate, callbacks=[callback],
                          train_dataset=[encoder.train_example(x) for x in task.train])
        trainer.train()  # the callback: SLAO's init when training begins, the merge when it ends
        for j in range(i + 1):
            prompts = [encoders[j].prompt(x) for x in tasks[j].test]
            accuracy[i][j], _, _ = evaluate_task(trainer.accelerator, model, tokenizer, tasks[j], prompts, cfg.eval)
        print(f"after task {i + 1} ({task.name}): "
              + ", ".join(f"{tasks[j].name} {accuracy[i][j]:.1f}" for j in range(i + 1)), flush=True)

    print(results_table({"method": "slao (transformers Trainer)", "model": cfg.model, "benchmark": cfg.benchmark,
                         "seed": cfg.seed, "tasks": [t.name for t in tasks], "accuracy": accuracy,
                         "metrics": all_metrics(accuracy)}))
    continual.save_pretrained(args.output)
    print(f"merged adapter: {args.output}  (peft.PeftModel.from_pretrained(base_model, {args.output!r}))")


if __name__ == "__main__":
    main()
