"""The wheel is the product: built with ``python -m build`` (sdist, then the wheel from the sdist), installed
into a new virtual environment (not editable; torch 2.13.0 first, then the wheel under constraints.txt,
no extras), and run from outside the checkout: ``slao list``, ``slao config``, a tiny-random run, and
``slao report`` refusing figures with the extra to install. A file left out of the package fails here.

Slow (it builds, creates an environment and installs slao's dependencies into it): ``pytest -m slow
tests/test_wheel.py``. Needs the package index for the build back end and the dependencies; on a machine
whose pip has no CPU build of torch 2.13.0 at hand, ``pip install torch==2.13.0`` downloads a CUDA build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from jsonl_tasks import write_jsonl_tasks

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"plots", "hf", "tracking", "trl", "slurm", "dev", "all"}


def _run(cmd, cwd, env, check=True):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-3000:]}")
    return out


@pytest.mark.slow
def test_wheel_builds_installs_and_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               SLAO_CACHE_DIR=str(tmp_path / "cache"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("slao-*.whl")
    (sdist,) = dist.glob("slao-*.tar.gz")

    # Every file of the package source is in the wheel; so are the entry point and the declared metadata.
    source = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "slao").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert source <= names, f"missing from the wheel: {sorted(source - names)}"
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)
    assert "slao = slao.cli:main" in entry_points
    assert "Requires-Python: <3.14,>=3.10" in metadata or "Requires-Python: >=3.10,<3.14" in metadata
    assert {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Provides-Extra:")} == EXTRAS
    with tarfile.open(sdist) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md"} <= members and {f"src/{s}" for s in source} <= members

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    py, slao = venv / "bin" / "python", venv / "bin" / "slao"
    constraints = ROOT / "constraints.txt"
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, "torch==2.13.0"], cwd=tmp_path, env=env)
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, wheel], cwd=tmp_path, env=env)
    where = _run([py, "-c", "import slao, torch; print(slao.__file__); print(torch.__version__)"],
                 cwd=tmp_path, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1].startswith("2.13.0")
    extras_present = _run([py, "-c", "import importlib.util as u; "
                                     "print([m for m in ('matplotlib', 'datasets') if u.find_spec(m)])"],
                          cwd=tmp_path, env=env).stdout.strip()
    assert extras_present == "[]"  # the core install leaves the extras out

    listing = _run([slao, "list"], cwd=tmp_path, env=env).stdout
    assert "slao" in listing and "tiny-random" in listing and "packaged" in listing
    settings = _run([slao, "config"], cwd=tmp_path, env=env).stdout
    assert "train.lr" in settings and "data.train_per_task" in settings

    data = write_jsonl_tasks(tmp_path / "data", ["alpha", "beta"], 8, 4, options=True)
    run = tmp_path / "run"
    _run([slao, "run", "--method", "slao", "--model", "tiny-random", "--benchmark", "jsonl", "--data-dir", data,
          "--tasks", "alpha,beta", "--output", run, "--set", "data.train_per_task=8",
          "--set", "data.test_per_task=4", "--set", "eval.max_new_tokens=4"], cwd=tmp_path, env=env)
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] is True and len(results["accuracy"]) == 2
    assert results["versions"]["git_commit"] is None  # an installed copy is no checkout
    assert (run / "adapter" / "adapter_config.json").is_file()

    report = _run([slao, "report", run], cwd=tmp_path, env=env, check=False)
    assert report.returncode == 2
    assert report.stderr.strip() == ("slao: error: matplotlib is not installed (needed for figures): "
                                     "pip install 'slao[plots]'")
