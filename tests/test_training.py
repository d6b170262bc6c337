"""The training loop's pieces: the loss (answer tokens only, computed on the answer positions alone) and
the order of examples in batches (plain shuffle, or grouped by length)."""

import pytest
import torch

from slao import train
from slao.config import TrainConfig
from slao.encoding import IGNORE, Encoded, training_batch
from slao.models import load_model
from slao.train import _answer_nll, answer_positions, step_batches


def test_answer_positions_point_at_the_token_before_each_answer_token():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    assert answer_positions(labels).tolist() == [[False, True, True, False], [True, False, False, False]]


@pytest.mark.parametrize("mask_supported", [True, False], ids=["mask", "positions"])
def test_answer_loss_equals_the_full_logits_cross_entropy(monkeypatch, mask_supported):
    # "positions": the path for transformers releases whose logits_to_keep takes no boolean mask
    monkeypatch.setattr(train, "_MASK_LOGITS_TO_KEEP", mask_supported and train._MASK_LOGITS_TO_KEEP)
    model, tok = load_model("tiny-random", seed=3)
    items = [Encoded([11, 12, 13, 14, 15], [21, 22, tok.eos_token_id]), Encoded([31, 32], [41, tok.eos_token_id])]
    ids, mask, labels = training_batch(items, tok.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(full.reshape(-1, full.size(-1)), labels[:, 1:].reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
        got = _answer_nll(model, ids, mask, labels)
    assert labels[:, 1:].ne(IGNORE).sum() == 5
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def _batches(n: int, lengths, seed: int = 0, **train) -> list[list[int]]:
    cfg = TrainConfig(**train)
    return step_batches(n, cfg, torch.Generator().manual_seed(seed), lengths)


@pytest.mark.parametrize("epochs", [1.0, 2.0, 1.5])
def test_group_by_length_covers_each_example_once_per_epoch(epochs: float) -> None:
    n, size = 1037, 4
    lengths = [(k * 7919) % 300 + 1 for k in range(n)]
    batches = _batches(n, lengths, epochs=epochs, batch_size=size, group_by_length=True)
    assert batches == _batches(n, lengths, epochs=epochs, batch_size=size, group_by_length=True)
    assert batches != _batches(n, lengths, seed=1, epochs=epochs, batch_size=size, group_by_length=True)
    flat = [k for b in batches for k in b]
    assert len(flat) == round(n * epochs) and all(1 <= len(b) <= size for b in batches)
    # walk the batches epoch by epoch: each full epoch holds every example exactly once
    seen: list[int] = []
    for batch in batches:
        seen += batch
        if len(seen) == n:
            assert sorted(seen) == list(range(n))
            seen = []
    assert len(set(seen)) == len(seen) == round(n * epochs) % n


def test_group_by_length_pads_less_than_plain_shuffle() -> None:
    n = 800
    lengths = [(k * 7919) % 500 + 1 for k in range(n)]

    def padding(batches):
        return sum(max(lengths[k] for k in b) * len(b) - sum(lengths[k] for k in b) for b in batches)

    grouped = _batches(n, lengths, batch_size=8, group_by_length=True)
    plain = _batches(n, lengths, batch_size=8)
    assert padding(grouped) < 0.1 * padding(plain)
    assert sorted(k for b in grouped for k in b) == list(range(n))
    # batch order is shuffled: the longest batch is not always first
    assert [max(lengths[k] for k in b) for b in grouped] != sorted((max(lengths[k] for k in b) for b in grouped),
                                                                    reverse=True)


def test_plain_order_is_unchanged_by_lengths() -> None:
    lengths = list(range(50))
    assert _batches(50, lengths, batch_size=8) == _batches(50, None, batch_size=8)
    gen = torch.Generator().manual_seed(0)
    expected = torch.randperm(50, generator=gen).tolist()
    assert [k for b in _batches(50, None, batch_size=8) for k in b] == expected
