"""The task and example types that every data source produces and the rest of slao consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One example. The prompt is ``task.prefix + text + task.suffix``; ``text`` is the part that
    truncation may cut. ``answers`` lists every acceptable answer; the first is the training target."""

    text: str
    answers: tuple[str, ...]

    @property
    def target(self) -> str:
        return self.answers[0]


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
