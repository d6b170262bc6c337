"""Continual-learning metrics: pure functions over the accuracy matrix R (design.md §5).

``R[i][j]`` is the score (percent) on task j after training tasks 0..i; entries not evaluated are None.
Every function returns None where its metric is undefined (one task, missing entries).
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]

# Names, labels and direction of the metrics, for every table and comparison (rendered in slao.tables).
METRICS = ("aa", "bwt", "forgetting", "fwt", "la")
LABELS = {"aa": "AA", "bwt": "BWT", "forgetting": "F", "fwt": "FWT", "la": "LA"}
# Forgetting is the only metric where smaller is better.
HIGHER_IS_BETTER = {"aa": True, "bwt": True, "forgetting": False, "fwt": True, "la": True}
# The metrics compared pairwise between methods (FWT's differences read the same entries as LA's).
PAIRED = ("aa", "bwt", "forgetting", "la")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _final_row(R: Matrix) -> Sequence[float | None] | None:
    if not R or any(v is None for v in R[-1]):
        return None
    return R[-1]


def average_accuracy(R: Matrix) -> float | None:
    """AA = mean_j R[T-1][j]."""
    last = _final_row(R)
    return None if last is None else _mean(list(last))


def backward_transfer(R: Matrix) -> float | None:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j])."""
    T = len(R)
    last = _final_row(R)
    if T < 2 or last is None or any(R[j][j] is None for j in range(T - 1)):
        return None
    return _mean([last[j] - R[j][j] for j in range(T - 1)])


def forgetting(R: Matrix) -> float | None:
    """F = 1/(T-1) sum_{j<T-1} (max_{j<=l<T-1} R[l][j] - R[T-1][j])."""
    T = len(R)
    last = _final_row(R)
    if T < 2 or last is None:
        return None
    drops = []
    for j in range(T - 1):
        seen = [R[l][j] for l in range(j, T - 1)]  # noqa: E741 - the paper's index name
        if any(v is None for v in seen):
            return None
        drops.append(max(seen) - last[j])
    return _mean(drops)


def forward_transfer(R: Matrix, zero_shot: Sequence[float | None] | None) -> float | None:
    """FWT = 1/(T-1) sum_{j>0} (R[j-1][j] - b_j), b the untrained model's scores."""
    T = len(R)
    if T < 2 or zero_shot is None:
        return None
    terms = []
    for j in range(1, T):
        before, base = R[j - 1][j], zero_shot[j]
        if before is None or base is None:
            return None
        terms.append(before - base)
    return _mean(terms)


def learning_accuracy(R: Matrix) -> float | None:
    """LA = mean_j R[j][j]: how well each task is learned right after training on it (plasticity; Riemer
    et al., 2019). With BWT it splits AA: AA = LA + BWT * (T-1)/T."""
    T = len(R)
    if T == 0 or any(R[j][j] is None for j in range(T)):
        return None
    return _mean([R[j][j] for j in range(T)])


def all_metrics(R: Matrix, zero_shot: Sequence[float | None] | None = None) -> dict[str, float | None]:
    return {
        "aa": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "fwt": forward_transfer(R, zero_shot),
        "la": learning_accuracy(R),
    }


def seen_average(R: Matrix) -> list[float | None]:
    """Average score over the tasks seen so far, after each task (mean_{j<=i} R[i][j])."""
    out = []
    for i, row in enumerate(R):
        seen = row[: i + 1]
        out.append(None if any(v is None for v in seen) else _mean(list(seen)))
    return out


def order_spread(final_scores: Sequence[Sequence[float]]) -> dict[str, float | list[float] | None]:
    """Order robustness (SAPT; design.md §5): ``final_scores[o][t]`` is task t's final score under order o
    (tasks in one fixed naming, not the order's position). OPD_t = max_o - min_o; MOPD = max_t OPD_t,
    AOPD = mean_t OPD_t. None with fewer than two orders."""
    if len(final_scores) < 2:
        return {"opd": None, "mopd": None, "aopd": None}
    opd = [max(col) - min(col) for col in zip(*final_scores, strict=True)]
    return {"opd": opd, "mopd": max(opd), "aopd": _mean(opd)}


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]]:
    """Elementwise mean of accuracy matrices; None wherever any of them is None."""
    if not matrices:
        return []
    out = []
    for rows in zip(*matrices, strict=True):
        out.append([None if any(v is None for v in cells) else sum(cells) / len(cells)
                    for cells in zip(*rows, strict=True)])
    return out
