"""Answer normalisation and exact match, as the O-LoRA benchmark scores generated text."""

from __future__ import annotations

import string
from collections.abc import Iterable

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, remove ASCII punctuation, collapse white space and strip."""
    return " ".join(s.lower().translate(_DROP_PUNCTUATION).split())


def exact_match(pred: str, answers: Iterable[str]) -> bool:
    """True when the normalised prediction equals any normalised acceptable answer.

    An answer that normalises to "" (MNLI's "-") never matches: else an empty generation would score on it.
    """
    norm = normalize_answer(pred)
    return any(norm == ref for ref in map(normalize_answer, answers) if ref)


def usable_answers(answers: Iterable[str], options: Iterable[str] | None) -> tuple[str, ...]:
    """The answers that a prediction can be scored against: non-empty once normalised and, for an option
    task, one of the options (compared normalised, as exact match compares). Empty: the record has none."""
    allowed = None if options is None else {normalize_answer(o) for o in options}
    return tuple(
        a for a in answers
        if (norm := normalize_answer(a)) and (allowed is None or norm in allowed)
    )


def has_answer(answer: str) -> bool:
    """False for an answer that normalises to "" ("-", "..."): a record holding only such answers has none."""
    return bool(normalize_answer(answer))
