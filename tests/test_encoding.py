"""Prompt encoding: what truncation cuts (the passage, never the question or the frame) and the BOS token."""

from __future__ import annotations

import pytest

from slao.data.task import Example, Task
from slao.encoding import TaskEncoder
from slao.models import build_tiny_tokenizer

PASSAGE = " ".join(f"The river town had {i} bridges and a market by the water." for i in range(40))
QUESTION = "question: How many bridges did the town have in the end?"
CANDIDATE = "candidate answer: thirty nine"


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _task(text: str) -> Task:
    example = Example(text=text, answers=("True",))
    return Task(name="multirc", prefix="Task:MultiRC\nDataset:MultiRC\nOption: False, True \n",
                suffix="\nAnswer:", options=["False", "True"], train=[example], test=[example])


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_long_passage_is_cut_and_the_question_and_candidate_answer_kept(tok) -> None:
    # MultiRC's published layout: the paragraph first, then the question and the candidate answer
    text = f"paragraph: {PASSAGE}\n{QUESTION}\n{CANDIDATE}"
    task = _task(text)
    frame = len(_ids(tok, task.prefix + task.suffix))
    enc = TaskEncoder(tok, task, max_prompt_tokens=frame + 80)
    prompt = enc.prompt(task.test[0])
    assert len(prompt) <= enc.max_prompt_tokens and prompt[-len(enc.suffix):] == enc.suffix
    decoded = tok.decode(prompt)
    assert decoded.startswith(task.prefix + "paragraph: The river town had 0 bridges")
    assert decoded.endswith(f"\n{QUESTION}\n{CANDIDATE}\nAnswer:")
    assert PASSAGE not in decoded  # the passage is what was cut
    assert enc.train_example(task.train[0]).prompt == prompt


def test_a_passage_after_the_question_is_cut_from_its_end(tok) -> None:
    # BoolQ's layout: the question first, then the passage
    text = f"{QUESTION}\npassage: {PASSAGE}"
    task = _task(text)
    enc = TaskEncoder(tok, task, max_prompt_tokens=len(_ids(tok, task.prefix + task.suffix)) + 60)
    decoded = tok.decode(enc.prompt(task.test[0]))
    assert decoded.startswith(task.prefix + QUESTION + "\npassage: The river town")
    assert decoded.endswith("\nAnswer:") and PASSAGE not in decoded


def test_text_that_fits_is_encoded_whole_and_plain_text_is_cut_at_its_end(tok) -> None:
    short = f"paragraph: A short one.\n{QUESTION}\n{CANDIDATE}"
    task = _task(short)
    enc = TaskEncoder(tok, task, max_prompt_tokens=512)
    assert enc.prompt(task.test[0]) == _ids(tok, task.prefix) + _ids(tok, short) + _ids(tok, task.suffix)
    plain = _task(PASSAGE)
    enc = TaskEncoder(tok, plain, max_prompt_tokens=len(_ids(tok, plain.prefix + plain.suffix)) + 10)
    assert enc.prompt(plain.test[0]) == _ids(tok, plain.prefix) + _ids(tok, PASSAGE)[:10] + _ids(tok, plain.suffix)


@pytest.mark.parametrize(
    ("text", "passage"),
    [
        ("paragraph: P one. P two. \nquestion: Q?\ncandidate answer: A", " P one. P two. "),  # MultiRC
        ("question: is it q\npassage: P -- one.", " P -- one."),  # BoolQ
        ("Passage: P. \nQuestion: Q?", " P. "),  # SuperNI quoref
        ("story: S one. S two.\n selected sentence: S one.", " S one. S two."),  # SuperNI glucose
        ("sentence 1: a\nsentence 2: b", None),
        ("passage:  \nquestion: Q?", None),
    ],
)
def test_passage_span_finds_the_labelled_passage(text: str, passage: str | None) -> None:
    span = Example(text=text, answers=("x",)).passage_span
    assert (text[span[0]:span[1]] if span else None) == passage


def _bos_tokenizer(add_bos: bool):
    """The tiny tokenizer with a BOS token, added to plain calls or not (Llama-2's add_bos_token)."""
    from transformers import PreTrainedTokenizerFast

    base = build_tiny_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<|endoftext|>",
                                   eos_token=base.eos_token, pad_token=base.pad_token, add_bos_token=add_bos)


@pytest.mark.parametrize("add_bos", [True, False])
def test_prompts_start_with_bos_where_the_tokenizer_adds_it(add_bos: bool) -> None:
    bos_tok = _bos_tokenizer(add_bos)
    assert (bos_tok("hi")["input_ids"][0] == bos_tok.bos_token_id) is add_bos  # what the tokenizer itself does
    task = _task(f"paragraph: {PASSAGE}\n{QUESTION}\n{CANDIDATE}")
    plain = TaskEncoder(build_tiny_tokenizer(), task, 120)  # no BOS token at all (SmolLM2-like)
    enc = TaskEncoder(bos_tok, task, 120)
    train, test = enc.train_example(task.train[0]).prompt, enc.prompt(task.test[0])
    assert train == test and len(test) <= 120
    assert (test[0] == bos_tok.bos_token_id) is add_bos
    assert bos_tok.bos_token_id not in plain.prompt(task.test[0])
    if add_bos:
        # the BOS takes one token of the budget; the rest is what a tokenizer without BOS gives in 119
        assert test[1:] == TaskEncoder(build_tiny_tokenizer(), task, 119).prompt(task.test[0])
    else:
        assert test == plain.prompt(task.test[0])
