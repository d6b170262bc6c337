"""InfLoRA: the designed A against hand-computed and independently computed subspaces, the basis growth
against covariances with known eigenvalues, the threshold schedule over the run's T, the hooks driven by
hand, and the invariants of a run through the CLI."""

from __future__ import annotations

import math

import torch

from slao.config import MethodConfig
from slao.methods import build_method
from slao.methods.inflora import design_a, grow_basis, threshold_at
from test_methods_e2e import one_thread, run_method  # noqa: F401 - the fixture keeps the run on one thread

SCALE = 1 / math.sqrt(3)
SHAPES = {"l0.q_proj": (6, 5), "l0.v_proj": (4, 5)}
R = 2


def rotated(eigenvalues: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, Q): a symmetric C = Q diag(eigenvalues) Q^T with a random orthogonal Q (columns = eigenvectors)."""
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T, Q


def projector(V: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector onto the span of V's orthonormal columns."""
    return V @ V.T


# -- the designed A -----------------------------------------------------------------------------------
def test_design_a_hand_computed():
    # M = e1. (I - M M^T) C zeroes C's first row: rows (0 0 0 0), (1 3 0 0), (0 0 2 0), (0 0 0 1), whose
    # left singular vectors are e2 (singular value sqrt(10)), e3 (2), e4 (1): A = [+-e2; +-e3] / sqrt(3).
    # Without the projection the top directions would mix e1 in (C's top eigenvectors lie in the e1-e2 block).
    C = torch.tensor([[4.0, 1, 0, 0], [1, 3, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]], dtype=torch.float64)
    M = torch.tensor([[1.0], [0], [0], [0]], dtype=torch.float64)
    A = design_a(C, M, 2, SCALE)
    assert torch.allclose(A.abs(), SCALE * torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.float64),
                          atol=1e-12)
    assert torch.equal(A @ M, torch.zeros(2, 1, dtype=torch.float64))


def test_design_a_is_orthogonal_to_the_basis_and_spans_the_top_projected_inputs():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(30, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, 7, generator=gen, dtype=torch.float64)
    C = X.T @ X  # inputs of rank 4 in 7 dimensions
    M, _ = torch.linalg.qr(torch.randn(7, 2, generator=gen, dtype=torch.float64))
    A = design_a(C, M, 3, SCALE)
    assert A.shape == (3, 7)
    assert (A @ M).abs().max() < 1e-12  # interference-free: no component in the earlier tasks' subspace
    assert torch.allclose(A @ A.T, SCALE**2 * torch.eye(3, dtype=torch.float64), atol=1e-12)
    # Independently: the projected inputs P C (P = I - M M^T); their top-3 left singular subspace is spanned
    # by the top eigenvectors of (P C)(P C)^T.
    P = torch.eye(7, dtype=torch.float64) - M @ M.T
    values, vectors = torch.linalg.eigh((P @ C) @ (P @ C).T)  # ascending
    top = vectors[:, -3:]
    assert values[-3] > 1e-6 * values[-1]  # three real directions, so the subspace is well defined
    assert torch.allclose(projector(A.T / SCALE), projector(top), atol=1e-9)
    # Every row lies in the span of the projected inputs: least squares P C w = a leaves no residual.
    w = torch.linalg.lstsq(P @ C, A.T).solution
    assert torch.allclose(P @ C @ w, A.T, atol=1e-9)


def test_design_a_zero_rows_where_the_projected_inputs_have_no_direction():
    # Inputs along e1 and e2 only; M = e1: one direction (e2) is left, so the second row of A is zero.
    C = torch.diag(torch.tensor([5.0, 2.0, 0.0, 0.0], dtype=torch.float64))
    M = torch.tensor([[1.0], [0], [0], [0]], dtype=torch.float64)
    A = design_a(C, M, 2, SCALE)
    assert torch.allclose(A[0].abs(), SCALE * torch.tensor([0.0, 1, 0, 0], dtype=torch.float64))
    assert torch.equal(A[1], torch.zeros(4, dtype=torch.float64))


# -- the basis growth ---------------------------------------------------------------------------------
# eigenvalues 4, 3, 2, 1: the reference's energy is their squares 16, 9, 4, 1 (total 30), so the retained
# fraction after 1, 2, 3 directions is 0.533, 0.833, 0.967 (linear energy would give 0.4, 0.7, 0.9).
def test_grow_basis_adds_exactly_the_directions_needed_to_reach_the_threshold():
    C, Q = rotated([4.0, 3.0, 2.0, 1.0], seed=1)
    empty = torch.zeros(4, 0, dtype=torch.float64)
    for threshold, k in [(0.5, 1), (0.8, 2), (0.9, 3), (0.95, 3), (0.97, 4)]:
        M = grow_basis(C, empty, threshold)
        assert M.shape == (4, k), threshold
        assert torch.allclose(projector(M), projector(Q[:, :k]), atol=1e-9), threshold


def test_grow_basis_counts_what_the_basis_already_retains():
    C, Q = rotated([4.0, 3.0, 2.0, 1.0], seed=2)
    M1 = Q[:, :1]  # retains 16/30 = 0.533 already
    M = grow_basis(C, M1, 0.95)  # + 9/30 -> 0.833, + 4/30 -> 0.967: two more
    assert M.shape == (4, 3) and torch.equal(M[:, :1], M1)
    assert torch.allclose(projector(M), projector(Q[:, :3]), atol=1e-9)
    assert torch.equal(grow_basis(C, M1, 0.5), M1)  # 0.533 >= 0.5: nothing to add
    # A basis off the eigenvectors: M1 = e1 retains ||e1 e1^T C||^2 / ||C||^2; the new direction must
    # come from (I - e1 e1^T) C, so it is orthogonal to e1.
    e1 = torch.eye(4, dtype=torch.float64)[:, :1]
    M = grow_basis(C, e1, 0.99)
    assert (M[:, 1:].T @ e1).abs().max() < 1e-12
    assert torch.allclose(M.T @ M, torch.eye(M.shape[1], dtype=torch.float64), atol=1e-12)


def test_grow_basis_stops_at_the_input_size_and_ignores_zero_inputs():
    C, Q = rotated([4.0, 3.0], seed=3)
    assert grow_basis(C, Q, 1.0).shape == (2, 2)
    M = torch.zeros(3, 1, dtype=torch.float64)
    assert torch.equal(grow_basis(torch.zeros(3, 3, dtype=torch.float64), M, 0.9), M)


def test_threshold_schedule_uses_the_run_length():
    assert threshold_at(1, 10, 0.995, 1.0) == 0.995  # the reference's _cur_task is 0 after task 1
    assert math.isclose(threshold_at(6, 10, 0.995, 1.0), 0.995 + 0.005 * 5 / 10)
    m = make(num_tasks=4)
    assert math.isclose(m.threshold(3), 0.995 + 0.005 * 2 / 4)  # T = 4 from the run, not the LLM port's 15
    assert math.isclose(make(num_tasks=0).threshold(3), 0.995 + 0.005 * 2 / 3)  # no run: T = i


# -- the hooks ----------------------------------------------------------------------------------------
class Inputs:
    """Task data whose layer inputs are fixed covariances per task (rank 2 in 5 dimensions)."""

    def __init__(self, i: int):
        self.i = i

    def layer_inputs(self, which="current", max_examples=None, adapter=True, layers=None):
        assert which == "current"
        gen = torch.Generator().manual_seed(100 + self.i)
        covs = {}
        for name, (_, n_in) in SHAPES.items():
            X = torch.randn(9, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, n_in, generator=gen,
                                                                                   dtype=torch.float64)
            covs[name] = X.T @ X
        return covs, 9


def make(num_tasks: int = 3, **opts):
    cfg = MethodConfig(name="inflora")
    for key, value in opts.items():
        setattr(cfg.inflora, key, value)
    return build_method(cfg, SHAPES, R, num_tasks)


def default_lora(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(R, i, generator=gen), torch.zeros(o, R)) for n, (o, i) in SHAPES.items()}


def test_hooks_design_freeze_stack_and_grow():
    m = make(num_tasks=3, threshold=0.9)
    assert m.trainable(1) == (False, True) and m.frozen_rank(1) == 0 and m.frozen_rank(3) == 2 * R
    init1 = m.init_lora(1, default_lora(1), Inputs(1))
    for n, (A, B) in init1.items():
        assert torch.allclose(A.double(), design_a(Inputs(1).layer_inputs()[0][n], torch.zeros(5, 0), R, SCALE)
                              .float().double())
        assert torch.equal(B, torch.zeros_like(B))
    trained1 = {n: (A, B + 1.0) for n, (A, B) in init1.items()}
    assert m.after_task(1, trained1, Inputs(1)) is m.stack
    for n in SHAPES:
        expected = grow_basis(Inputs(1).layer_inputs()[0][n], torch.zeros(5, 0, dtype=torch.float64), 0.9)
        assert m.basis[n].shape == expected.shape
        assert torch.allclose(projector(m.basis[n].double()), projector(expected), atol=1e-6)
    assert m.stats()["threshold"] == 0.9 and m.stats()["basis_dims"]["l0.q_proj"] == m.basis["l0.q_proj"].shape[1]

    init2 = m.init_lora(2, default_lora(2), Inputs(2))
    for n, (A, B) in init2.items():
        assert torch.equal(A[:R], trained1[n][0]) and torch.equal(B[:, :R], trained1[n][1])  # branch 1 kept
        assert (A[R:].double() @ m.basis[n].double()).abs().max() < 1e-6  # the new A is off task 1's inputs
        assert A[R:].abs().max() > 0 and torch.equal(B[:, R:], torch.zeros(B.shape[0], R))
    trained2 = {n: (A, B + 2.0) for n, (A, B) in init2.items()}
    before = {n: M.clone() for n, M in m.basis.items()}
    m.after_task(2, trained2, Inputs(2))
    for n, M in m.basis.items():
        assert torch.equal(M[:, : before[n].shape[1]], before[n])  # the basis only grows
        assert M.shape[1] > before[n].shape[1]
        expected = grow_basis(Inputs(2).layer_inputs()[0][n], before[n].double(), m.threshold(2))
        assert M.shape == expected.shape

    fresh = make(num_tasks=3, threshold=0.9)
    fresh.load_state(m.state())
    a, b = m.init_lora(3, default_lora(3), Inputs(3)), fresh.init_lora(3, default_lora(3), Inputs(3))
    assert all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in SHAPES)


# -- end to end ---------------------------------------------------------------------------------------
def test_inflora_run_keeps_a_frozen_and_off_the_earlier_subspace(tmp_path, monkeypatch):
    """Through the CLI on tiny-random: every task's A is exactly its designed init and has zero product with
    the basis kept after the earlier tasks; earlier branches are bit-identical; only B moves; the basis
    only grows."""
    from slao.methods.inflora import InfLoraMethod

    bases = []
    after = InfLoraMethod.after_task

    def keep_basis(self, i, trained, data=None):
        out = after(self, i, trained, data)
        bases.append({n: M.clone() for n, M in self.basis.items()})
        return out

    monkeypatch.setattr(InfLoraMethod, "after_task", keep_basis)
    _, seen = run_method(tmp_path, monkeypatch, "inflora")
    start, trained = seen["start"], seen["trained"]
    r = next(iter(trained[0].values()))[0].shape[0]
    for i in range(len(trained)):
        for n, (A, B) in trained[i].items():
            A0, B0 = start[i][n]
            assert torch.equal(A, A0)  # A is frozen
            assert not torch.equal(B[:, i * r :], B0[:, i * r :])  # the new B trained
            if i:
                old_A, old_B = trained[i - 1][n]
                assert torch.equal(A[: i * r], old_A) and torch.equal(B[:, : i * r], old_B)
                assert (A[i * r :].double() @ bases[i - 1][n].double()).abs().max() < 1e-5
                assert bases[i][n].shape[1] >= bases[i - 1][n].shape[1]
                assert torch.equal(bases[i][n][:, : bases[i - 1][n].shape[1]], bases[i - 1][n])
