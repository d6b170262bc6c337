"""Evaluation cost against its floor: seconds per test example of slao's greedy evaluation
(slao.evaluate.generate) against one forward pass over the same prompts, batched and left-padded the same
way (sorted by length, longest first), with the mean number of tokens generated per answer.

    python bench/eval_cost.py                                 # smollm2-135m, bbc-topic + rt-sentiment, 64 each
    python bench/eval_cost.py --model tiny-random --test-per-task 8 --batch 4 --rounds 1 --out /tmp/e.json

The floor is ``model(input_ids, attention_mask)`` under torch.no_grad: logits at every prompt position.
A second floor keeps only the last position's logits (``logits_to_keep=1``, what generate's first step
computes), the vocabulary projection of the other positions being work that generation never does.
The model is the one a run evaluates: the base under a fresh (B = 0) PEFT LoRA.
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch

KINDS = ("generate", "forward", "forward_last")


def task_prompts(tokenizer, tasks: list[str], test_per_task: int, max_prompt_tokens: int) -> list[list[int]]:
    """The test prompts of ``tasks`` (packaged benchmark), encoded as a run encodes them, task after task."""
    from slao.config import build_config
    from slao.encoding import TaskEncoder
    from slao.tasks import load_benchmark

    cfg = build_config({"benchmark": "packaged", "tasks": tasks,
                        "data": {"train_per_task": 1, "test_per_task": test_per_task,
                                 "max_prompt_tokens": max_prompt_tokens}})
    return [TaskEncoder(tokenizer, t, max_prompt_tokens).prompt(x) for t in load_benchmark(cfg) for x in t.test]


def batches(prompts: list[list[int]], size: int) -> list[list[int]]:
    """Index batches as slao.evaluate.generate forms them: sorted by length, longest first."""
    order = sorted(range(len(prompts)), key=lambda k: -len(prompts[k]))
    return [order[k : k + size] for k in range(0, len(order), size)]


@torch.no_grad()
def forward_pass(model, pad_id: int, prompts, size: int, last_only: bool) -> float:
    """Seconds for one forward pass over every prompt, in generate's batches."""
    from slao.evaluate import left_pad

    model.eval()
    device = next(model.parameters()).device
    padded = [tuple(t.to(device) for t in left_pad([prompts[k] for k in b], pad_id)) for b in batches(prompts, size)]
    extra = {"logits_to_keep": 1} if last_only else {}
    start = time.perf_counter()
    for ids, mask in padded:
        model(input_ids=ids, attention_mask=mask, **extra)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class TokenCount:
    """Wraps slao.evaluate._greedy to count the tokens each answer generated (up to and including its
    end-of-sequence token) and the decoding steps each batch ran; the counting is a few tensor operations
    per batch, negligible beside generation."""

    def __init__(self, eos_id: int):
        import slao.evaluate as ev

        self.ev, self.inner, self.eos = ev, ev._greedy, eos_id
        self.answers: list[int] = []
        self.steps: list[int] = []

    def __enter__(self):
        def counted(model, tokenizer, ids, mask, max_new_tokens):
            out = self.inner(model, tokenizer, ids, mask, max_new_tokens)
            new = out[:, ids.shape[1] :]
            ended = new == self.eos
            first = torch.where(ended.any(1), ended.int().argmax(1) + 1, torch.full_like(ended[:, 0], new.shape[1],
                                                                                          dtype=torch.long))
            self.answers += first.tolist()
            self.steps.append(new.shape[1])
            return out

        self.ev._greedy = counted
        return self

    def __exit__(self, *exc):
        self.ev._greedy = self.inner
        return False


def main(argv=None) -> int:
    from slao.config import EvalConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-random | a folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="frozen base weights")
    p.add_argument("--tasks", default="bbc-topic,rt-sentiment", help="packaged tasks, comma-separated")
    p.add_argument("--test-per-task", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=96, help="as the demo")
    p.add_argument("--batch", type=int, default=EvalConfig().batch_size, help="eval.batch_size")
    p.add_argument("--max-new-tokens", type=int, default=12, help="the demo's eval.max_new_tokens")
    p.add_argument("--rounds", type=int, default=3, help="rounds of generate / forward / last-logit forward")
    p.add_argument("--out", default=C.default_out("eval_cost"))
    args = p.parse_args(argv)

    from slao.evaluate import generate
    from slao.lora import LoraAdapter
    from slao.models import load_model

    info = C.machine()
    base, tok = load_model(args.model, seed=0, dtype=getattr(torch, args.dtype))
    model = LoraAdapter(base, C.lora_settings()).model
    prompts = task_prompts(tok, args.tasks.split(","), args.test_per_task, args.max_prompt_tokens)
    cfg = EvalConfig(batch_size=args.batch, max_new_tokens=args.max_new_tokens)
    warm = prompts[: min(4, len(prompts))]
    generate(model, tok, warm, cfg, show=False)  # warm-up, untimed
    forward_pass(model, tok.pad_token_id, warm, args.batch, False)

    def run(kind: str) -> float:
        if kind == "generate":
            start = time.perf_counter()
            generate(model, tok, prompts, cfg, show=False)
            return time.perf_counter() - start
        return forward_pass(model, tok.pad_token_id, prompts, args.batch, kind == "forward_last")

    rounds = []
    counter = TokenCount(tok.eos_token_id)
    for k in range(args.rounds):  # the order rotates, so a change in the machine's load hits all alike
        row: dict = {"round": k + 1}
        for kind in KINDS[k % 3 :] + KINDS[: k % 3]:
            if kind == "generate" and k == 0:
                with counter:
                    row[kind] = run(kind) / len(prompts)
            else:
                row[kind] = run(kind) / len(prompts)
        row["ratio_generate_over_forward"] = row["generate"] / row["forward"]
        row["ratio_generate_over_forward_last"] = row["generate"] / row["forward_last"]
        rounds.append(row)
    med = {kind: C.median([r[kind] for r in rounds]) for kind in KINDS}
    ratio = C.median([r["ratio_generate_over_forward"] for r in rounds])
    ratio_last = C.median([r["ratio_generate_over_forward_last"] for r in rounds])
    mean_tokens = sum(counter.answers) / len(counter.answers)
    mean_steps = sum(counter.steps) / len(counter.steps)

    lengths = [len(x) for x in prompts]
    print(f"model {args.model} ({args.dtype} base), tasks {args.tasks}: {len(prompts)} prompts "
          f"({min(lengths)}-{max(lengths)} tokens, mean {sum(lengths) / len(lengths):.1f}), batch {args.batch}, "
          f"max {args.max_new_tokens} new tokens, greedy; {info['nproc']} cores, "
          f"torch threads {info['torch_threads']}")
    print(C.table(["round", "generate s/ex", "forward s/ex", "fwd last-logit s/ex", "gen/fwd", "gen/fwd-last"],
                  [[r["round"], r["generate"], r["forward"], r["forward_last"], r["ratio_generate_over_forward"],
                    r["ratio_generate_over_forward_last"]] for r in rounds]))
    print(f"median s per example: generate {med['generate']:.4g}, forward {med['forward']:.4g}, "
          f"forward with last-position logits {med['forward_last']:.4g}")
    print(f"generate / forward {ratio:.2f}x (goal <= 1.5x); generate / last-logit forward {ratio_last:.2f}x")
    print(f"tokens generated per answer: mean {mean_tokens:.2f} (incl. end-of-sequence; max "
          f"{args.max_new_tokens}); decoding steps per batch: mean {mean_steps:.2f} over {len(counter.steps)} "
          "batches")
    C.write_json(args.out, {
        "benchmark": "eval_cost", "machine": info, "settings": vars(args), "prompts": len(prompts),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "rounds": rounds, "median_s_per_example": med, "ratio_generate_over_forward": ratio,
        "ratio_generate_over_forward_last": ratio_last, "mean_generated_tokens_per_answer": mean_tokens,
        "mean_decode_steps_per_batch": mean_steps, "generated_tokens_per_answer": counter.answers,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
