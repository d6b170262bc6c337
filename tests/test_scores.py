"""ROUGE-L against hand-computed cases, and the evaluation's use of it (max over answers, mean x 100)."""

from __future__ import annotations

import pytest

from slao.data.task import Example, Task
from slao.evaluate import score
from slao.scores import best_rouge_l, rouge_l


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS 3; precision 3/3, recall 3/6 -> F = 2 * 1 * 0.5 / 1.5 = 2/3
        ("the cat sat", "the cat sat on the mat", 2 / 3),
        # the same pair the other way round: precision and recall swap, F stays
        ("the cat sat on the mat", "the cat sat", 2 / 3),
        ("a b c", "a b c", 1.0),
        ("x y", "a b c", 0.0),
        # order matters: LCS of "the cat" and "cat the" is 1 -> P = R = 1/2
        ("the cat", "cat the", 0.5),
        # a subsequence, not a substring: LCS "a c d" = 3; P = 3/4, R = 3/5 -> F = 2/3
        ("a b c d", "a x c y d", 2 / 3),
        # case and punctuation do not count
        ("The Cat, sat!", "the cat sat", 1.0),
        # stemming as in the Natural-Instructions scorer: "cats" ~ "cat", "running" ~ "run"
        ("cats running", "cat run", 1.0),
        ("", "the cat", 0.0),
        ("the cat", "", 0.0),
    ],
)
def test_rouge_l_hand_computed(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_best_rouge_l_takes_the_closest_answer() -> None:
    assert best_rouge_l("the cat sat", ["a dog", "the cat sat on the mat", "cat"]) == pytest.approx(2 / 3)
    assert best_rouge_l("the cat sat", ["the cat sat"]) == 1.0


def _task(metric: str, answers: list[tuple[str, ...]]) -> Task:
    test = [Example(text=f"q{i}", answers=a) for i, a in enumerate(answers)]
    return Task(name="t", prefix="", suffix="", options=None, train=test, test=test, metric=metric)


def test_evaluate_score_uses_rouge_l_max_over_answers_as_percent() -> None:
    task = _task("rougeL", [("the cat sat on the mat", "a cat sat"), ("yes",)])
    # example 1: max(2/3 vs the long answer, 2/3 vs "a cat sat" -> LCS "cat sat" = 2, P=R=2/3) = 2/3
    # example 2: "no" vs "yes" = 0; the task score is the mean x 100
    value = score(task, ["the cat sat", "no"])
    assert value == pytest.approx(100 * (2 / 3 + 0) / 2)


def test_evaluate_score_exact_match_is_normalised() -> None:
    task = _task("exact", [("Positive",), ("negative",), ("neutral",)])
    assert score(task, ["positive.", " Negative", "positive"]) == pytest.approx(200 / 3)


def test_an_empty_reference_never_scores() -> None:
    # a reference that normalises to "" (MNLI's "-") is never answered correctly, by either metric
    assert score(_task("exact", [("-",), ("yes",)]), ["", "yes"]) == pytest.approx(50.0)
    assert score(_task("exact", [("-",)]), ["-"]) == 0.0
    assert score(_task("rougeL", [("-",), ("",)]), ["", ""]) == 0.0
