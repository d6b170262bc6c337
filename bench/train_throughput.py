"""Training throughput: slao's loop (slao.train.train_task, slao method) against transformers.Trainer
with a PEFT LoRA on the same model, data, batch, length, steps and LoRA; plus the machine's matmul rate
and the FLOP/s slao's loop achieves.

    python bench/train_throughput.py                          # smollm2-135m, 8 x 128 tokens, fp32
    python bench/train_throughput.py --model tiny-random --steps 3 --rounds 2 --matmul-size 256
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import _common as C
import torch

FLOPS_FORMULA = ("4 * N * tokens / seconds, N = weights in linear layers incl. lm_head (frozen base): "
                 "forward 2N + backward through activations 2N per token, no weight gradients for the "
                 "frozen base; LoRA's own FLOPs and attention scores left out")


def matmul_peak(n: int, dtype: torch.dtype, reps: int) -> float:
    """Best FLOP/s of an n x n @ n x n matmul over ``reps`` timed runs (after one warm-up)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        return self.rows[k]


def trainer_dataset(examples):
    """The same examples as Trainer rows: labels are -100 outside the answer, as in slao's loss."""
    rows = []
    for e in examples:
        ids = torch.tensor(e.prompt + e.answer)
        labels = ids.clone()
        labels[: len(e.prompt)] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return _Rows(rows)


class TrainerLoop:
    """transformers.Trainer on a PEFT LoRA with the fair settings: no evaluation, saving or logging,
    AdamW (torch) at a constant lr, no workers, no reporting."""

    def __init__(self, model, r: int):
        from peft import LoraConfig, get_peft_model

        s = C.lora_settings(r)
        config = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules,
                            bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(model, config)
        self.tmp = tempfile.mkdtemp(prefix="bench-trainer-")

    def run(self, examples, batch: int, lr: float, bf16: bool) -> float:
        from transformers import Trainer, TrainingArguments, default_data_collator

        args = TrainingArguments(
            output_dir=self.tmp, per_device_train_batch_size=batch, max_steps=len(examples) // batch,
            learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
            weight_decay=0.0, max_grad_norm=1.0, bf16=bf16, use_cpu=not torch.cuda.is_available(),
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[],
            dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, seed=0,
        )
        trainer = Trainer(model=self.model, args=args, train_dataset=trainer_dataset(examples),
                          data_collator=default_data_collator)
        with C.quiet():
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-random | a folder")
    p.add_argument("--batch", type=int, default=8, help="examples per optimiser step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (all the same length)")
    p.add_argument("--answer-len", type=int, default=16, help="trailing tokens of each example in the loss")
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per timed run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of slao then Trainer (median reported)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each before the rounds")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--r", type=int, default=8, help="LoRA rank (q_proj, v_proj)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmuls that set the peak")
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--out", default=C.default_out("train_throughput"))
    args = p.parse_args(argv)

    info = C.machine()
    peaks = {name: matmul_peak(args.matmul_size, dtype, args.matmul_reps)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    base, tok = C.load(args.model)
    n_linear = C.linear_params(base)
    other = copy.deepcopy(base)  # Trainer's copy: PEFT wraps a model in place
    slao_loop, trainer_loop = C.SlaoLoop(base, tok.pad_token_id, args.r), TrainerLoop(other, args.r)
    vocab = base.config.vocab_size
    data = C.synthetic_examples(args.batch * args.steps, args.seq_len, args.answer_len, vocab)
    warm = data[: args.batch * max(1, args.warmup_steps)]
    slao_loop.run(warm, args.batch, args.lr, args.bf16)
    trainer_loop.run(warm, args.batch, args.lr, args.bf16)

    tokens = args.batch * args.steps * args.seq_len
    rounds = []
    for k in range(args.rounds):  # alternated, so a change in the machine's load hits both alike
        s = slao_loop.run(data, args.batch, args.lr, args.bf16)
        t = trainer_loop.run(data, args.batch, args.lr, args.bf16)
        rounds.append({"round": k + 1, "slao_seconds": s, "trainer_seconds": t,
                       "slao_tokens_per_s": tokens / s, "trainer_tokens_per_s": tokens / t})
    slao_tps = C.median([r["slao_tokens_per_s"] for r in rounds])
    trainer_tps = C.median([r["trainer_tokens_per_s"] for r in rounds])
    ratio = C.median([r["slao_tokens_per_s"] / r["trainer_tokens_per_s"] for r in rounds])
    peak = peaks["bf16" if args.bf16 else "fp32"]
    achieved = 4 * n_linear * slao_tps

    print(f"model {args.model}, batch {args.batch} x {args.seq_len} tokens, {args.steps} steps a run, "
          f"LoRA r={args.r} on q_proj/v_proj, {'bf16 autocast' if args.bf16 else 'fp32'}; "
          f"{info['nproc']} cores ({info['cpu']}), torch threads {info['torch_threads']}")
    print(C.table(["round", "slao tok/s", "Trainer tok/s", "slao/Trainer"],
                  [[r["round"], r["slao_tokens_per_s"], r["trainer_tokens_per_s"],
                    r["slao_tokens_per_s"] / r["trainer_tokens_per_s"]] for r in rounds]))
    print(f"median: slao {slao_tps:.1f} tok/s, Trainer {trainer_tps:.1f} tok/s, ratio slao/Trainer {ratio:.3f}")
    print(f"matmul peak ({args.matmul_size}x{args.matmul_size}, best of {args.matmul_reps}): "
          f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    print(f"slao achieved {achieved / 1e9:.3g} GFLOP/s = {100 * achieved / peak:.3g}% of the "
          f"{'bf16' if args.bf16 else 'fp32'} matmul peak; N = {n_linear:,} linear weights")
    print(f"formula: {FLOPS_FORMULA}")
    C.write_json(args.out, {
        "benchmark": "train_throughput", "machine": info, "settings": vars(args),
        "tokens_per_run": tokens, "rounds": rounds,
        "median_tokens_per_s": {"slao": slao_tps, "trainer": trainer_tps}, "ratio_slao_over_trainer": ratio,
        "matmul_peak_flops": peaks, "linear_params": n_linear, "slao_achieved_flops": achieved,
        "slao_fraction_of_peak": achieved / peak, "flops_formula": FLOPS_FORMULA,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
