"""Deterministic sampling: caps, a carved test split, and class-balanced train/test draws."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def cap_examples(examples: Sequence[T], n: int | None, seed: int, salt: str) -> list[T]:
    """At most ``n`` of ``examples`` (all when ``n`` is None), drawn without replacement.

    The generator is seeded with the string ``f"{seed}:{salt}"``: string seeds are hashed with SHA-512,
    so the draw does not depend on PYTHONHASHSEED, and each task/split (the salt) gets its own draw.
    """
    items = list(examples)
    if n is None or n >= len(items):
        return items
    if n < 0:
        raise ValueError(f"a cap must be >= 0, got {n}")
    return random.Random(f"{seed}:{salt}").sample(items, n)


def carve_split(
    examples: Sequence[T], fraction: float, seed: int, salt: str, key: Callable[[T], object] | None = None
) -> tuple[list[T], list[T]]:
    """Split ``examples`` into disjoint (kept, held_out) parts, about ``fraction`` of them held out.

    Examples with the same ``key`` (records that share a passage) land on the same side, so a held-out
    passage is never trained on: whole groups, in a seeded order, are held out until the fraction is
    reached, never the last group. Without ``key`` (or with every group of one) exactly
    ``round(fraction * n)`` are held out. Both parts keep the original order; at least one example lands on
    each side when there are two groups.
    """
    items = list(examples)
    groups: dict[object, list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(i if key is None else key(x), []).append(i)
    members = list(groups.values())
    n_out = min(max(1, round(fraction * len(items))), max(0, len(items) - 1))
    order = list(range(len(members)))
    random.Random(f"{seed}:{salt}:carve").shuffle(order)
    out: set[int] = set()
    for g in order[:-1]:
        if len(out) >= n_out:
            break
        out.update(members[g])
    kept = [x for i, x in enumerate(items) if i not in out]
    held = [x for i, x in enumerate(items) if i in out]
    return kept, held


def balanced_split(
    items: Sequence[T],
    label_of: Callable[[T], str],
    seed: int,
    salt: str,
    train_n: int | None,
    test_n: int,
) -> tuple[list[T], list[T]]:
    """Disjoint (train, test) draws with equal counts per class, test drawn first.

    Each class is shuffled by its own generator; draws go round-robin over the classes (sorted by
    name) and, once a class runs out, continue over the others. ``train_n`` None takes everything left.
    """
    pools = _class_pools(items, label_of, seed, salt)
    test = _round_robin(pools, test_n)
    train = _round_robin(pools, train_n)
    return train, test


def _class_pools(items: Sequence[T], label_of: Callable[[T], str], seed: int, salt: str) -> list[deque[T]]:
    by_class: dict[str, list[T]] = {}
    for item in items:
        by_class.setdefault(label_of(item), []).append(item)
    pools = []
    for label in sorted(by_class):
        members = by_class[label]
        # One generator per class, so adding items to one class leaves the others' order unchanged.
        random.Random(f"{seed}:{salt}:{label}").shuffle(members)
        pools.append(deque(members))
    return pools


def _round_robin(pools: list[deque[T]], n: int | None) -> list[T]:
    out: list[T] = []
    while any(pools) and (n is None or len(out) < n):
        for pool in pools:
            if pool and (n is None or len(out) < n):
                out.append(pool.popleft())
    return out
