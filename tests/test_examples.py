"""The scripts in examples/ run as a user runs them (a subprocess, on the tiny model, two tasks, a few
examples a task): each exits 0, prints the accuracy matrix, and saves a merged adapter that plain
``PeftModel.from_pretrained`` loads."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import slao
from slao.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(slao.__file__).resolve().parents[1]  # the slao these tests import, handed to the scripts
TASKS = ["word-polarity", "rt-sentiment"]  # short prompts: the fastest packaged tasks
HAS_TRL = importlib.util.find_spec("trl") is not None


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", [
    "plain_loop.py",
    "trainer.py",
    pytest.param("sft_trainer.py", marks=pytest.mark.skipif(
        not HAS_TRL, reason="trl is not installed (an optional extra: pip install 'slao[trl]')")),
])
def test_example_trains_scores_and_saves(script, tmp_path):
    out = tmp_path / "adapter"
    proc = run_script(script, "--model", "tiny-random", "--tasks", ",".join(TASKS), "--train-per-task", "8",
                      "--test-per-task", "2", "--max-new-tokens", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the accuracy matrix: row 1 scores task 1 only, row 2 both tasks; then the metrics
    lines = proc.stdout.splitlines()
    assert any(line.startswith("accuracy (%)") for line in lines), proc.stdout
    cell = r"\s+\d+\.\d"
    assert any(re.fullmatch(rf"1\. {TASKS[0]}{cell}\s+-", line) for line in lines), proc.stdout
    assert any(re.fullmatch(rf"2\. {TASKS[1]}{cell}{cell}", line) for line in lines), proc.stdout
    assert any(re.match(r"metrics: AA \d+\.\d, BWT -?\d+\.\d, F -?\d+\.\d", line) for line in lines), proc.stdout
    # the merged adapter: a PEFT folder that loads as it is, holding a trained LoRA
    saved = load_file(str(out / "adapter_model.safetensors"))
    b_keys = [k for k in saved if "lora_B" in k]
    assert b_keys and any(saved[k].abs().sum() > 0 for k in b_keys)  # B starts at zero: it was trained
    base, _ = load_model("tiny-random", seed=0)
    model = PeftModel.from_pretrained(base, str(out))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], value), key


def test_sft_example_without_trl_says_how_to_install():
    code = ("import runpy, sys; sys.modules['trl'] = None; sys.argv = ['sft_trainer.py']; "
            "runpy.run_path('examples/sft_trainer.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "examples/sft_trainer.py needs TRL: pip install 'slao[trl]'"
