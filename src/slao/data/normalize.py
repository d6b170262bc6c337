"""Answer normalisation and exact match, as the O-LoRA benchmark scores generated text."""

from __future__ import annotations

import string
from collections.abc import Iterable

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, remove ASCII punctuation, collapse white space and strip."""
    return " ".join(s.lower().translate(_DROP_PUNCTUATION).split())


def exact_match(pred: str, answers: Iterable[str]) -> bool:
    """True when the normalised prediction equals any normalised acceptable answer."""
    norm = normalize_answer(pred)
    return any(norm == normalize_answer(a) for a in answers)
