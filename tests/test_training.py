"""The training loss: answer tokens only, computed on the answer positions alone."""

import torch

from slao.encoding import IGNORE, Encoded, training_batch
from slao.models import load_model
from slao.train import _answer_nll, answer_positions


def test_answer_positions_point_at_the_token_before_each_answer_token():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    assert answer_positions(labels).tolist() == [[False, True, True, False], [True, False, False, False]]


def test_answer_loss_equals_the_full_logits_cross_entropy():
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
