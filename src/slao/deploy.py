"""Scoring an exported adapter: load a PEFT LoRA folder onto its base model (checked, safetensors only)
and evaluate it on a benchmark's tasks, as a deployed model would answer them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from slao.checkpoint import write_atomic
from slao.config import LoraSettings, RunConfig
from slao.encoding import TaskEncoder
from slao.evaluate import evaluate_task
from slao.lora import LoraAdapter, load_adapter_weights


def evaluate_adapter(cfg: RunConfig, adapter_dir: str | Path, out: str | Path | None = None, echo=print) -> dict:
    """Scores (percent, or ROUGE-L x 100) of the adapter in ``adapter_dir`` on the tasks ``cfg`` names."""
    from slao.harness import make_accelerator
    from slao.models import load_model, model_id
    from slao.tasks import load_benchmark

    base = model_id(cfg.model, seed=cfg.seed)
    config, weights = load_adapter_weights(adapter_dir, base)  # refuses a foreign or broken adapter first
    tasks = load_benchmark(cfg)
    model, tok = load_model(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                            dtype=getattr(torch, cfg.model_dtype))
    rank = next(iter(weights.values()))[0].shape[0]
    settings = LoraSettings(r=rank, alpha=float(config.get("lora_alpha", rank)), dropout=0.0,
                            target_modules=sorted({name.rsplit(".", 1)[-1] for name in weights}))
    accelerator = make_accelerator()
    adapter = LoraAdapter(model.to(accelerator.device), settings)
    load_adapter_weights(adapter_dir, base, adapter.shapes())  # the layers must fit this model
    adapter.set(weights)
    scores, seconds = {}, time.perf_counter()
    for task in tasks:
        prompts = [TaskEncoder(tok, task, cfg.data.max_prompt_tokens).prompt(x) for x in task.test]
        value, _, _ = evaluate_task(accelerator, adapter.model, tok, task, prompts, cfg.eval,
                                    desc=f"eval {task.name}")
        scores[task.name] = value
        echo(f"{task.name}: {value:.1f} ({task.metric}, {len(task.test)} examples)")
    result = {"adapter": str(adapter_dir), "model": base, "benchmark": cfg.benchmark, "seed": cfg.seed,
              "scores": scores, "average": sum(scores.values()) / len(scores),
              "eval_seconds": round(time.perf_counter() - seconds, 3)}
    if out is not None and accelerator.is_main_process:
        write_atomic(Path(out), json.dumps(result, indent=1) + "\n")
    return result
