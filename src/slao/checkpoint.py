"""Per-task checkpoints inside a run folder, written so that a kill at any instant leaves either the
previous checkpoint or the new one, never a broken one; and the checks that refuse a bad one.

Layout: ``RUN/checkpoints/task-NNNN/{state.safetensors, deploy.safetensors, progress.json}``. A folder
gets its final name by one rename after everything in it is written and flushed, and progress.json
holds the SHA-256 of each tensor file, so a truncated or edited file is refused, not half-loaded.
Only safetensors and JSON are ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slao.errors import SlaoError

FORMAT = 1


class CheckpointError(SlaoError):
    """A checkpoint that cannot be used."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file by temporary name, flush, rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save(run_dir: Path, task_index: int, progress: dict, state: dict[str, torch.Tensor],
         deploy: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write the checkpoint after ``task_index`` (1-based) tasks, then drop older ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"task-{task_index:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files = {"state.safetensors": state, "deploy.safetensors": deploy}
        digests = {}
        for name, tensors in files.items():
            save_file(_contiguous(tensors), str(tmp / name), metadata=meta)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            digests[name] = _sha256(tmp / name)
        body = {"format": FORMAT, "tasks_done": task_index, "meta": meta, "sha256": digests, **progress}
        with open(tmp / "progress.json", "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a rerun of the same task after a kill between rename and clean-up
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("task-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("task-*") if p.is_dir()) if root.is_dir() else []
    return found[-1] if found else None


def load(folder: Path, expect: dict[str, str]) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint. ``expect`` holds the metadata it must carry (method, base model).

    Returns (progress, state tensors, deploy tensors).
    """
    folder = Path(folder)
    try:
        progress = json.loads((folder / "progress.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {folder} is unreadable ({err}); delete it to start over") from None
    if progress.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {folder} has format {progress.get('format')}, expected {FORMAT}")
    meta = progress.get("meta", {})
    for key, value in expect.items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"checkpoint {folder} was written for {key} {meta.get(key)!r}, but this run uses "
                f"{value!r}; refusing to load it. Use another --output folder or delete the checkpoint."
            )
    tensors = []
    for name in ("state.safetensors", "deploy.safetensors"):
        path = folder / name
        if not path.exists() or _sha256(path) != progress.get("sha256", {}).get(name):
            raise CheckpointError(
                f"checkpoint file {path} is missing, truncated or changed (its checksum does not match "
                "progress.json); refusing to load it. Delete the checkpoint folder to start that task over."
            )
        try:
            tensors.append(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"checkpoint file {path} is not valid safetensors: {err}") from None
    return progress, tensors[0], tensors[1]
