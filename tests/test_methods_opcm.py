"""OPCM (methods/opcm.py): the split of the merged update's singular values, the projection off its kept
subspace and diagonal, the lambda_t rescaling (sqrt(t) for orthogonal updates of equal norm), both readings
(A and B as matrices; the dense B @ A) on hand-made LoRAs, and one run through the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from slao.config import MethodConfig
from slao.errors import ConfigError
from slao.methods import build_method
from slao.methods.opcm import merge_step, project_update, split_rank

SHAPES = {"l0.q_proj": (4, 5)}  # (out, in)


@pytest.fixture
def one_thread():
    """One intra-op thread for a run through the CLI (as in test_methods_e2e: two are far slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(**opts):
    cfg = MethodConfig(name="opcm")
    for key, value in opts.items():
        setattr(cfg.opcm, key, value)
    return build_method(cfg, SHAPES, 2)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q


def test_split_rank_counts_directions_before_the_share_exceeds_alpha():
    S = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert split_rank(S, 0.5) == 1  # 0.7 is the first share above 0.5, at index 1
    assert split_rank(S, 0.75) == 2
    assert split_rank(S, 0.3) == 0
    assert split_rank(S, 0.7) == 2  # strictly above: 0.7 itself does not exceed 0.7
    assert split_rank(torch.zeros(3), 0.5) == 0


@pytest.mark.parametrize("alpha, k", [(0.5, 1), (0.75, 2), (0.95, 3)])
def test_projected_update_has_no_component_in_the_kept_subspace(alpha, k):
    # merged = Q1 diag(4, 3, 2, 1) Q2^T (4 x 5) with known singular vectors: the columns of Q1 and Q2
    # (unique up to sign, which does not change which coordinates are removed).
    Q1, Q2 = orthogonal(4, 1), orthogonal(5, 2)
    D = torch.zeros(4, 5, dtype=torch.float64)
    D[range(4), range(4)] = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    merged = Q1 @ D @ Q2.T
    update = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cleaned, got_k = project_update(merged, update, alpha)
    assert got_k == k
    coords = Q1.T @ update @ Q2  # the update in the merged update's singular bases
    expected = coords.clone()
    expected.diagonal().zero_()  # every u_i v_i^T component
    expected[:k, :k] = 0  # every u_i v_j^T with i, j < k
    assert torch.allclose(cleaned, Q1 @ expected @ Q2.T, atol=1e-10)
    kept = Q1[:, :k].T @ cleaned @ Q2[:, :k]
    assert torch.allclose(kept, torch.zeros(k, k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(torch.diagonal(Q1.T @ cleaned @ Q2), torch.zeros(4, dtype=torch.float64), atol=1e-10)
    # everything else of the update is left as it was
    assert torch.allclose((Q1.T @ cleaned @ Q2)[k:, :k], coords[k:, :k], atol=1e-10)
    assert torch.allclose((Q1.T @ cleaned @ Q2)[0, k:], coords[0, k:], atol=1e-10)


def test_merge_step_rescales_to_the_mean_task_norm_and_sqrt_t_for_orthogonal_updates():
    e = torch.eye(3, dtype=torch.float64)
    tau = [e[[0]].T @ e[[j]] for j in range(3)]  # three orthonormal matrices (Frobenius)
    merged, lam = {"w": tau[0]}, 1.0
    for t in (2, 3):
        merged, lam = merge_step(merged, {"w": tau[t - 1]}, lam, mean_norm=1.0, t=t)
        assert lam == pytest.approx(math.sqrt(t))
        assert torch.allclose(merged["w"], sum(tau[:t]) / math.sqrt(t))
    # in general: lambda_t = ||lambda_{t-1} tau_m + cleaned|| / mean norm, over all matrices at once
    m, c = {"a": torch.tensor([[3.0]]), "b": torch.tensor([[0.0, 4.0]])}, {"a": torch.tensor([[1.0]]),
                                                                         "b": torch.tensor([[2.0, 0.0]])}
    out, lam = merge_step(m, c, 2.0, mean_norm=5.0, t=2)
    summed = [7.0, 2.0, 8.0]  # a: 2 * 3 + 1; b: 2 * 0 + 2, 2 * 4 + 0
    assert lam == pytest.approx(math.sqrt(sum(v * v for v in summed)) / 5.0)
    assert torch.allclose(out["b"], torch.tensor([[2.0, 8.0]]) / lam)
    _, lam = merge_step(m, c, 2.0, mean_norm=5.0, t=3, scale="sqrt")
    assert lam == pytest.approx(math.sqrt(3))


def rank_one_lora(col: int) -> dict:
    """A LoRA of rank 2 with B @ A = e_0 e_col^T (4 x 5): A's row 0 is e_col, B's column 0 is e_0."""
    A, B = torch.zeros(2, 5), torch.zeros(4, 2)
    A[0, col], B[0, 0] = 1.0, 1.0
    return {"l0.q_proj": (A, B)}


def test_dense_reading_merges_orthogonal_updates_with_lambda_sqrt_t():
    # B_t @ A_t = e_0 e_t^T: each new update is off the merged one's top direction and its diagonal, so it
    # is kept whole, and the merge after task t is (sum of the updates) / sqrt(t).
    m = make(space="dense")
    for t in range(1, 4):
        deployed = m.after_task(t, rank_one_lora(t))
        A, B = deployed["l0.q_proj"]
        expected = torch.zeros(4, 5)
        expected[0, 1 : t + 1] = 1 / math.sqrt(t)
        assert A.shape[0] == B.shape[1] == 4  # rank min(out, in): an exact LoRA of the dense merge
        assert torch.allclose(B @ A, expected, atol=1e-6)
        assert m.lam == pytest.approx(math.sqrt(t))


def test_factor_reading_treats_a_and_b_as_matrices():
    # Task 1: A_1 = e_1 (row 0), B_1 = e_0 (column 0). Task 2: A_2 = e_2 (row 0), B_2 = B_1.
    # A: A_2 has no component on the merged A's diagonal (u_0 = e_0, v_0 = e_1), so it is kept whole.
    # B: B_2 equals B_1, all of it on the merged B's first diagonal entry, so it is removed entirely.
    # lambda_2 = ||(A_1 + A_2, B_1)|| / mean(||(A_1, B_1)||, ||(A_2, B_2)||) = sqrt(3) / sqrt(2).
    m = make()
    first = m.after_task(1, rank_one_lora(1))
    assert torch.equal(first["l0.q_proj"][0], rank_one_lora(1)["l0.q_proj"][0])  # task 1's LoRA itself
    A, B = m.after_task(2, rank_one_lora(2))["l0.q_proj"]
    lam = math.sqrt(3) / math.sqrt(2)
    assert m.lam == pytest.approx(lam)
    assert A.shape == (2, 5) and B.shape == (4, 2)  # the merged factors at rank r
    expected_A = torch.zeros(2, 5)
    expected_A[0, 1] = expected_A[0, 2] = 1 / lam
    expected_B = torch.zeros(4, 2)
    expected_B[0, 0] = 1 / lam
    assert torch.allclose(A, expected_A, atol=1e-6) and torch.allclose(B, expected_B, atol=1e-6)


def test_every_task_starts_from_a_fresh_lora_and_state_round_trips():
    m = make()
    default = {"l0.q_proj": (torch.randn(2, 5), torch.zeros(4, 2))}
    m.after_task(1, rank_one_lora(1))
    assert m.init_lora(2, default) is default
    m.after_task(2, rank_one_lora(2))
    fresh = make()
    fresh.load_state(m.state())
    a, b = m.after_task(3, rank_one_lora(3)), fresh.after_task(3, rank_one_lora(3))
    assert torch.equal(a["l0.q_proj"][0], b["l0.q_proj"][0]) and m.lam == fresh.lam


@pytest.mark.parametrize("key, bad", [("alpha", 1.5), ("alpha", float("nan")), ("space", "both"), ("scale", "t")])
def test_bad_options_are_refused(key, bad):
    with pytest.raises(ConfigError, match=f"method.opcm.{key}"):
        make(**{key: bad})


def test_opcm_dense_end_to_end(tmp_path, monkeypatch, one_thread):
    """Through the CLI with space=dense: each task trained from PEFT's fresh init (B zero), and what every
    task was scored with is the merge of the fine-tuned LoRAs' dense updates replayed here."""
    from test_methods_e2e import run_method

    _, seen = run_method(tmp_path, monkeypatch, "opcm", "--tasks", "bbc-topic,rt-sentiment,rt-subjectivity",
                         "--set", "method.opcm.space=dense")
    trained = seen["trained"]
    assert all(torch.equal(B, torch.zeros_like(B)) for start in seen["start"] for _, B in start.values())
    merged, lam, norms = {}, 1.0, []
    for t, lora in enumerate(trained, 1):
        tau = {n: (B @ A).double() for n, (A, B) in lora.items()}
        norms.append(math.sqrt(sum(float((d**2).sum()) for d in tau.values())))
        if t == 1:
            merged = tau
        else:
            cleaned = {n: project_update(merged[n], tau[n], 0.5)[0] for n in tau}
            merged, lam = merge_step(merged, cleaned, lam, sum(norms) / t, t)
        for n, (A, B) in seen["deployed"][t - 1].items():
            assert torch.allclose((B @ A).double(), merged[n], atol=1e-5), (t, n)
