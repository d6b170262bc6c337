"""Reading a safetensors file that may come from elsewhere (an adapter folder, a copied checkpoint).

The header is bounded before anything else is read: its length (the first 8 bytes, a little-endian
u64) must be at most ``MAX_HEADER_BYTES`` and fit in the file; then the header is parsed, and every
tensor entry must have a known dtype, a shape of non-negative integers and data offsets inside the file
that match that shape. Only then are the tensors read. Each failure is one line naming the file and the
part of it at fault, raised as the caller's SlaoError subclass.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from slao.errors import SlaoError
from slao.userfiles import short

MAX_HEADER_BYTES = 100 * 1024 * 1024
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # what a LoRA may hold
INT_DTYPES = ("I8", "I16", "I32", "I64", "U8", "BOOL")  # a method state may also count things


def read_header(path: str | Path, error: type[SlaoError]) -> dict[str, dict]:
    """The tensor entries (name -> {"dtype", "shape", "data_offsets"}) of the safetensors file ``path``,
    each checked against the file; ``__metadata__`` is checked and left out."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise error(f"{path}: header: the file has {size} bytes, too few for a safetensors file")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES:
                raise error(f"{path}: header: its length field says {n} bytes, more than the "
                            f"{MAX_HEADER_BYTES} allowed (not a safetensors file?)")
            if n > size - 8:
                raise error(f"{path}: header: its length field says {n} bytes, but only {size - 8} follow "
                            "(truncated, or not a safetensors file)")
            raw = f.read(n)
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise error(f"{path}: header: not valid JSON ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: header: not a JSON object")
    data_bytes = size - 8 - n
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise error(f"{path}: header: __metadata__ must map names to strings")
            continue
        where = f"{path}: tensor {short(name)}"
        if not isinstance(entry, dict):
            raise error(f"{where}: its header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in ITEM_BYTES:
            raise error(f"{where}: unknown dtype {short(dtype)}")
        if not _counts(shape):
            raise error(f"{where}: shape {short(shape)} is not a list of non-negative integers")
        if not (_counts(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise error(f"{where}: data_offsets {short(offsets)} are not two increasing byte offsets")
        if offsets[1] > data_bytes:
            raise error(f"{where}: data_offsets {offsets} reach past the file's {data_bytes} data bytes "
                        "(truncated or not a safetensors file)")
        if offsets[1] - offsets[0] != math.prod(shape) * ITEM_BYTES[dtype]:
            raise error(f"{where}: {offsets[1] - offsets[0]} data bytes do not hold shape {shape} of {dtype}")
        entries[name] = entry
    return entries


def _counts(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def load_tensors(path: str | Path, error: type[SlaoError]) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` (call ``read_header`` first: that bounds and checks what is read here)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise error(f"{path}: not a valid safetensors file ({' '.join(str(err).split())[:160]})") from None


def non_finite(tensor: torch.Tensor) -> bool:
    """True when a floating tensor holds NaN or an infinity."""
    return tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
