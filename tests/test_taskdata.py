"""The data a method may read: layer-input statistics from forward passes of the run's model (padding
left out, the cap respected, the LoRA on or off), and the adapter's swap-in context manager."""

from __future__ import annotations

import torch

from slao.config import LoraSettings
from slao.encoding import Encoded
from slao.lora import LoraAdapter
from slao.models import load_model
from slao.taskdata import TaskData


def adapter_and_data():
    model, tok = load_model("tiny-random", seed=0)
    adapter = LoraAdapter(model, LoraSettings())
    gen = torch.Generator().manual_seed(0)
    tasks = [[Encoded(torch.randint(5, 200, (n,), generator=gen).tolist(), [7, 8]) for n in (3, 9, 5)],
             [Encoded([11, 12, 13], [9])]]
    return adapter, tasks, tok.pad_token_id


def first_layer_inputs(adapter, seqs) -> torch.Tensor:
    """Layer 0's q_proj input computed by hand: the first RMSNorm of the token embeddings, per sequence."""
    inner = adapter.model.get_base_model().model
    rows = [inner.layers[0].input_layernorm(inner.embed_tokens(torch.tensor([s])))[0] for s in seqs]
    return torch.cat(rows).double()


def test_layer_inputs_are_the_real_tokens_inputs():
    adapter, tasks, pad = adapter_and_data()
    data = TaskData(adapter, torch.device("cpu"), tasks, 1, pad, max_examples=256, batch_size=2)
    sums, tokens = data.layer_inputs("current")
    seqs = [e.prompt + e.answer for e in tasks[0]]
    assert tokens == sum(len(s) for s in seqs)  # padding is not counted
    X = first_layer_inputs(adapter, seqs)
    name = next(n for n in sums if n.endswith("layers.0.self_attn.q_proj"))
    assert torch.allclose(sums[name], X.T @ X, atol=1e-4, rtol=1e-4)
    assert set(sums) == set(adapter.shapes())
    # the cap takes the first examples in order
    capped, n = data.layer_inputs("current", max_examples=1)
    X1 = first_layer_inputs(adapter, seqs[:1])
    assert n == len(seqs[0]) and torch.allclose(capped[name], X1.T @ X1, atol=1e-4, rtol=1e-4)


def test_per_sequence_max_is_peft_corda_covariance():
    # each example's inputs divided by |max| (the largest entry), X^T X averaged over examples; batching and
    # padding do not enter (batch_size=2 pads the shorter of each pair)
    adapter, tasks, pad = adapter_and_data()
    data = TaskData(adapter, torch.device("cpu"), tasks, 1, pad, max_examples=256, batch_size=2)
    covs, tokens = data.layer_inputs("current", per_sequence_max=True)
    seqs = [e.prompt + e.answer for e in tasks[0]]
    assert tokens == sum(len(s) for s in seqs)
    expected = 0
    for s in seqs:
        X = first_layer_inputs(adapter, [s])
        X = X / X.max().abs()
        expected = expected + X.T @ X / len(seqs)
    name = next(n for n in covs if n.endswith("layers.0.self_attn.q_proj"))
    assert torch.allclose(covs[name], expected, atol=1e-5, rtol=1e-4)
    summed, _ = data.layer_inputs("current")
    assert not torch.allclose(summed[name], covs[name], rtol=0.1)  # the plain token sum is another matrix


def test_which_examples_and_adapter_switch():
    adapter, tasks, pad = adapter_and_data()
    second = TaskData(adapter, torch.device("cpu"), tasks, 2, pad)
    assert second.examples("current") == tasks[1]
    assert second.examples("previous") == tasks[0]
    assert second.examples("seen") == tasks[0] + tasks[1]
    # a cap over several tasks takes an equal share of each, in order
    assert second.capped("seen", 2) == [tasks[0][0], tasks[1][0]]
    assert second.capped("previous", 2) == tasks[0][:2]
    assert second.capped("current", 5) == tasks[1]
    W = second.base_weights()
    assert set(W) == set(adapter.shapes()) and all(tuple(w.shape) == adapter.shapes()[n] for n, w in W.items())
    assert second.scaling == 32 / 8
    # a LoRA that changes layer 0's output changes layer 1's inputs, unless the adapter is switched off
    weights = {n: (torch.randn(8, i), torch.randn(o, 8)) for n, (o, i) in adapter.shapes().items()}
    adapter.model.train()
    off, _ = second.layer_inputs("seen", adapter=False)
    assert adapter.model.training  # the passes ran in eval mode, and the mode was put back
    adapter.set(weights)
    on, _ = second.layer_inputs("seen")
    off_again, _ = second.layer_inputs("seen", adapter=False)
    layer1 = next(n for n in on if "layers.1." in n)
    assert not torch.allclose(on[layer1], off[layer1])
    assert torch.allclose(off_again[layer1], off[layer1])


def test_using_swaps_in_and_back():
    adapter, _, _ = adapter_and_data()
    before = adapter.get()
    other = {n: (torch.ones(4, i), torch.ones(o, 4)) for n, (o, i) in adapter.shapes().items()}  # another rank
    with adapter.using(other):
        inside = adapter.get()
        assert all(torch.equal(inside[n][0], other[n][0]) for n in other)
    after = adapter.get()
    assert all(torch.equal(after[n][0], before[n][0]) and torch.equal(after[n][1], before[n][1]) for n in before)
    with adapter.using(None):
        assert all(torch.equal(adapter.get()[n][0], before[n][0]) for n in before)
