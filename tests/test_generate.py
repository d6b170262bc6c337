"""Batched greedy generation (left padding, prompts of different lengths) gives the same answers as one
prompt at a time, on the tiny random Llama with and without a LoRA."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from slao.config import EvalConfig
from slao.evaluate import generate, left_pad
from slao.models import load_model

TEXTS = [
    "Is this review fresh or rotten?",
    "The film is a tedious, overlong mess.",
    "ok",
    "Classify the topic of this article: the central bank raised interest rates again on Thursday, "
    "citing inflation that has stayed above target for two years.",
    "A warm and funny story about growing up.",
    "word: happy",
    "Answer with positive or negative. word: gloom",
    "Plot: a detective returns to the town where he grew up and finds that nobody remembers him.",
    "Headline: striker signs a new contract with the club until 2027",
    "x y z",
    "Is this sentence subjective or objective? The movie runs two hours.",
]


@pytest.fixture(scope="module")
def tiny():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = load_model("tiny-random", seed=0)
    yield model, tok
    torch.set_num_threads(before)


def test_left_pad_puts_padding_first():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("with_lora", [False, True])
def test_batched_generation_equals_one_prompt_at_a_time(tiny, with_lora):
    model, tok = tiny
    if with_lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in prompts}) >= 8  # lengths differ: batches are padded
    try:
        one = generate(model, tok, prompts, EvalConfig(batch_size=1, max_new_tokens=12), show=False)
        batched = generate(model, tok, prompts, EvalConfig(batch_size=8, max_new_tokens=12), show=False)
    finally:
        if with_lora:
            model.unload()  # the fixture's base model stays plain for the other cases
    assert any(one)  # the answers are not all empty, so equal lists do say something
    assert batched == one
