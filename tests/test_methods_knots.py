"""KnOTS (methods/knots.py): the shared SVD basis reconstructs every task's update exactly, TIES (trim,
elect, disjoint mean) on hand-computed vectors, the merge on hand-made LoRAs, and one run through the CLI."""

from __future__ import annotations

import pytest
import torch

from slao.config import MethodConfig
from slao.errors import ConfigError
from slao.methods import build_method
from slao.methods.knots import knots_merge, shared_basis, ties_merge

SHAPES = {"l0.q_proj": (4, 3), "l0.v_proj": (2, 3)}  # (out, in)
R = 2


def make(**opts):
    cfg = MethodConfig(name="knots")
    for key, value in opts.items():
        setattr(cfg.knots, key, value)
    return build_method(cfg, SHAPES, R)


def random_lora(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(R, i, generator=gen, dtype=torch.float64),
                torch.randn(o, R, generator=gen, dtype=torch.float64)) for n, (o, i) in SHAPES.items()}


def test_shared_basis_reconstructs_each_task_exactly():
    gen = torch.Generator().manual_seed(0)
    updates = [torch.randn(6, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 5, generator=gen,
                                                                                   dtype=torch.float64)
               for _ in range(3)]
    U, coords = shared_basis(updates)
    assert U.shape == (6, 6) and all(c.shape == (6, 5) for c in coords)  # rank [dW_1 | dW_2 | dW_3] = 6
    assert torch.allclose(U.T @ U, torch.eye(6, dtype=torch.float64), atol=1e-10)
    for dW, c in zip(updates, coords, strict=True):
        assert torch.allclose(U @ c, dW, atol=1e-10)
    # two updates in one 1-dimensional output direction share one basis vector
    u = torch.tensor([[1.0], [2.0], [2.0]], dtype=torch.float64) / 3
    U, coords = shared_basis([u @ torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                              u @ torch.tensor([[0.0, -3.0]], dtype=torch.float64)])
    assert U.shape == (3, 1)
    assert torch.allclose(U @ coords[1], u @ torch.tensor([[0.0, -3.0]], dtype=torch.float64), atol=1e-12)


def test_ties_merge_hand_computed():
    # Trimming to 50% keeps, as the KnOTS/TIES code does, the entries at least as large as the
    # (d - int(d * 0.5)) = 2nd smallest magnitude of each row: three of four here.
    vectors = torch.tensor([[4.0, -1.0, 0.5, -3.0],    # keeps 4, -1, -3
                            [-2.0, 5.0, -0.1, 1.0],    # keeps -2, 5, 1
                            [1.0, -6.0, 2.0, 0.2]])    # keeps 1, -6, 2
    # sums of the kept values: 3, -2, 2, -2 -> elected signs +, -, +, -
    # agreeing entries: (4, 1), (-1, -6), (2), (-3) -> disjoint means 2.5, -3.5, 2, -3
    assert torch.allclose(ties_merge(vectors, top_k=50, scale=1.0), torch.tensor([2.5, -3.5, 2.0, -3.0]))
    assert torch.allclose(ties_merge(vectors, top_k=50, scale=0.5), torch.tensor([1.25, -1.75, 1.0, -1.5]))
    # An entry whose sum is 0 takes the sign of the sum of the elected signs ("majority"):
    w = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])  # sums 0, 3 -> signs 0, + -> the 0 becomes + -> keeps the 1
    assert torch.allclose(ties_merge(w, top_k=100), torch.tensor([1.0, 1.5]))
    # ... and when that sum is 0 as well the sign stays 0, which keeps the negative entries (the code's
    # torch.where(sign > 0, x > 0, x < 0)):
    v = torch.tensor([[1.0, 2.0, -1.0], [-1.0, 1.0, -4.0]])  # sums 0, 3, -5 -> signs 0, +, -, summing to 0
    assert torch.allclose(ties_merge(v, top_k=100), torch.tensor([-1.0, 1.5, -2.5]))


def test_one_task_with_nothing_trimmed_is_reconstructed_exactly():
    lora = random_lora(1)
    merged = knots_merge([lora], top_k=100, scale=1.0)
    for n, (A, B) in lora.items():
        assert torch.allclose(merged[n], B @ A, atol=1e-10)


def test_equal_updates_merge_to_the_update_once_and_scale_applies():
    # Two tasks with the same update have the same coordinates in the shared basis: their disjoint mean is
    # the update itself (a sum would double it); ``scale`` multiplies the merged coordinates.
    lora = random_lora(2)
    merged = knots_merge([lora, lora], top_k=100, scale=1.0)
    halved = knots_merge([lora], top_k=100, scale=0.5)
    for n, (A, B) in lora.items():
        assert torch.allclose(merged[n], B @ A, atol=1e-10)
        assert torch.allclose(halved[n], 0.5 * (B @ A), atol=1e-10)


def test_method_keeps_every_lora_and_deploys_an_exact_lora_of_the_merge():
    m = make(top_k=100.0, scale=1.0)
    loras = [{n: (A.float(), B.float()) for n, (A, B) in random_lora(s).items()} for s in range(3)]
    for t, lora in enumerate(loras, 1):
        assert m.init_lora(t, "fresh") == "fresh"  # every task from PEFT's fresh init
        deployed = m.after_task(t, lora)
        expected = knots_merge(loras[:t], top_k=100, scale=1.0)
        for n, (A, B) in deployed.items():
            assert A.shape[0] == B.shape[1] == min(t * R, 3)  # at most t*r, at most the largest min(out, in)
            assert torch.allclose(B @ A, expected[n], atol=1e-5)
    assert len(m.loras) == 3
    with pytest.raises(ConfigError, match="method.knots.top_k"):
        make(top_k=0.0)
    with pytest.raises(ConfigError, match="method.knots.scale"):
        make(scale=-1.0)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_knots_end_to_end(tmp_path, monkeypatch, one_thread):
    """Through the CLI: every task trained from PEFT's fresh init, and each row scored with the KnOTS merge
    (default top_k 40, scale 1) of all fine-tuned LoRAs so far."""
    from test_methods_e2e import run_method

    _, seen = run_method(tmp_path, monkeypatch, "knots", "--tasks", "bbc-topic,rt-sentiment,rt-subjectivity")
    assert all(torch.equal(B, torch.zeros_like(B)) for start in seen["start"] for _, B in start.values())
    for t in range(1, 4):
        expected = knots_merge(seen["trained"][:t], top_k=40.0, scale=1.0)
        for n, (A, B) in seen["deployed"][t - 1].items():
            assert torch.allclose(B @ A, expected[n], atol=1e-5), (t, n)
