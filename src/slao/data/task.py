"""The task and example types that every data source produces and the rest of slao consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from slao.errors import ConfigError, DataError

# Reading-comprehension records are labelled fields: a long passage and a short question (MultiRC
# "paragraph: ...\nquestion: ...\ncandidate answer: ...", BoolQ "question: ...\npassage: ...", SuperNI's
# "Passage: ...\nQuestion: ..." and "story: ...\n selected sentence: ..."). The passage runs from its
# label to the next question-side label (or the end of the text).
_PASSAGE_LABEL = re.compile(r"(?:^|\n)[ \t]*(?:paragraph|passage|story|context|article)[ \t]*:", re.IGNORECASE)
_QUESTION_LABEL = re.compile(
    r"\n[ \t]*(?:question|candidate answer|answer|selected sentence|hypothesis)[ \t]*:", re.IGNORECASE)


def passage_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the labelled passage in ``text`` (its content, after the label's colon), or None
    when the text has no passage label or an empty passage."""
    label = _PASSAGE_LABEL.search(text)
    if label is None:
        return None
    after = _QUESTION_LABEL.search(text, label.end())
    end = after.start() if after else len(text)
    return (label.end(), end) if text[label.end():end].strip() else None


@dataclass(frozen=True)
class Example:
    """One example. The prompt is ``task.prefix + text + task.suffix``; ``text`` is the part that
    truncation may cut, and where it holds a labelled passage (``passage_span``), only the passage is cut,
    so the question and candidate answer survive. ``answers`` lists every acceptable answer; the first is
    the training target."""

    text: str
    answers: tuple[str, ...]

    @property
    def target(self) -> str:
        return self.answers[0]

    @property
    def passage_span(self) -> tuple[int, int] | None:
        """Where the cuttable passage lies in ``text`` (see ``passage_span``); None: the whole text."""
        return passage_span(self.text)


def carve_key(example: Example) -> str:
    """The group a carved split keeps on one side: the passage when the record has one (MultiRC's 2,000
    records share 417 paragraphs), else the text (a text repeated with other labels stays together)."""
    span = example.passage_span
    return example.text[span[0]:span[1]].strip() if span else example.text


@dataclass
class Task:
    """A named task: a fixed prompt frame around each example's text, options, and two splits.

    ``metric`` is ``"exact"`` (normalised exact match) or ``"rougeL"``. ``info`` records facts about
    how the task was made (source files, a carved test split, caps) for the results file.
    """

    name: str
    prefix: str
    suffix: str
    options: list[str] | None
    train: list[Example]
    test: list[Example]
    metric: str = "exact"
    info: dict = field(default_factory=dict)

    def prompt(self, example: Example) -> str:
        return self.prefix + example.text + self.suffix


def check_names(names: list[str], where: str = "") -> None:
    """Task names end up in paths and result keys: refuse anything that could leave the data folder.
    ``where`` (a file and ": ") starts the message when the names come from a file."""
    seen = set()
    for name in names:
        unsafe = (
            not isinstance(name, str)
            or not name
            or "/" in name
            or "\\" in name
            or ".." in name
            or "\x00" in name
            or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).is_absolute()
        )
        if unsafe:
            raise DataError(f"{where}unsafe task name {name!r}: no '/', '\\', '..', NUL or absolute paths")
        if name in seen:
            raise ConfigError(f"{where}task {name!r} is listed twice")
        seen.add(name)
