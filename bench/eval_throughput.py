"""Evaluation throughput: slao's batched greedy generation (slao.evaluate.generate, prompts sorted by
length and left-padded) against one ``model.generate`` call per prompt, same prompts and greedy settings,
with the two sets of answers compared.

    python bench/eval_throughput.py                           # smollm2-135m, 64 packaged prompts
    python bench/eval_throughput.py --model tiny-random --prompts 16 --rounds 1
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch


def packaged_prompts(tokenizer, n: int, max_prompt_tokens: int) -> list[list[int]]:
    """``n`` test prompts drawn evenly from the packaged tasks, encoded as a run encodes them."""
    from slao.config import build_config
    from slao.encoding import TaskEncoder
    from slao.tasks import load_benchmark

    cfg = build_config({"benchmark": "packaged", "data": {"train_per_task": 1, "test_per_task": n,
                                                          "max_prompt_tokens": max_prompt_tokens}})
    tasks = load_benchmark(cfg)
    per_task = [[TaskEncoder(tokenizer, t, max_prompt_tokens).prompt(x) for x in t.test] for t in tasks]
    prompts = [p for group in zip(*per_task, strict=False) for p in group]  # round robin over tasks
    return prompts[:n]


@torch.no_grad()
def one_by_one(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, bf16: bool = False) -> list[str]:
    """One generate call per prompt: no padding at all."""
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for p in prompts:
        ids = torch.tensor([p], device=device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-random | a folder")
    p.add_argument("--prompts", type=int, default=64, help="test prompts (packaged tasks, round robin)")
    p.add_argument("--batch-size", type=int, default=32, help="slao's eval.batch_size")
    p.add_argument("--max-new-tokens", type=int, default=5)
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2, help="rounds of batched then one-by-one (median reported)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (eval.bf16)")
    p.add_argument("--out", default=C.default_out("eval_throughput"))
    args = p.parse_args(argv)

    from slao.config import EvalConfig
    from slao.evaluate import generate
    from slao.lora import LoraAdapter

    info = C.machine()
    base, tok = C.load(args.model)
    # The model a run evaluates: the base model under a (fresh, B = 0) PEFT LoRA.
    model = LoraAdapter(base, C.lora_settings()).model
    prompts = packaged_prompts(tok, args.prompts, args.max_prompt_tokens)
    cfg = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, bf16=args.bf16)
    generate(model, tok, prompts[: min(4, len(prompts))], cfg, show=False)  # warm-up, untimed

    rounds, batched, single = [], [], []
    for k in range(args.rounds):
        start = time.perf_counter()
        batched = generate(model, tok, prompts, cfg, show=False)
        b = time.perf_counter() - start
        start = time.perf_counter()
        single = one_by_one(model, tok, prompts, args.max_new_tokens, args.bf16)
        s = time.perf_counter() - start
        rounds.append({"round": k + 1, "batched_seconds": b, "one_by_one_seconds": s,
                       "batched_prompts_per_s": len(prompts) / b, "one_by_one_prompts_per_s": len(prompts) / s})
    speedup = C.median([r["one_by_one_seconds"] / r["batched_seconds"] for r in rounds])
    mismatches = [{"prompt": k, "batched": a, "one_by_one": b}
                  for k, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]

    lengths = [len(x) for x in prompts]
    print(f"model {args.model}, {len(prompts)} prompts ({min(lengths)}-{max(lengths)} tokens), "
          f"batch {args.batch_size}, {args.max_new_tokens} new tokens, greedy, {'bf16' if args.bf16 else 'fp32'}; "
          f"{info['nproc']} cores, torch threads {torch.get_num_threads()}")
    print(C.table(["round", "batched s", "one-by-one s", "speed-up"],
                  [[r["round"], r["batched_seconds"], r["one_by_one_seconds"],
                    r["one_by_one_seconds"] / r["batched_seconds"]] for r in rounds]))
    print(f"median speed-up of batched over one-by-one: {speedup:.2f}x")
    if mismatches:
        # Left padding changes the shapes the kernels sum over, so a near-tie between two logits can
        # resolve differently; the answers are then not bit-identical although both are greedy.
        print(f"answers differ on {len(mismatches)} of {len(prompts)} prompts (padding numerics); first: "
              f"{mismatches[0]}")
    else:
        print(f"answers identical on all {len(prompts)} prompts")
    C.write_json(args.out, {
        "benchmark": "eval_throughput", "machine": info, "settings": vars(args), "rounds": rounds,
        "speedup_batched_over_one_by_one": speedup, "prompts": len(prompts),
        "mismatches": len(mismatches), "mismatch_examples": mismatches[:10],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
