"""Per-example scores of generated text: ROUGE-L (free-text tasks) next to normalised exact match
(option tasks, slao.data.normalize.exact_match)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    # Stemming as in the Natural-Instructions evaluation (compute_metrics.py) that SuperNI results
    # are reported with, so "cats" and "cat" match. rouge-score's tokenizer lower-cases and keeps only
    # [a-z0-9] runs: punctuation never counts, and text in other scripts scores 0.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]: the longest common subsequence of tokens, as precision over the
    prediction and recall over the reference (0 when either has no tokens)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def best_rouge_l(prediction: str, references) -> float:
    """The best ROUGE-L over the acceptable answers (the Natural-Instructions rule)."""
    return max(rouge_l(prediction, r) for r in references)
