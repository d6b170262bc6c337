"""LoRA-LEGO (methods/lora_lego.py): the rank-wise units, the seeded k-means, the merged LoRA of rank r whose
units are the means of their clusters, the norm rescaling, and one run through the CLI."""

from __future__ import annotations

import pytest
import torch

from slao.config import MethodConfig
from slao.methods import build_method
from slao.methods.lora_lego import cluster_means, kmeans, lego_merge, units_of

SHAPES = {"l0.q_proj": (2, 2)}  # (out, in)


def make(**opts):
    cfg = MethodConfig(name="lora-lego")
    for key, value in opts.items():
        setattr(cfg.lora_lego, key, value)
    return build_method(cfg, SHAPES, 2)


def test_units_are_rows_of_a_with_columns_of_b():
    A = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (r=2, in=3)
    B = torch.tensor([[7.0, 8.0], [9.0, 10.0]])  # (out=2, r=2)
    assert torch.equal(units_of(A, B), torch.tensor([[1.0, 2.0, 3.0, 7.0, 9.0], [4.0, 5.0, 6.0, 8.0, 10.0]]))
    # the update is the sum over units of the outer products of their two parts
    U = units_of(A, B)
    assert torch.allclose(sum(U[k, 3:, None] @ U[k, None, :3] for k in range(2)), B @ A)


def test_kmeans_finds_separated_clusters_deterministically():
    X = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.0, 10.2], [0.0, 0.2], [-5.0, 8.0]])
    labels = kmeans(X, 3, torch.Generator().manual_seed(0))
    groups = {frozenset(torch.nonzero(labels == j).flatten().tolist()) for j in range(3)}
    assert groups == {frozenset({0, 1, 4}), frozenset({2, 3}), frozenset({5})}
    for seed in range(5):  # every seed, and the same seed twice, gives the same answer on this data
        assert torch.equal(kmeans(X, 3, torch.Generator().manual_seed(seed)).unique(return_counts=True)[1].sort()[0],
                           torch.tensor([1, 2, 3]))
    assert torch.equal(kmeans(X, 3, torch.Generator().manual_seed(7)), kmeans(X, 3, torch.Generator().manual_seed(7)))


# Two rank-2 LoRAs whose units form two clusters:
#   LoRA 1 units [1, 0 | 1, 0] and [0, 1 | 0, 1]; LoRA 2 units [0.8, 0 | 1.2, 0] and [0, 1.4 | 0, 0.6].
LORA_1 = {"l0.q_proj": (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))}
LORA_2 = {"l0.q_proj": (torch.tensor([[0.8, 0.0], [0.0, 1.4]]), torch.tensor([[1.2, 0.0], [0.0, 0.6]]))}
MEANS = torch.tensor([[0.9, 0.0, 1.1, 0.0], [0.0, 1.2, 0.0, 0.8]])  # the two cluster means, computed by hand
MEMBER_NORMS = torch.tensor([[2.0**0.5, (0.8**2 + 1.2**2) ** 0.5], [2.0**0.5, (1.4**2 + 0.6**2) ** 0.5]])


def merged_units(merged: dict) -> torch.Tensor:
    A, B = merged["l0.q_proj"]
    assert A.shape == (2, 2) and B.shape == (2, 2)  # rank r = 2 again
    units = units_of(A, B)
    return units[units[:, 0].argsort(descending=True)]  # the cluster with [0.9, 0, ...] first


def test_each_merged_unit_is_the_mean_of_its_cluster():
    merged = lego_merge([LORA_1, LORA_2], rank=2, rescale=False)
    assert torch.allclose(merged_units(merged), MEANS, atol=1e-6)


def test_euclidean_rescaling_gives_each_unit_the_mean_norm_of_its_cluster():
    merged = merged_units(lego_merge([LORA_1, LORA_2], rank=2, norm="2"))
    for j in range(2):
        target = MEMBER_NORMS[j].mean()
        assert torch.allclose(merged[j], MEANS[j] * target / MEANS[j].norm(), atol=1e-6)
        assert merged[j].norm() == pytest.approx(float(target), rel=1e-6)
    labels = torch.tensor([0, 1, 0])
    units = torch.tensor([[3.0, 4.0], [1.0, 0.0], [3.0, -4.0]])  # cluster 0: mean (3, 0), member norms 5, 5
    assert torch.allclose(cluster_means(units, labels, 2, norm="2"), torch.tensor([[5.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(cluster_means(units, labels, 2, rescale=False), torch.tensor([[3.0, 0.0], [1.0, 0.0]]))


def test_default_rescaling_uses_the_largest_entry():
    labels = torch.tensor([0, 1, 0])
    units = torch.tensor([[3.0, 4.0], [1.0, 0.0], [3.0, -4.0]])  # cluster 0: mean (3, 0), largest entries 4, 4
    assert torch.allclose(cluster_means(units, labels, 2), torch.tensor([[4.0, 0.0], [1.0, 0.0]]))
    # the two-LoRA example: each mean's largest entry (1.1, 1.2) already is its members' mean largest entry
    # ((1 + 1.2) / 2, (1 + 1.4) / 2), so the L-infinity rescaling leaves the means as they are; the
    # Euclidean one does not
    assert torch.allclose(merged_units(lego_merge([LORA_1, LORA_2], rank=2)), MEANS, atol=1e-6)
    assert not torch.allclose(merged_units(lego_merge([LORA_1, LORA_2], rank=2, norm="2")), MEANS, atol=1e-3)


def test_an_unknown_norm_is_refused_with_the_choices():
    from slao.errors import ConfigError

    with pytest.raises(ConfigError, match="rescale_norm must be one of inf, 2; got 'l1'"):
        make(rescale_norm="l1")


def test_one_task_merges_to_itself_and_the_method_keeps_every_lora():
    m = make()
    assert m.init_lora(1, "fresh") == "fresh"
    first = m.after_task(1, LORA_1)
    A, B = first["l0.q_proj"]
    assert torch.allclose(B @ A, LORA_1["l0.q_proj"][1] @ LORA_1["l0.q_proj"][0])
    assert m.init_lora(2, "fresh") == "fresh"  # every task from PEFT's fresh init
    second = m.after_task(2, LORA_2)
    assert torch.allclose(merged_units(second), merged_units(lego_merge([LORA_1, LORA_2], rank=2)))
    assert len(m.loras) == 2
    assert m.stats() == {"units_pooled_per_layer": 4}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lora_lego_end_to_end(tmp_path, monkeypatch, one_thread):
    """Through the CLI: every task trained from PEFT's fresh init, each row scored with the rank-r LoRA
    clustered from all fine-tuned LoRAs so far."""
    from test_methods_e2e import run_method

    _, seen = run_method(tmp_path, monkeypatch, "lora-lego", "--tasks", "bbc-topic,rt-sentiment,rt-subjectivity")
    assert all(torch.equal(B, torch.zeros_like(B)) for start in seen["start"] for _, B in start.values())
    for t in range(1, 4):
        expected = lego_merge(seen["trained"][:t], rank=8)
        for n, (A, B) in seen["deployed"][t - 1].items():
            assert A.shape[0] == 8
            assert torch.allclose(A, expected[n][0]) and torch.allclose(B, expected[n][1]), (t, n)
