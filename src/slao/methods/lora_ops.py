"""LoRA weights as plain tensors, and the helpers every method shares (a leaf: it imports no method).

``LoraWeights`` maps a target layer's name to its pair (A (r, in), B (out, r)); the layer computes
``W x + s * B @ A x`` with s = alpha / r fixed by the adapter, so methods work with ``B @ A`` directly.
"""

from __future__ import annotations

import torch

LoraWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


def clone_lora(weights: LoraWeights) -> LoraWeights:
    return {name: (A.clone(), B.clone()) for name, (A, B) in weights.items()}


def flatten(prefix: str, weights: LoraWeights) -> dict[str, torch.Tensor]:
    """{name: (A, B)} -> {"prefix/name/A": A, "prefix/name/B": B} (for checkpoints)."""
    out = {}
    for name, (A, B) in weights.items():
        out[f"{prefix}/{name}/A"] = A
        out[f"{prefix}/{name}/B"] = B
    return out


def unflatten(prefix: str, tensors: dict[str, torch.Tensor]) -> LoraWeights:
    """The inverse of ``flatten`` for one prefix; other keys are ignored."""
    out: LoraWeights = {}
    start = prefix + "/"
    for key in tensors:
        if key.startswith(start) and key.endswith("/A"):
            name = key[len(start) : -2]
            out[name] = (tensors[key], tensors[f"{start}{name}/B"])
    return out


def flatten_dense(prefix: str, dense: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: tensor} -> {"prefix/name": tensor}."""
    return {f"{prefix}/{name}": t for name, t in dense.items()}


def unflatten_dense(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def stack_loras(old: LoraWeights, new: LoraWeights) -> LoraWeights:
    """Append ``new``'s rank components after ``old``'s: A rows (k + r, in), B columns (out, k + r).
    With the scale fixed, the stack computes exactly the sum of the LoRAs it holds."""
    if not old:
        return clone_lora(new)
    return {name: (torch.cat([A, new[name][0]], 0), torch.cat([B, new[name][1]], 1))
            for name, (A, B) in old.items()}


def dense_update(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """B @ A (out, in): the update a LoRA adds to its layer, divided by the scale s."""
    return B @ A


def factorize(dense: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dense (out, in) -> (A (rank, in), B (out, rank)) with B @ A == dense up to rounding.

    SVD dense = U diag(S) Vh: A = Vh, B = U * S. Components past min(out, in) are zero, so padding to a
    common rank changes nothing; a ``rank`` below min(out, in) keeps the top components (the best
    approximation of that rank).
    """
    U, S, Vh = torch.linalg.svd(dense.to(torch.float64), full_matrices=False)  # k = min(out, in)
    k = min(S.shape[0], rank)
    A = torch.zeros(rank, dense.shape[1], dtype=torch.float64)
    B = torch.zeros(dense.shape[0], rank, dtype=torch.float64)
    A[:k] = Vh[:k]
    B[:, :k] = U[:, :k] * S[:k]
    return A.to(dense.dtype), B.to(dense.dtype)


def full_rank(shapes: dict[str, tuple[int, int]], fallback: int) -> int:
    """The rank that holds any dense update of every layer exactly: the largest min(out, in)."""
    return max(min(shape) for shape in shapes.values()) if shapes else fallback


def tensors_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def flatten_list(loras: list[LoraWeights]) -> dict[str, torch.Tensor]:
    """One LoRA per task, in order -> {"task0000/name/A": ..., ...} (for methods that keep every task's)."""
    out: dict[str, torch.Tensor] = {}
    for j, lora in enumerate(loras):
        out.update(flatten(f"task{j:04d}", lora))
    return out


def unflatten_list(tensors: dict[str, torch.Tensor]) -> list[LoraWeights]:
    """The inverse of ``flatten_list``."""
    count = len({key.split("/", 1)[0] for key in tensors if key.startswith("task")})
    return [unflatten(f"task{j:04d}", tensors) for j in range(count)]
