"""Metrics over hand-computed accuracy matrices (design.md §5)."""

import pytest

from slao.metrics import all_metrics, average_accuracy, backward_transfer, forgetting, forward_transfer, seen_average

# After task 1: 80 on t1. After task 2: 60 on t1, 90 on t2. After task 3: 70, 50, 40.
R = [[80.0, 10.0, 5.0], [60.0, 90.0, 20.0], [70.0, 50.0, 40.0]]
ZERO = [0.0, 5.0, 10.0]


def test_average_accuracy_is_mean_of_last_row():
    assert average_accuracy(R) == pytest.approx((70 + 50 + 40) / 3)


def test_backward_transfer():
    # ((70 - 80) + (50 - 90)) / 2 = -25
    assert backward_transfer(R) == pytest.approx(-25.0)


def test_forgetting_uses_best_earlier_score():
    # t1: max(80, 60) - 70 = 10; t2: max(90) - 50 = 40 -> 25
    assert forgetting(R) == pytest.approx(25.0)


def test_forgetting_differs_from_bwt_when_a_task_recovers():
    R2 = [[50.0, None], [90.0, 60.0]]
    # the best score before the end is R[0][0] = 50, the final 90: negative forgetting, as the formula says
    assert forgetting(R2) == pytest.approx(-40.0)
    R3 = [[50.0, 0, 0], [90.0, 60.0, 0], [70.0, 60.0, 10.0]]
    assert forgetting(R3) == pytest.approx(((90 - 70) + (60 - 60)) / 2)
    assert backward_transfer(R3) == pytest.approx(((70 - 50) + (60 - 60)) / 2)


def test_forward_transfer_needs_zero_shot():
    # ((10 - 5) + (20 - 10)) / 2 = 7.5
    assert forward_transfer(R, ZERO) == pytest.approx(7.5)
    assert forward_transfer(R, None) is None


def test_undefined_cases_are_none():
    assert backward_transfer([[50.0]]) is None
    assert forgetting([[50.0]]) is None
    assert average_accuracy([[50.0]]) == 50.0
    # not evaluated: an mtl-style matrix has only the last row
    mtl = [[None, None], [70.0, 80.0]]
    assert average_accuracy(mtl) == 75.0
    assert backward_transfer(mtl) is None
    assert forward_transfer(mtl, [0.0, 0.0]) is None


def test_all_metrics_keys_and_seen_average():
    m = all_metrics(R, ZERO)
    assert set(m) == {"aa", "bwt", "forgetting", "fwt", "la"}
    assert seen_average(R) == pytest.approx([80.0, 75.0, 160.0 / 3])


def test_learning_accuracy_is_the_diagonal_and_splits_aa():
    from slao.metrics import learning_accuracy, order_spread

    assert learning_accuracy(R) == pytest.approx((80 + 90 + 40) / 3)
    T = len(R)
    assert average_accuracy(R) == pytest.approx(learning_accuracy(R) + backward_transfer(R) * (T - 1) / T)
    assert learning_accuracy([[None, None], [70.0, 80.0]]) is None  # mtl: no diagonal before the end
    spread = order_spread([[80.0, 60.0], [70.0, 66.0], [75.0, 61.0]])
    assert spread["opd"] == pytest.approx([10.0, 6.0]) and spread["mopd"] == 10.0 and spread["aopd"] == 8.0
    assert order_spread([[80.0, 60.0]])["mopd"] is None
