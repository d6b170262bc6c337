"""Per-task checkpoints inside a run folder, written so that a kill at any instant leaves either the
previous checkpoint or the new one, never a broken one; and the checks that refuse a bad one.

Layout: ``RUN/checkpoints/task-NNNN/{state,deploy,rng}.safetensors + progress.json``. A folder gets its
final name by one rename after everything in it is written and flushed, and progress.json holds the
SHA-256 of each tensor file, so a truncated or edited file is refused, not half-loaded. Only
safetensors and JSON are ever read. ``rng.safetensors`` holds the torch RNG states (dropout draws from
them), kept apart from the method state so that the adapter's byte count stays truthful.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from slao.errors import SlaoError
from slao.tensorfile import FLOAT_DTYPES, INT_DTYPES, load_tensors, non_finite, read_header, short

FORMAT = 2
TENSOR_FILES = ("state.safetensors", "deploy.safetensors", "rng.safetensors")
# Tests only: "POINT" or "POINT@TASK" makes save() SIGKILL its own process at POINT (after-state,
# before-rename), to show that a kill in the middle of a write leaves the previous checkpoint usable.
CRASH_ENV = "SLAO_TEST_CRASH_IN_CHECKPOINT"


class CheckpointError(SlaoError):
    """A checkpoint that cannot be used."""


class Loaded(NamedTuple):
    """A verified checkpoint: progress.json's content and the three tensor files."""

    folder: Path
    progress: dict
    state: dict[str, torch.Tensor]
    deploy: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]


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


# -- RNG ----------------------------------------------------------------------------------------------
def rng_state() -> dict[str, torch.Tensor]:
    """The torch CPU generator's state and each CUDA device's, as uint8 tensors."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for k, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda/{k}"] = state
    return out


def pack_rng(per_process: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every process's RNG states (each draws its own dropout masks) as one dict: ``P/torch``, ``P/cuda/K``."""
    return {f"{p}/{k}": v for p, states in enumerate(per_process) for k, v in states.items()}


def unpack_rng(tensors: dict[str, torch.Tensor], process: int) -> dict[str, torch.Tensor]:
    """The states of process ``process`` (those of process 0 when the run had fewer processes)."""
    prefix = f"{process}/" if f"{process}/torch" in tensors else "0/"
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    """Restore what ``rng_state`` returned (CUDA states only where the same devices exist)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda/{k}"] for k in range(len(tensors)) if f"cuda/{k}" in tensors]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


# -- writing ------------------------------------------------------------------------------------------
def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _maybe_crash(point: str, task_index: int) -> None:
    want = os.environ.get(CRASH_ENV)
    if not want:
        return
    name, _, task = want.partition("@")
    if name == point and (not task or int(task) == task_index):
        os.kill(os.getpid(), signal.SIGKILL)


def save(run_dir: Path, task_index: int, progress: dict, state: dict[str, torch.Tensor],
         deploy: dict[str, torch.Tensor], meta: dict[str, str],
         rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint after ``task_index`` (1-based) tasks, then drop older ones.

    ``rng`` (see ``pack_rng``) defaults to this process's current torch RNG states.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"task-{task_index:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files = {"state.safetensors": state, "deploy.safetensors": deploy,
                 "rng.safetensors": rng if rng is not None else pack_rng([rng_state()])}
        digests = {}
        for name, tensors in files.items():
            save_file(_contiguous(tensors), str(tmp / name), metadata=meta)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            digests[name] = _sha256(tmp / name)
            if name == "state.safetensors":
                _maybe_crash("after-state", task_index)
        body = {"format": FORMAT, "tasks_done": task_index, "meta": meta, "sha256": digests, **progress}
        with open(tmp / "progress.json", "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _maybe_crash("before-rename", task_index)
        if final.exists():  # the same task again (never on a plain resume): move it aside, never half-delete
            os.replace(final, Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=root)) / final.name)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("task-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a kill in the middle of an earlier write
        shutil.rmtree(stale, ignore_errors=True)
    return final


# -- reading ------------------------------------------------------------------------------------------
def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (unfinished ``.tmp-*`` writes are ignored), or None."""
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("task-[0-9]*") if p.is_dir()) if root.is_dir() else []
    return found[-1] if found else None


def read_progress(folder: Path) -> dict:
    """progress.json of a checkpoint, checked for format; the tensor files are not read."""
    folder = Path(folder)
    try:
        progress = json.loads((folder / "progress.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {folder} is unreadable ({err}); delete {folder.parent} to start the run over"
        ) from None
    if not isinstance(progress, dict) or progress.get("format") != FORMAT:
        found = progress.get("format") if isinstance(progress, dict) else None
        raise CheckpointError(
            f"checkpoint {folder} has format {found!r}, this slao writes format {FORMAT}; "
            f"delete {folder.parent} to start the run over, or use another --output folder"
        )
    return progress


def check_meta(folder: Path, progress: dict, expect: dict[str, str]) -> None:
    """Refuse a checkpoint written for another method, base model or task list."""
    meta = progress.get("meta") or {}
    for key, value in expect.items():
        if meta.get(key) != value:
            why = " (the task data changed since it was written)" if key == "tasks_sha256" else ""
            raise CheckpointError(
                f"checkpoint {folder} was written for {key} {meta.get(key)!r}, but this run uses "
                f"{value!r}{why}; refusing to load it. Use another --output folder or delete {folder.parent}."
            )


def load(folder: Path, expect: dict[str, str], shapes: dict[str, tuple[int, int]] | None = None) -> Loaded:
    """Read and verify a checkpoint. ``expect`` holds the metadata it must carry (method, base model).

    Besides the checksums (which a checkpoint copied from elsewhere may carry for edited files), each
    tensor file is checked before use: its safetensors header bounded and consistent; LoRA factors and the
    deployed LoRA floating (a method's other state floating or integer) and finite; every ``.../A``
    (r, in) with its ``.../B`` (out, r), and with ``shapes`` (each layer's (out, in) in the model) fitting
    the model; the RNG states bytes of the size torch uses.
    """
    folder = Path(folder)
    progress = read_progress(folder)
    check_meta(folder, progress, expect)
    tensors = []
    for name in TENSOR_FILES:
        path = folder / name
        if not path.is_file() or _sha256(path) != (progress.get("sha256") or {}).get(name):
            raise CheckpointError(
                f"checkpoint file {path} is missing, truncated or changed (its checksum does not match "
                f"progress.json); refusing to load it. Delete {folder.parent} to start the run over."
            )
        header = read_header(path, CheckpointError)
        for key, entry in header.items():
            # LoRA factors and the deployed LoRA are floating; a method's other state may count things
            # (a replay buffer's token ids), so integers are allowed there
            lora = name == "deploy.safetensors" or key.rpartition("/")[2] in ("A", "B", "BA")
            dtypes = ("U8",) if name == "rng.safetensors" else FLOAT_DTYPES if lora else FLOAT_DTYPES + INT_DTYPES
            if entry["dtype"] not in dtypes:
                raise CheckpointError(f"checkpoint file {path}: tensor {short(key)} has dtype {entry['dtype']}, "
                                      f"not {' or '.join(dtypes)}")
        if name != "rng.safetensors":
            _check_lora_shapes(path, {k: e["shape"] for k, e in header.items()}, shapes)
        loaded = load_tensors(path, CheckpointError)
        for key, tensor in loaded.items():
            if non_finite(tensor):
                raise CheckpointError(f"checkpoint file {path}: tensor {short(key)} holds NaN or infinite values")
        tensors.append(loaded)
    rng = folder / "rng.safetensors"
    if "0/torch" not in tensors[2]:
        raise CheckpointError(f"checkpoint file {rng} holds no torch RNG state")
    size = torch.get_rng_state().numel()
    for key, state in tensors[2].items():
        if state.dim() != 1 or (key.endswith("/torch") and state.numel() != size):
            raise CheckpointError(f"checkpoint file {rng}: RNG state {short(key)} has shape {list(state.shape)}, "
                                  f"not that of a torch generator state")
    return Loaded(folder, progress, *tensors)


def _check_lora_shapes(path: Path, shapes_in_file: dict[str, list[int]],
                       model: dict[str, tuple[int, int]] | None) -> None:
    """``PREFIX/LAYER/A`` (r, in) and ``PREFIX/LAYER/B`` (out, r) come in pairs of one rank, a dense
    ``PREFIX/LAYER/BA`` is (out, in); with ``model`` (each layer's (out, in)), a known layer fits it."""
    for key, shape in shapes_in_file.items():
        if key.rpartition("/")[2] in ("A", "B", "BA") and len(shape) != 2:
            raise CheckpointError(f"checkpoint file {path}: tensor {short(key)} has shape {shape}, not a matrix")
    for key, shape in shapes_in_file.items():
        prefix, _, part = key.rpartition("/")
        layer = prefix.partition("/")[2]
        where = f"checkpoint file {path}: tensor {short(key)}"
        if part == "A":
            other = shapes_in_file.get(prefix + "/B")
            if other is None or len(other) != 2 or other[1] != shape[0]:
                raise CheckpointError(f"{where} (r={shape[0]}) has no {prefix}/B of shape (out, {shape[0]})")
        if model is not None and layer in model and part in ("A", "B", "BA"):
            n_out, n_in = model[layer]
            if (part == "A" and shape[1] != n_in) or (part == "B" and shape[0] != n_out) or \
                    (part == "BA" and tuple(shape) != (n_out, n_in)):
                raise CheckpointError(f"{where} has shape {shape}, which does not fit layer {layer} "
                                      f"({n_out}, {n_in}) of the model")
        if part == "B" and shapes_in_file.get(prefix + "/A") is None:
            raise CheckpointError(f"{where} has no {prefix}/A")
