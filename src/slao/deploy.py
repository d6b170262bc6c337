"""Deployment: scoring an exported adapter (a PEFT LoRA folder loaded onto its base model, checked,
safetensors only) on a benchmark's tasks, and folding a run's final LoRA into its base model's weights
for servers and libraries that know no LoRA."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from slao.checkpoint import write_atomic
from slao.config import LoraSettings, RunConfig
from slao.encoding import TaskEncoder
from slao.errors import SlaoError
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


class ExportError(SlaoError):
    """A run that cannot be exported, or an output folder that must not be written."""


DTYPES = ("float32", "bfloat16", "float16")


def _run_config(run: Path) -> RunConfig:
    from slao.config import build_config, read_yaml

    if not (run / "config.yaml").is_file():
        raise ExportError(f"{run} is not a run folder (no config.yaml)")
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise ExportError(f"{run} has no exported adapter ({run / 'adapter'}): the run has not finished; "
                          f"finish it with: slao run --resume {run}")
    return build_config(read_yaml(run / "config.yaml"))


def _run_method(run: Path) -> str | None:
    try:
        return json.loads((run / "results.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return None


def _check_output(run: Path, out: Path, force: bool) -> None:
    """Refuse an OUT that holds something (unless ``force``), and one that is the run or lies inside it or
    holds it (replacing it would delete the run)."""
    run_abs, out_abs = run.resolve(), out.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents or out_abs in run_abs.parents:
        raise ExportError(f"the export folder {out} must lie outside the run folder {run}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty; give another folder, or --force to replace it")


def merge_into_base(run: str | Path, out: str | Path, force: bool = False, dtype: str | None = None,
                    echo=print) -> Path:
    """Fold the final LoRA of the run in ``run`` (RUN/adapter: the merged LoRA for SLAO) into its base model
    and save the result in ``out`` as a plain transformers model folder: config, safetensors weights,
    generation config and tokenizer, which ``AutoModelForCausalLM.from_pretrained(out)`` loads with no PEFT.

    The fold is PEFT's ``merge_and_unload`` (W = W0 + (alpha / r) B A on every target layer), done in
    ``dtype`` (default: the run's ``model_dtype``), which is also the dtype of the saved weights. The folder
    is written under a temporary name and renamed into place; ``force`` replaces an existing ``out``."""
    from peft import PeftModel

    from slao.models import load_model, model_id

    run, out = Path(run), Path(out)
    cfg = _run_config(run)
    _check_output(run, out, force)
    dtype = dtype or cfg.model_dtype
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    base = model_id(cfg.model, seed=cfg.seed)
    adapter_dir = run / "adapter"
    config, _ = load_adapter_weights(adapter_dir, base)  # refuses a foreign, broken or non-safetensors adapter
    echo(f"loading {cfg.model} ({dtype}) and folding {adapter_dir} (rank {config.get('r')}) into it")
    model, tokenizer = load_model(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                                  dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload(safe_merge=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if not (list(tmp.glob("*.safetensors")) and (tmp / "config.json").is_file()):
            raise RuntimeError(f"transformers did not write a complete model into {tmp}")
        provenance = {"run": str(run.resolve()), "base_model": base, "method": _run_method(run),
                      "adapter_rank": config.get("r"), "dtype": dtype}
        (tmp / "slao_export.json").write_text(json.dumps(provenance, indent=1) + "\n")
        if out.exists():  # --force: the old folder goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    echo(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return out
