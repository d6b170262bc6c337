"""LoRM (lorm-ab, lorm-ba): the closed-form merged factor against least squares solved independently
(torch.linalg.lstsq on the stacked inputs), the paper's formula and a hand-computed case, the alternation
and init driven by hand, and one run end to end."""

from __future__ import annotations

import pytest
import torch

from slao.errors import ConfigError
from slao.methods.lorm import merge_a, merge_b, regmean_gram, reversed_init
from test_methods import SHAPES, FakeData, make, random_lora
from test_methods_e2e import one_thread, run_method, same  # noqa: F401 - one_thread: autouse, one intra-op thread

D = torch.float64


def problem(seed: int, n_in: int = 5, n_out: int = 4, r: int = 2, tokens=(4, 3, 5)):
    """Task inputs X_k (in, n_k), task updates dW_k (out, in) of rank r with different factors."""
    gen = torch.Generator().manual_seed(seed)
    X = [torch.randn(n_in, n, generator=gen, dtype=D) for n in tokens]
    dW = [torch.randn(n_out, r, generator=gen, dtype=D) @ torch.randn(r, n_in, generator=gen, dtype=D)
          for _ in tokens]
    return X, dW, gen


def sums(X, dW):
    """P = sum_k dW_k X_k X_k^T and G = sum_k X_k X_k^T."""
    return sum(w @ x @ x.T for w, x in zip(dW, X, strict=True)), sum(x @ x.T for x in X)


def test_merge_b_is_the_least_squares_solution():
    X, dW, gen = problem(0)
    A = torch.randn(2, 5, generator=gen, dtype=D)
    P, G = sums(X, dW)
    B = merge_b(P, G, A)
    # Independently: min_B ||B (A X) - Y|| over all tasks' tokens stacked, by lstsq on the transposed system.
    Z, Y = A @ torch.cat(X, 1), torch.cat([w @ x for w, x in zip(dW, X, strict=True)], 1)
    expected = torch.linalg.lstsq(Z.T, Y.T).solution.T
    assert torch.allclose(B, expected, atol=1e-9)
    assert torch.allclose((B @ A @ G - P) @ A.T, torch.zeros(4, 2, dtype=D), atol=1e-9)  # normal equations
    # and it is a minimum: any other B does worse
    loss = lambda b: sum(((b @ A - w) @ x).pow(2).sum() for w, x in zip(dW, X, strict=True))  # noqa: E731
    assert loss(B) < loss(B + 1e-3 * torch.randn(B.shape, generator=gen, dtype=D))


def test_merge_a_is_the_least_squares_solution():
    X, dW, gen = problem(1, tokens=(4, 3, 5))  # 12 tokens >= in: one solution
    B = torch.randn(4, 2, generator=gen, dtype=D)
    P, G = sums(X, dW)
    A = merge_a(P, G, B)
    # Independently: vec(B A X) = (X^T kron B) vec(A), vec stacking columns.
    Xs, Y = torch.cat(X, 1), torch.cat([w @ x for w, x in zip(dW, X, strict=True)], 1)
    vec = torch.linalg.lstsq(torch.kron(Xs.T.contiguous(), B), Y.T.reshape(-1, 1)).solution
    expected = vec.reshape(5, 2).T
    assert torch.allclose(A, expected, atol=1e-9)
    assert torch.allclose(B.T @ (B @ A @ G - P), torch.zeros(2, 5, dtype=D), atol=1e-8)  # normal equations


def test_merge_a_with_a_shared_b_is_the_papers_formula():
    # Every task's update B A_k with one B: A = (sum_k A_k G_k)(sum_k G_k)^-1 (the LoRM paper's A merge).
    X, _, gen = problem(2)
    B = torch.randn(4, 2, generator=gen, dtype=D)
    As = [torch.randn(2, 5, generator=gen, dtype=D) for _ in X]
    P, G = sums(X, [B @ a for a in As])
    paper = sum(a @ x @ x.T for a, x in zip(As, X, strict=True)) @ torch.linalg.inv(G)
    assert torch.allclose(merge_a(P, G, B), paper, atol=1e-9)


def test_merge_with_diagonal_grams_hand_computed():
    # gram_alpha = 0: G is a vector and the A merge is a column-wise weighted mean of the A_k.
    B = torch.tensor([[2.0]], dtype=D)
    A1, A2 = torch.tensor([[1.0, 0.0]], dtype=D), torch.tensor([[3.0, 2.0]], dtype=D)
    g1, g2 = torch.tensor([1.0, 3.0], dtype=D), torch.tensor([3.0, 1.0], dtype=D)
    P = (B @ A1) * g1 + (B @ A2) * g2
    A = merge_a(P, g1 + g2, B)
    assert torch.allclose(A, torch.tensor([[2.5, 0.5]], dtype=D))  # ((1*1 + 3*3)/4, (0*3 + 2*1)/4)
    # B merge with A held, diagonal G: B = P A^T (A diag(g) A^T)^-1; A = (1, 1): (2 g1' + ...)/(sum g)
    A = torch.tensor([[1.0, 1.0]], dtype=D)
    P = torch.tensor([[4.0, 2.0]], dtype=D) * g1  # one task, dW = (4, 2)
    assert merge_b(P, g1, A).item() == pytest.approx((4 * 1 + 2 * 3) / 4)


def test_regmean_gram():
    G = torch.tensor([[4.0, 2.0], [2.0, 9.0]], dtype=D)
    assert torch.equal(regmean_gram(G, 0.0), torch.tensor([4.0, 9.0], dtype=D))
    assert torch.equal(regmean_gram(G, 0.5), torch.tensor([[4.0, 1.0], [1.0, 9.0]], dtype=D))
    assert torch.equal(regmean_gram(G, 1.0), G)


# -- the method's hooks, driven by hand -----------------------------------------------------------------
def fine_tune(init: dict, trains: str, gen: torch.Generator) -> dict:
    """What the loop does: the trained factor moves, the held one stays bit-identical."""
    return {n: (A + torch.randn(A.shape, generator=gen) if trains == "A" else A,
                B + torch.randn(B.shape, generator=gen) if trains == "B" else B) for n, (A, B) in init.items()}


@pytest.mark.parametrize("name,first", [("lorm-ab", "A"), ("lorm-ba", "B")])
def test_lorm_alternates_and_merges_every_tasks_update(name, first):
    m = make(name)
    gen = torch.Generator().manual_seed(4)
    default = random_lora(gen, zero_b=True)
    order = [first, "B" if first == "A" else "A"] * 2
    assert [m.trainable(i) for i in (1, 2, 3)] == [(f == "A", f == "B") for f in order[:3]]
    updates, grams = [], []
    for i, trains in enumerate(order[:3], 1):
        init = m.init_lora(i, default, FakeData(i))
        if i == 1 and first == "A":  # reversed init: A zero, B drawn from the default, deterministically
            assert all(torch.equal(A, torch.zeros_like(A)) and B.abs().sum() > 0 for A, B in init.values())
            assert same(init, reversed_init(default)) and not same(init, reversed_init(random_lora(gen)))
        elif i == 1:
            assert same(init, default)
        else:
            assert same(init, deployed)  # noqa: F821 - from the previous task
        trained = fine_tune(init, trains, gen)
        deployed = m.after_task(i, trained, FakeData(i))
        grams.append(FakeData(i).layer_inputs("current")[0])
        updates.append({n: (B @ A).to(D) for n, (A, B) in trained.items()})
        for n in SHAPES:
            # Independently of the method: the weighted least squares over every task's update so far, with
            # diagonal Grams (gram_alpha = 0), solved by lstsq with inputs diag(g_k)^(1/2).
            roots = [torch.diag(torch.diagonal(g[n]).sqrt()) for g in grams]
            Y = torch.cat([u[n] @ x for u, x in zip(updates, roots, strict=True)], 1)
            A_t, B_t = trained[n][0].to(D), trained[n][1].to(D)
            if trains == "B":
                expected_B = torch.linalg.lstsq((A_t @ torch.cat(roots, 1)).T, Y.T).solution.T
                assert torch.equal(deployed[n][0], trained[n][0])
                assert torch.allclose(deployed[n][1].to(D), expected_B, atol=1e-4)
            else:
                Xs = torch.cat(roots, 1)
                vec = torch.linalg.lstsq(torch.kron(Xs.T.contiguous(), B_t), Y.T.reshape(-1, 1)).solution
                assert torch.equal(deployed[n][1], trained[n][1])
                assert torch.allclose(deployed[n][0].to(D), vec.reshape(A_t.shape[1], -1).T, atol=1e-4)
            if i == 1:  # one task: the merge gives back its fine-tuned LoRA
                assert torch.allclose(deployed[n][0], trained[n][0], atol=1e-4)
                assert torch.allclose(deployed[n][1], trained[n][1], atol=1e-4)
    assert m.stats() == {"merged_factor": order[2]}
    assert m.state()["G/l0.q_proj"].shape == (5,)  # the diagonal only, by default


def test_lorm_full_gram_setting_and_bad_values():
    m = make("lorm-ba", lorm_ba__gram_alpha=1.0)
    gen = torch.Generator().manual_seed(5)
    trained = fine_tune(m.init_lora(1, random_lora(gen, zero_b=True)), "B", gen)
    m.after_task(1, trained, FakeData(1))
    assert m.state()["G/l0.q_proj"].shape == (5, 5)
    assert torch.allclose(m.state()["G/l0.q_proj"].to(D), FakeData(1).layer_inputs()[0]["l0.q_proj"])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="method.lorm_ab.gram_alpha"):
            make("lorm-ab", lorm_ab__gram_alpha=bad)
    with pytest.raises(ValueError, match="needs the task's data"):
        make("lorm-ab").after_task(1, trained, None)


# -- end to end: the hooks on the tensors the harness used --------------------------------------------------
def test_lorm_ab_end_to_end(tmp_path, monkeypatch):
    _, seen = run_method(tmp_path, monkeypatch, "lorm-ab")
    init, trained, deployed = seen["init"], seen["trained"], seen["deployed"]
    assert all(torch.equal(A, torch.zeros_like(A)) for A, _ in init[0].values())  # A trains first, from 0
    for i in range(len(trained)):
        held = 1 if i % 2 == 0 else 0  # task 1 (i = 0) trains A and holds B
        for layer, pair in trained[i].items():
            assert torch.equal(pair[held], init[i][layer][held])  # the held factor did not move
            assert not torch.equal(pair[1 - held], init[i][layer][1 - held])  # the other trained
            assert torch.equal(deployed[i][layer][held], pair[held])  # and is kept as it is by the merge
        if i:
            assert same(init[i], deployed[i - 1])  # each task starts from the merged LoRA
    assert all(torch.allclose(deployed[0][n][0], trained[0][n][0], atol=1e-5) for n in trained[0])
