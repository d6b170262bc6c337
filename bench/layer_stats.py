"""The layer-input statistics pass that InfLoRA, CorDA and LoRM run around every task (sum over real
tokens of x x^T per LoRA layer, float64), timed as slao runs it (layers fed one tensor, q_proj and v_proj,
share one product) against one product per layer, side by side in one process, and checked equal.

    python bench/layer_stats.py                               # smollm2-135m, 96 examples of 160 tokens
    python bench/layer_stats.py --model tiny-random --examples 8 --seq-len 32 --reps 2
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch


def per_layer_products(data, targets) -> dict[str, torch.Tensor]:
    """The same statistics with a product of its own for every layer (what slao computed before sharing)."""
    sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in targets.items()}
    current = {}

    def hook(name):
        def collect(module, args):
            x = args[0].detach().to(torch.float64)[current["mask"]]
            sums[name] += x.T @ x
        return collect

    model = data.adapter.model
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
    try:
        model.eval()
        with torch.no_grad():
            for ids, mask, _ in data.batches("current", None):
                current["mask"] = mask.bool()
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return sums


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=96, help="examples in the pass (method.stats_examples)")
    p.add_argument("--seq-len", type=int, default=160, help="tokens an example")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each, alternating (median)")
    p.add_argument("--out", default=C.default_out("layer_stats"))
    args = p.parse_args(argv)

    from slao.lora import LoraAdapter
    from slao.taskdata import TaskData

    info = C.machine()
    base, tok = C.load(args.model)
    adapter = LoraAdapter(base, C.lora_settings())
    examples = C.synthetic_examples(args.examples, args.seq_len, 16, base.config.vocab_size)
    data = TaskData(adapter, torch.device("cpu"), [examples], 1, tok.pad_token_id, max_examples=args.examples,
                    batch_size=args.batch)
    targets = adapter.base_layers()
    with torch.no_grad():  # the forward passes alone, for the share of the pass the products take
        start = time.perf_counter()
        for ids, mask, _ in data.batches("current", None):
            adapter.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        forward_s = time.perf_counter() - start
    shared_t, own_t = [], []
    for _ in range(args.reps):
        start = time.perf_counter()
        shared, _ = data.layer_inputs("current")
        shared_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        own = per_layer_products(data, targets)
        own_t.append(time.perf_counter() - start)
    equal = all(torch.equal(shared[n], own[n]) for n in targets)
    shared_s, own_s = C.median(shared_t), C.median(own_t)

    print(f"{args.model}: {len(targets)} LoRA layers (q_proj/v_proj), {args.examples} examples x {args.seq_len} "
          f"tokens, batch {args.batch}; {info['nproc']} cores, {info['torch_threads']} torch threads")
    print(C.table(["what", "seconds"], [
        ["forward passes alone", forward_s],
        [f"statistics, shared products (slao; median of {args.reps})", shared_s],
        [f"statistics, a product per layer (median of {args.reps})", own_s],
        ["ratio per-layer / shared", own_s / shared_s],
    ]))
    print(f"identical statistics: {equal}")
    C.write_json(args.out, {
        "benchmark": "layer_stats", "machine": info, "settings": vars(args), "forward_seconds": forward_s,
        "shared_seconds": shared_t, "per_layer_seconds": own_t, "shared_seconds_median": shared_s,
        "per_layer_seconds_median": own_s, "ratio_per_layer_over_shared": own_s / shared_s, "identical": equal,
    })
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
