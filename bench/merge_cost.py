"""What SLAO adds per task: orthogonal_init + merge over every target layer of a Llama-2-7B-shaped model
(random tensors), timed against one training step of a model that is measured here (or given).

    python bench/merge_cost.py                                 # 32 layers x q/v 4096x4096, r=8 vs smollm2-135m
    python bench/merge_cost.py --step-seconds 4.5              # skip the step measurement
    python bench/merge_cost.py --layers 4 --dim 512 --step-model tiny-random --step-batch 4 --step-seq-len 32
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch


def random_loras(layers: int, dim: int, r: int, seed: int = 0):
    """name -> (A (r, dim), B (dim, r)) for q_proj and v_proj of every layer (square projections)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in range(layers):
        for proj in ("q_proj", "v_proj"):
            out[f"model.layers.{k}.self_attn.{proj}"] = (torch.randn(r, dim, generator=g) / dim**0.5,
                                                         torch.randn(dim, r, generator=g) / r**0.5)
    return out


def slao_between_tasks(merged, trained, i: int) -> float:
    """Seconds for what SlaoMethod does around task i: the merge after task i-1's training (here:
    ``trained``) and the orthogonal init of task i from the fine-tuned A, over every layer."""
    from slao.methods.slao import merge, orthogonal_init

    start = time.perf_counter()
    new_merged = {}
    for name, (A_ft, B_ft) in trained.items():
        A_m, B_m = merged[name]
        new_merged[name] = merge(A_m, B_m, A_ft, B_ft, i)
        orthogonal_init(A_ft)
    return time.perf_counter() - start


def measure_step(model_name: str, batch: int, seq_len: int, steps: int, bf16: bool) -> float:
    """Seconds per optimiser step of slao's loop: (time of 1 + steps) - (time of 1), over steps, so the
    loop's once-per-task set-up (Accelerate's prepare, freeing memory) is left out."""
    base, tok = C.load(model_name)
    loop = C.SlaoLoop(base, tok.pad_token_id)
    data = C.synthetic_examples(batch * (steps + 1), seq_len, 16, base.config.vocab_size)
    loop.run(data[:batch], batch, 1e-4, bf16)  # warm-up
    one = loop.run(data[:batch], batch, 1e-4, bf16)
    return max(loop.run(data, batch, 1e-4, bf16) - one, 1e-9) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-2-7B: 32)")
    p.add_argument("--dim", type=int, default=4096, help="hidden size; q_proj and v_proj are dim x dim")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of the whole merge (median)")
    p.add_argument("--step-seconds", type=float, help="a training step's seconds (skips measuring one)")
    p.add_argument("--step-model", default="smollm2-135m", help="model whose training step is measured")
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--step-seq-len", type=int, default=128)
    p.add_argument("--step-count", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the measured step")
    p.add_argument("--out", default=C.default_out("merge_cost"))
    args = p.parse_args(argv)

    info = C.machine()
    merged = random_loras(args.layers, args.dim, args.r, seed=1)
    trained = random_loras(args.layers, args.dim, args.r, seed=2)
    slao_between_tasks(merged, trained, 2)  # warm-up (LAPACK's first call allocates)
    times = [slao_between_tasks(merged, trained, 2 + k) for k in range(args.reps)]
    merge_s = C.median(times)
    if args.step_seconds is not None:
        step_s, step_from = args.step_seconds, "given (--step-seconds)"
    else:
        step_s = measure_step(args.step_model, args.step_batch, args.step_seq_len, args.step_count, args.bf16)
        step_from = (f"measured: {args.step_model}, batch {args.step_batch} x {args.step_seq_len} tokens, "
                     f"{'bf16' if args.bf16 else 'fp32'}, mean of {args.step_count} steps, set-up excluded")
    state_mb = 2 * sum(A.numel() + B.numel() for A, B in merged.values()) * 4 / 2**20

    print(f"{2 * args.layers} target layers ({args.layers} x q_proj/v_proj, {args.dim}x{args.dim}), r={args.r}; "
          f"SLAO state (merged + last fine-tuned LoRA, fp32) {state_mb:.1f} MiB; {info['nproc']} cores")
    print(C.table(["what", "seconds"], [
        [f"orthogonal_init + merge, all layers (median of {args.reps})", merge_s],
        [f"one training step ({step_from})", step_s],
        ["ratio merge / step", merge_s / step_s],
    ]))
    C.write_json(args.out, {
        "benchmark": "merge_cost", "machine": info, "settings": vars(args), "merge_seconds": times,
        "merge_seconds_median": merge_s, "step_seconds": step_s, "step_from": step_from,
        "ratio_merge_over_step": merge_s / step_s, "state_mib": state_mb,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
