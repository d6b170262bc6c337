"""Fuzzing weights from elsewhere: PEFT adapter folders (adapter_config.json and safetensors) and
checkpoints whose tensor files were replaced. The harness, the property and the example counts are in
fuzzing.py."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as save_tensors

from fuzzing import contents, dump_json, fuzz, mutate, outcome, values, write_files
from slao import checkpoint
from slao.errors import SlaoError
from slao.lora import load_adapter_weights

pytestmark = pytest.mark.fuzz


# -- adapter folders -------------------------------------------------------------------------------------
BASE = "tiny-random(seed=0)"
SHAPES = {"model.layers.0.self_attn.q_proj": (6, 4), "model.layers.0.self_attn.v_proj": (3, 4)}
ADAPTER_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": BASE, "r": 2, "lora_alpha": 4.0,
                  "target_modules": ["q_proj", "v_proj"], "rank_pattern": {}, "alpha_pattern": {},
                  "use_rslora": False, "use_dora": False, "bias": "none", "task_type": "CAUSAL_LM"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8, torch.bool]


@st.composite
def adapter_tensors(draw) -> dict[str, torch.Tensor]:
    """Near-valid LoRA tensors for SHAPES: some with another rank, shape, dtype, NaN or inf, or missing."""
    out = {}
    for layer, (n_out, n_in) in SHAPES.items():
        for ab, shape in (("A", [2, n_in]), ("B", [n_out, 2])):
            key = f"base_model.model.{layer}.lora_{ab}.weight"
            change = draw(st.sampled_from(["none"] * 6 + ["rank", "shape", "dims", "dtype", "nan", "inf", "drop",
                                                          "rename"]))
            if change == "drop":
                continue
            if change == "rank":
                shape[0 if ab == "A" else 1] = draw(st.integers(1, 4))
            elif change == "shape":
                shape[1 if ab == "A" else 0] = draw(st.integers(0, 7))
            elif change == "dims":
                shape = draw(st.lists(st.integers(1, 3), max_size=3))
            tensor = torch.randn(shape).to(draw(st.sampled_from(DTYPES)) if change == "dtype" else torch.float32)
            if change in ("nan", "inf") and tensor.numel():
                tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = float(change)
            if change == "rename":
                key = draw(st.sampled_from([key.replace(".weight", ".bias"), key.replace(layer, "model.x"), "w"]))
            out[key] = tensor.contiguous()
    return out


def _header_length(data: bytes, draw) -> bytes:
    """``data`` with the header length (its first 8 bytes, little-endian u64) replaced."""
    n = draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, len(data), len(data) - 8, 2**63, 2**64 - 1]),
                       st.just(max(len(data) - 9, 0))))
    return n.to_bytes(8, "little") + data[8:]


@st.composite
def adapter_files(draw) -> dict[str, bytes | None]:
    config = dict(ADAPTER_CONFIG)
    for key in draw(st.sets(st.sampled_from(sorted(config) + ["layers_pattern"]), max_size=3)):
        config[key] = draw(st.one_of(
            values, st.integers(-8, 8), st.floats(), st.sampled_from(["q_proj", ".*proj", "(", "all-linear"]),
            st.lists(st.sampled_from(["q_proj", "v_proj", "k_proj", "", "self_attn.q_proj"]), max_size=3)))
        if draw(st.booleans()):
            del config[key]
    weights = save_tensors(draw(adapter_tensors()))
    how = draw(st.sampled_from(["tensors", "tensors", "bytes", "length", "random", "config-bytes", "none"]))
    if how == "bytes":
        weights = draw(mutate(weights))
    elif how == "length":
        weights = _header_length(weights, draw)
    elif how == "random":
        weights = draw(st.binary(max_size=64))
    config_bytes = dump_json(config).encode()
    if how == "config-bytes":
        config_bytes = draw(contents(st.just(config_bytes)))
    elif how == "none":
        config_bytes, weights = draw(st.sampled_from([(None, weights), (config_bytes, None)]))
    return {"adapter_config.json": config_bytes, "adapter_model.safetensors": weights}


@fuzz(80)
@given(files=adapter_files())
def test_fuzz_adapter_folder(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapter"
        root.mkdir()
        names = write_files(root, files)
        result = outcome(lambda: load_adapter_weights(root, BASE, SHAPES), names + [str(root)])
        if isinstance(result, SlaoError):
            return
        config, weights = result  # what loads is what the docstring promises
        assert type(config["r"]) is int and config["r"] >= 1
        assert 0 < float(config["lora_alpha"]) < float("inf")
        assert set(weights) == set(SHAPES)
        for layer, (A, B) in weights.items():
            assert A.shape == (config["r"], SHAPES[layer][1]) and B.shape == (SHAPES[layer][0], config["r"])
            assert A.is_floating_point() and B.is_floating_point()
            assert bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())


# -- checkpoints from elsewhere ---------------------------------------------------------------------------
META = {"method": "slao", "base_model": BASE, "tasks": "a,b"}


@st.composite
def checkpoint_tensors(draw, valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in valid.items():
        change = draw(st.sampled_from(["none"] * 4 + ["dtype", "nan", "inf", "shape", "drop"]))
        if change == "drop":
            continue
        if change == "dtype":
            tensor = tensor.to(draw(st.sampled_from(DTYPES)))
        elif change in ("nan", "inf") and tensor.is_floating_point():
            tensor = tensor.clone()
            tensor.view(-1)[0] = float(change)
        elif change == "shape":
            tensor = torch.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), dtype=tensor.dtype)
        out[key] = tensor.contiguous()
    return out


def _valid_checkpoint(run: Path) -> Path:
    state = {"merged/l/A": torch.ones(2, 3), "merged/l/B": torch.ones(4, 2)}
    deploy = {"deploy/l/A": torch.ones(2, 3), "deploy/l/B": torch.ones(4, 2)}
    return checkpoint.save(run, 1, {"accuracy": [[50.0]]}, state, deploy, META)


@fuzz(40)
@given(data=st.data(), which=st.sampled_from(checkpoint.TENSOR_FILES),
       how=st.sampled_from(["tensors", "tensors", "bytes", "length"]))
def test_fuzz_checkpoint_from_elsewhere(data, which, how):
    """A checkpoint whose tensor file was replaced and whose checksum was updated to match it."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = _valid_checkpoint(Path(tmp))
        path = folder / which
        if how == "tensors":
            content = save_tensors(data.draw(checkpoint_tensors(load_file(str(path)))))
        elif how == "bytes":
            content = data.draw(mutate(path.read_bytes()))
        else:
            content = _header_length(path.read_bytes(), data.draw)
        path.write_bytes(content)
        progress = json.loads((folder / "progress.json").read_text())
        progress["sha256"][which] = checkpoint._sha256(path)
        (folder / "progress.json").write_text(json.dumps(progress))
        result = outcome(lambda: checkpoint.load(folder, META), [str(path), str(folder)])
        if isinstance(result, SlaoError):
            return
        for tensors in (result.state, result.deploy):
            assert all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors.values())
        assert result.rng["0/torch"].dtype == torch.uint8
        assert result.rng["0/torch"].shape == torch.get_rng_state().shape
