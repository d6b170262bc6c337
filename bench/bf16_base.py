"""bf16 base weights: slao's training step and evaluation with the frozen base held in bf16 (load_model
dtype=torch.bfloat16, model_dtype: bfloat16; the LoRA stays fp32) against fp32 weights and against fp32
weights under bf16 autocast (train.bf16 / eval.bf16); plus how far bf16 weights move the loss curve and the
greedy answers away from fp32.

    python bench/bf16_base.py                                 # smollm2-135m, 8 x 128 tokens, 64 prompts
    python bench/bf16_base.py --model tiny-random --steps 2 --rounds 1 --curve-steps 3 --prompts 8 --out /tmp/b.json

Timing: each round runs every setting (the order rotates from round to round, so a change in the machine's
load hits all alike): ``--steps`` optimiser steps of slao.train.train_task on synthetic fixed-length
examples (a fresh LoRA each run), then slao.evaluate.generate on the prompts with the same trained LoRA.
Agreement: ``--curve-steps`` steps from the same LoRA init, data order and dropout draws on real packaged
training examples, fp32 against bf16 weights (and fp32 autocast for reference); then the greedy answers of
fp32 and of bf16 weights carrying the very same LoRA tensors (copied with LoraAdapter.get/set).
"""

from __future__ import annotations

import argparse
import math
import time

import _common as C
import torch
from eval_throughput import packaged_prompts

SETTINGS = ("fp32", "fp32-autocast", "bf16-base")  # (weights, autocast): fp32/off, fp32/on, bf16/off
AUTOCAST = {"fp32": False, "fp32-autocast": True, "bf16-base": False}


def packaged_train(tokenizer, n: int, max_prompt_tokens: int):
    """``n`` encoded training examples drawn evenly from the packaged tasks (round robin)."""
    from slao.config import build_config
    from slao.encoding import TaskEncoder
    from slao.tasks import load_benchmark

    per = max(1, math.ceil(n / 4))
    cfg = build_config({"benchmark": "packaged", "data": {"train_per_task": per, "test_per_task": 1,
                                                          "max_prompt_tokens": max_prompt_tokens}})
    per_task = [[TaskEncoder(tokenizer, t, max_prompt_tokens).train_example(x) for x in t.train]
                for t in load_benchmark(cfg)]
    return [e for group in zip(*per_task, strict=False) for e in group][:n]


def loss_curve(loop: C.SlaoLoop, examples, batch: int, lr: float, bf16: bool, seed: int = 0) -> list[float]:
    """The loss of every optimiser step of train_task from PEFT's default init (seed 0); the global RNG is
    reseeded first, so both sides draw the same LoRA dropout masks."""
    from slao.config import TrainConfig
    from slao.train import train_task

    cfg = TrainConfig(lr=lr, batch_size=batch, epochs=1.0, bf16=bf16, log_every=1)
    loop.adapter.set(loop.adapter.default_init(torch.Generator().manual_seed(0)))
    losses: list[float] = []
    torch.manual_seed(seed)
    with C.quiet():
        train_task(loop.accelerator, loop.adapter, loop.method, 1, "curve", examples, cfg, seed, loop.pad_id,
                   lambda record: losses.append(record["loss"]))
    return losses


def curve_diff(ref: list[float], other: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(ref, other, strict=True)]
    return {"max_abs_diff": max(diffs), "mean_rel_diff": sum(d / abs(a) for d, a in zip(diffs, ref, strict=True))
            / len(diffs)}


def timed_generate(model, tok, prompts, cfg) -> tuple[float, list[str]]:
    from slao.evaluate import generate

    start = time.perf_counter()
    answers = generate(model, tok, prompts, cfg, show=False)
    return time.perf_counter() - start, answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-random | a folder")
    p.add_argument("--batch", type=int, default=8, help="examples per optimiser step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per synthetic training example")
    p.add_argument("--answer-len", type=int, default=16, help="trailing tokens of each example in the loss")
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per timed training run")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the three settings (median reported)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each setting before the rounds")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the timed runs")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (q_proj, v_proj)")
    p.add_argument("--prompts", type=int, default=64, help="test prompts (packaged tasks, round robin)")
    p.add_argument("--max-prompt-tokens", type=int, default=96, help="as the demo")
    p.add_argument("--eval-batch", type=int, default=32, help="eval.batch_size")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--curve-steps", type=int, default=12, help="steps of the fp32 / bf16 loss curves")
    p.add_argument("--curve-lr", type=float, default=3e-4, help="learning rate of the curves (the demo's)")
    p.add_argument("--out", default=C.default_out("bf16_base"))
    args = p.parse_args(argv)

    from slao.config import EvalConfig
    from slao.models import load_model

    info = C.machine()
    base32, tok = load_model(args.model, seed=0)
    base16, _ = load_model(args.model, seed=0, dtype=torch.bfloat16)
    loops = {"fp32": C.SlaoLoop(base32, tok.pad_token_id, args.r),
             "bf16-base": C.SlaoLoop(base16, tok.pad_token_id, args.r)}
    loops["fp32-autocast"] = loops["fp32"]  # the same model, autocast on
    lora_dtypes = sorted({str(A.dtype) for A, _ in loops["bf16-base"].adapter.params().values()})
    prompts = packaged_prompts(tok, args.prompts, args.max_prompt_tokens)

    # -- agreement: loss curves from the same init, data order and dropout draws -------------------------
    curve_data = packaged_train(tok, args.batch * args.curve_steps, args.max_prompt_tokens)
    curves, trained = {}, None
    for s in ("fp32", "bf16-base", "fp32-autocast"):
        curves[s] = loss_curve(loops[s], curve_data, args.batch, args.curve_lr, AUTOCAST[s])
        if s == "fp32":
            trained = loops[s].adapter.get()  # fp32's LoRA after the curve (fp32-autocast shares the model)
    # -- agreement: greedy answers, the same LoRA tensors on both bases ---------------------------------
    for s in ("fp32", "bf16-base"):
        loops[s].adapter.set(trained)
    got = {s: loops[s].adapter.get() for s in ("fp32", "bf16-base")}
    if any(not (torch.equal(A, got["bf16-base"][n][0]) and torch.equal(B, got["bf16-base"][n][1]))
           for n, (A, B) in got["fp32"].items()):
        raise RuntimeError("the fp32 and bf16-base LoRAs differ after the copy")
    answers = {s: timed_generate(loops[s].adapter.model, tok, prompts,
                                 EvalConfig(batch_size=args.eval_batch, max_new_tokens=args.max_new_tokens,
                                            bf16=AUTOCAST[s]))[1] for s in SETTINGS}
    differ = {s: [{"prompt": k, "fp32": a, s: b} for k, (a, b) in enumerate(zip(answers["fp32"], answers[s],
                                                                                   strict=True)) if a != b]
              for s in ("bf16-base", "fp32-autocast")}

    # -- timing ----------------------------------------------------------------------------------------
    data = C.synthetic_examples(args.batch * args.steps, args.seq_len, args.answer_len, base32.config.vocab_size)
    warm = data[: args.batch * max(1, args.warmup_steps)]
    eval_cfg = {s: EvalConfig(batch_size=args.eval_batch, max_new_tokens=args.max_new_tokens, bf16=AUTOCAST[s])
                for s in SETTINGS}
    for s in SETTINGS:
        loops[s].run(warm, args.batch, args.lr, AUTOCAST[s])
        loops[s].adapter.set(trained)
        timed_generate(loops[s].adapter.model, tok, prompts[: min(4, len(prompts))], eval_cfg[s])
    rounds = []
    for k in range(args.rounds):
        order = SETTINGS[k % 3 :] + SETTINGS[: k % 3]
        row: dict = {"round": k + 1, "order": list(order)}
        for s in order:
            loops[s].adapter.set(trained)  # every setting answers with the same LoRA
            seconds, _ = timed_generate(loops[s].adapter.model, tok, prompts, eval_cfg[s])
            row[f"{s}_eval_s_per_prompt"] = seconds / len(prompts)
            row[f"{s}_train_s_per_step"] = loops[s].run(data, args.batch, args.lr, AUTOCAST[s]) / args.steps
        rounds.append(row)
    train_med = {s: C.median([r[f"{s}_train_s_per_step"] for r in rounds]) for s in SETTINGS}
    eval_med = {s: C.median([r[f"{s}_eval_s_per_prompt"] for r in rounds]) for s in SETTINGS}
    ratio = {f"{what}_{s}_over_bf16_base": C.median([r[f"{s}_{what}"] / r[f"bf16-base_{what}"] for r in rounds])
             for what in ("train_s_per_step", "eval_s_per_prompt") for s in ("fp32", "fp32-autocast")}

    lengths = [len(x) for x in prompts]
    print(f"model {args.model}; train: batch {args.batch} x {args.seq_len} tokens, {args.steps} steps a run, "
          f"LoRA r={args.r} ({', '.join(lora_dtypes)} on the bf16 base); eval: {len(prompts)} packaged prompts "
          f"({min(lengths)}-{max(lengths)} tokens), batch {args.eval_batch}, {args.max_new_tokens} new tokens; "
          f"{info['nproc']} cores, torch threads {info['torch_threads']}")
    print(C.table(["round", *(f"{s} s/step" for s in SETTINGS), *(f"{s} s/prompt" for s in SETTINGS)],
                  [[r["round"], *(r[f"{s}_train_s_per_step"] for s in SETTINGS),
                    *(r[f"{s}_eval_s_per_prompt"] for s in SETTINGS)] for r in rounds]))
    print(C.table(["median", *SETTINGS, "fp32/bf16-base", "autocast/bf16-base"],
                  [["train s/step", *(train_med[s] for s in SETTINGS), ratio["train_s_per_step_fp32_over_bf16_base"],
                    ratio["train_s_per_step_fp32-autocast_over_bf16_base"]],
                   ["eval s/prompt", *(eval_med[s] for s in SETTINGS), ratio["eval_s_per_prompt_fp32_over_bf16_base"],
                    ratio["eval_s_per_prompt_fp32-autocast_over_bf16_base"]]]))
    print(f"goal fp32 / bf16-base >= 2x: train {ratio['train_s_per_step_fp32_over_bf16_base']:.2f}x, "
          f"eval {ratio['eval_s_per_prompt_fp32_over_bf16_base']:.2f}x")
    print(f"loss curves ({args.curve_steps} steps, batch {args.batch}, lr {args.curve_lr}, packaged training "
          "examples, same init / order / dropout):")
    print(C.table(["step", *curves], [[k + 1, *(f"{curves[s][k]:.5f}" for s in curves)]
                                      for k in range(len(curves["fp32"]))]))
    diffs = {s: curve_diff(curves["fp32"], curves[s]) for s in ("bf16-base", "fp32-autocast")}
    for s, d in diffs.items():
        print(f"  {s} vs fp32: max |diff| {d['max_abs_diff']:.3g}, mean relative diff {d['mean_rel_diff']:.3g}")
    for s, rows in differ.items():
        first = f"; first: {rows[0]}" if rows else ""
        print(f"greedy answers, {s} vs fp32 (same LoRA): {len(rows)} of {len(prompts)} differ{first}")
    C.write_json(args.out, {
        "benchmark": "bf16_base", "machine": info, "settings": vars(args), "lora_dtypes_on_bf16_base": lora_dtypes,
        "rounds": rounds, "median_train_s_per_step": train_med, "median_eval_s_per_prompt": eval_med,
        "ratios": ratio, "loss_curves": curves, "loss_curve_diff_vs_fp32": diffs,
        "answers_differ_vs_fp32": {s: len(rows) for s, rows in differ.items()}, "prompts": len(prompts),
        "answer_mismatch_examples": {s: rows[:10] for s, rows in differ.items()},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
