"""Helpers the benchmark scripts share: the machine's description, result files, tables, synthetic
fixed-length training data, and a timed run of slao's own training loop."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@contextlib.contextmanager
def quiet():
    """Swallow progress bars and log lines (slao's tqdm bar, Trainer's final metrics) while timing;
    they are still drawn, so their cost stays in the figure, but the table stays readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def default_out(name: str) -> str:
    return str(RESULTS / f"{name}.json")


def machine() -> dict:
    """Cores, CPU model, memory, torch threads and accelerator: what the figures depend on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"figures written to {path}")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    """A plain, right-aligned text table (floats with 3 significant digits unless already strings)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[k]) for r in cells)) for k, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values)


def load(name: str):
    from slao.models import load_model

    return load_model(name, seed=0)


def synthetic_examples(n: int, seq_len: int, answer_len: int, vocab: int, seed: int = 0):
    """``n`` training examples of exactly ``seq_len`` tokens, the last ``answer_len`` of them the answer
    (random ids, no special tokens): every batch has the same shape, so no padding is timed."""
    from slao.encoding import Encoded

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (n, seq_len), generator=g).tolist()
    return [Encoded(row[: seq_len - answer_len], row[seq_len - answer_len :]) for row in ids]


def lora_settings(r: int = 8):
    from slao.config import LoraSettings

    return LoraSettings(r=r, alpha=32.0, dropout=0.1, target_modules=["q_proj", "v_proj"])


class SlaoLoop:
    """slao's own training loop (slao.train.train_task) with the slao method on one LoRA."""

    def __init__(self, model, pad_id: int, r: int = 8):
        from accelerate import Accelerator

        from slao.config import MethodConfig
        from slao.lora import LoraAdapter
        from slao.methods import get_method

        self.accelerator = Accelerator()
        self.adapter = LoraAdapter(model.to(self.accelerator.device), lora_settings(r))
        self.method = get_method("slao")(MethodConfig(), self.adapter.shapes(), r)
        self.pad_id = pad_id

    def run(self, examples, batch: int, lr: float, bf16: bool) -> float:
        """Seconds for ``len(examples) / batch`` optimiser steps (task 1: PEFT init, plain LoRA)."""
        from slao.config import TrainConfig
        from slao.train import train_task

        cfg = TrainConfig(lr=lr, batch_size=batch, epochs=1.0, bf16=bf16, log_every=10**9)
        self.adapter.set(self.adapter.default_init(torch.Generator().manual_seed(0)))
        with quiet():
            start = time.perf_counter()
            train_task(self.accelerator, self.adapter, self.method, 1, "bench", examples, cfg, 0, self.pad_id,
                       lambda record: None)
            return time.perf_counter() - start


def linear_params(model) -> int:
    """Weights in linear layers, lm_head included: the matmul FLOPs per token are 2x this (an embedding
    lookup costs none; attention scores are left out)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
