"""Files and settings from users are refused before anything is half-loaded: checkpoints, adapter folders,
task names that would leave the run folder, trust_remote_code, and a loss that becomes NaN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from slao import checkpoint
from slao.checkpoint import CheckpointError
from slao.cli import main
from slao.config import LoraSettings, RunConfig, build_config
from slao.lora import AdapterError, LoraAdapter, load_adapter_weights
from slao.models import load_model
from slao.train import TrainingDiverged

SRC = Path(__file__).resolve().parents[1] / "src" / "slao"
BASE = "tiny-random(seed=0)"
META = {"method": "slao", "base_model": BASE, "tasks": "a,b"}


# -- checkpoints ------------------------------------------------------------------------------------
def _state():
    g = torch.Generator().manual_seed(1)
    return {"merged/l/A": torch.randn(2, 3, generator=g), "merged/l/B": torch.randn(4, 2, generator=g)}


def _save(run, k=1, meta=META):
    deploy = {"deploy/l/A": torch.ones(2, 3), "deploy/l/B": torch.ones(4, 2)}
    return checkpoint.save(run, k, {"accuracy": [[50.0]]}, _state(), deploy, meta)


def test_checkpoint_round_trip_keeps_rng_apart_from_the_method_state(tmp_path):
    torch.manual_seed(5)
    folder = _save(tmp_path)
    expected = torch.rand(3)  # what the next draw was when the checkpoint was written
    loaded = checkpoint.load(folder, META)
    assert set(loaded.state) == set(_state())  # nothing reserved in the method state: its bytes stay truthful
    assert all(torch.equal(loaded.state[k], v) for k, v in _state().items())
    assert loaded.progress["accuracy"] == [[50.0]] and loaded.progress["tasks_done"] == 1
    assert loaded.rng["0/torch"].dtype == torch.uint8
    torch.manual_seed(99)
    checkpoint.set_rng_state(checkpoint.unpack_rng(loaded.rng, 0))
    assert torch.equal(torch.rand(3), expected)


def test_each_process_gets_its_own_rng_state_back():
    a, b = torch.manual_seed(1).get_state(), torch.manual_seed(2).get_state()
    packed = checkpoint.pack_rng([{"torch": a}, {"torch": b}])
    assert torch.equal(checkpoint.unpack_rng(packed, 1)["torch"], b)
    assert torch.equal(checkpoint.unpack_rng(packed, 0)["torch"], a)
    assert torch.equal(checkpoint.unpack_rng(packed, 5)["torch"], a)  # more processes than the run had


def test_latest_ignores_unfinished_writes_and_keeps_only_the_newest(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "checkpoints" / ".tmp-abc").mkdir()  # a write killed half-way
    assert checkpoint.latest(tmp_path).name == "task-0001"
    _save(tmp_path, 2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["task-0002"]


@pytest.mark.parametrize("name", ["state.safetensors", "deploy.safetensors", "rng.safetensors"])
def test_truncated_checkpoint_file_is_refused(tmp_path, name):
    folder = _save(tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{name} is missing, truncated or changed"):
        checkpoint.load(folder, META)


@pytest.mark.parametrize("key, value", [("method", "seq-lora"), ("base_model", "smollm2-135m")])
def test_checkpoint_of_another_method_or_model_is_refused(tmp_path, key, value):
    folder = _save(tmp_path, meta={**META, key: value})
    with pytest.raises(CheckpointError, match=f"written for {key} '{value}'.*refusing"):
        checkpoint.load(folder, META)


def test_checkpoint_of_another_format_or_unreadable_is_refused(tmp_path):
    folder = _save(tmp_path)
    body = json.loads((folder / "progress.json").read_text())
    (folder / "progress.json").write_text(json.dumps({**body, "format": 1}))
    with pytest.raises(CheckpointError, match="format 1"):
        checkpoint.load(folder, META)
    (folder / "progress.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable") as err:
        checkpoint.load(folder, META)
    assert err.value.exit_status == 2


# -- adapter folders --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model, _ = load_model("tiny-random")
    adapter = LoraAdapter(model, LoraSettings())
    weights = adapter.default_init(torch.Generator().manual_seed(0))
    weights = {n: (A, torch.full_like(B, 0.5)) for n, (A, B) in weights.items()}
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    adapter.export(weights, out, BASE)
    return out, weights, adapter.shapes()


def _copy(adapter_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(adapter_dir[0], folder)
    return folder


def test_adapter_reads_back_exactly(adapter_dir):
    folder, weights, shapes = adapter_dir
    config, loaded = load_adapter_weights(folder, BASE, shapes)
    assert config["r"] == 8 and set(loaded) == set(weights)
    assert all(torch.equal(loaded[n][0], A) and torch.equal(loaded[n][1], B) for n, (A, B) in weights.items())


def test_adapter_of_another_base_model_is_refused(adapter_dir):
    with pytest.raises(AdapterError, match=r"trained on base model 'tiny-random\(seed=0\)', not on 'smollm2-135m'"):
        load_adapter_weights(adapter_dir[0], "smollm2-135m")


def test_truncated_adapter_is_refused(adapter_dir, tmp_path):
    folder = _copy(adapter_dir, tmp_path)
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterError, match="truncated or not a safetensors file") as err:
        load_adapter_weights(folder, BASE)
    assert err.value.exit_status == 2


def test_adapter_with_missing_or_pickled_files_is_refused(adapter_dir, tmp_path):
    folder = _copy(adapter_dir, tmp_path)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"no adapter_model.safetensors \(a .bin adapter is never read"):
        load_adapter_weights(folder, BASE)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_adapter_weights(folder, BASE)


def test_adapter_that_does_not_fit_the_model_is_refused(adapter_dir):
    folder, _, shapes = adapter_dir
    with pytest.raises(AdapterError, match="does not fit the model"):
        load_adapter_weights(folder, BASE, {**shapes, "model.layers.9.self_attn.q_proj": (64, 64)})


def _edit_config(folder, **fields):
    config = json.loads((folder / "adapter_config.json").read_text())
    for key, value in fields.items():
        if value is _DROP:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _edit_tensors(folder, change):
    """Rewrite adapter_model.safetensors with ``change(tensors)`` applied."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


_DROP = object()
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize("fields, problem", [
    ({"r": -5}, r"field 'r' \(the LoRA rank\) must be a positive integer, got -5"),
    ({"r": 0}, "field 'r'.*got 0"),
    ({"r": "8"}, "field 'r'.*got '8'"),
    ({"r": True}, "field 'r'.*got True"),
    ({"r": _DROP}, "field 'r'.*got None"),
    ({"r": 4}, r"rank 8 in the weights, but field 'r' of adapter_config.json says 4"),
    ({"lora_alpha": 0}, "field 'lora_alpha' must be a finite number > 0, got 0"),
    ({"lora_alpha": -32}, "field 'lora_alpha'.*got -32"),
    ({"lora_alpha": float("nan")}, "field 'lora_alpha'.*got nan"),
    ({"lora_alpha": float("inf")}, "field 'lora_alpha'.*got inf"),
    ({"lora_alpha": "32"}, "field 'lora_alpha'.*got '32'"),
    ({"lora_alpha": _DROP}, "field 'lora_alpha'.*got None"),
    ({"target_modules": ["k_proj"]}, r"layer 'model.layers.0.self_attn.q_proj': not matched by field 'target_modules'"),
    ({"target_modules": ".*k_proj"}, "not matched by field 'target_modules'"),
    ({"target_modules": "(q_proj"}, "field 'target_modules' is not a valid pattern"),
    ({"target_modules": 5}, "field 'target_modules' must be a list of module names or a pattern, got 5"),
    ({"target_modules": []}, "field 'target_modules' must be a list"),
    ({"target_modules": ["q_proj", 3]}, "field 'target_modules' must be a list"),
    ({"use_dora": True}, "field 'use_dora' is True: DoRA is not read"),
    ({"use_rslora": True}, "field 'use_rslora' is True"),
    ({"rank_pattern": {"q_proj": 4}}, "field 'rank_pattern'.*per-layer ranks"),
    ({"alpha_pattern": {"q_proj": 4}}, "field 'alpha_pattern'"),
    ({"peft_type": "IA3"}, "field 'peft_type' must be LORA"),
])
def test_adapter_config_is_checked_field_by_field(adapter_dir, tmp_path, fields, problem):
    folder = _copy(adapter_dir, tmp_path)
    _edit_config(folder, **fields)
    with pytest.raises(AdapterError, match=problem) as err:
        load_adapter_weights(folder, BASE, adapter_dir[2])
    message = str(err.value)
    assert "\n" not in message and err.value.exit_status == 2
    assert str(folder) in message  # the file, or the folder for a foreign base model


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["self_attn.q_proj", "v_proj", "k_proj"],
                                     r"model\.layers\.\d+\.self_attn\.(q|v)_proj", "all-linear"])
def test_adapter_target_modules_in_every_peft_form_are_read(adapter_dir, tmp_path, targets):
    folder = _copy(adapter_dir, tmp_path)
    _edit_config(folder, target_modules=targets)
    _, loaded = load_adapter_weights(folder, BASE, adapter_dir[2])
    assert set(loaded) == set(adapter_dir[1])


@pytest.mark.parametrize("change, problem", [
    (lambda t: t.__setitem__(Q_A, t[Q_A].to(torch.int32)), f"tensor '{Q_A}': dtype I32 is not floating"),
    (lambda t: t.__setitem__(Q_B, t[Q_B].to(torch.float64).to(torch.uint8)), "dtype U8 is not floating"),
    (lambda t: t.__setitem__(Q_A, t[Q_A][:, :63]), "layer model.layers.0.self_attn.q_proj is \\(64, 63\\) in "
                                                   "adapter_model.safetensors, \\(64, 64\\) in the model"),
    (lambda t: t.__setitem__(Q_A, t[Q_A][0]), "lora_A \\[64\\] and lora_B \\[64, 8\\] must be matrices"),
    (lambda t: t.pop(Q_B), "layer 'model.layers.0.self_attn.q_proj': lora_B is missing"),
    (lambda t: t[Q_B].view(-1).__setitem__(5, float("nan")),
     "layer 'model.layers.0.self_attn.q_proj': lora_B holds NaN or infinite values"),
    (lambda t: t[Q_A].view(-1).__setitem__(0, float("-inf")), "q_proj': lora_A holds NaN or infinite values"),
    (lambda t: t.__setitem__("base_model.model.lm_head.weight", torch.ones(2, 2)), "is not a LoRA A or B weight"),
])
def test_adapter_weights_are_checked_before_use(adapter_dir, tmp_path, change, problem):
    folder = _copy(adapter_dir, tmp_path)
    _edit_tensors(folder, change)
    with pytest.raises(AdapterError, match=problem) as err:
        load_adapter_weights(folder, BASE, adapter_dir[2])
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_adapter_in_bf16_is_read(adapter_dir, tmp_path):
    folder = _copy(adapter_dir, tmp_path)
    _edit_tensors(folder, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    _, loaded = load_adapter_weights(folder, BASE, adapter_dir[2])
    assert all(A.dtype == torch.bfloat16 for A, _ in loaded.values())


@pytest.mark.parametrize("length, problem", [
    (200 * 2**20, r"header: its length field says 209715200 bytes, more than the 104857600 allowed"),
    (2**64 - 1, "more than the 104857600 allowed"),
    (20_000, r"header: its length field says 20000 bytes, but only \d+ follow"),
])
def test_adapter_header_length_is_bounded_before_anything_is_read(adapter_dir, tmp_path, monkeypatch, length, problem):
    import slao.tensorfile

    def never(*args, **kwargs):
        raise AssertionError("tensors read before the header was checked")

    monkeypatch.setattr(slao.tensorfile, "load_file", never)
    folder = _copy(adapter_dir, tmp_path)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + path.read_bytes()[8:])
    with pytest.raises(AdapterError, match=problem) as err:
        load_adapter_weights(folder, BASE)
    assert str(path) in str(err.value)


def test_slao_eval_refuses_a_negative_rank_in_one_line(adapter_dir, tmp_path, capsys):
    folder = _copy(adapter_dir, tmp_path)
    _edit_config(folder, r=-5)
    code = main(["eval", "--adapter", str(folder), "--model", "tiny-random", "--tasks", "bbc-topic",
                 "--set", "data.test_per_task=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == (f"slao: error: {folder / 'adapter_config.json'}: field 'r' (the LoRA rank) must be a positive "
                   "integer, got -5\n")


# -- checkpoints from elsewhere: consistent checksums, bad content ---------------------------------------
def _replace(folder, name, tensors=None, data=None):
    """Write a checkpoint tensor file anew and make progress.json's checksum match it."""
    from safetensors.torch import save_file

    path = folder / name
    if tensors is not None:
        save_file(tensors, str(path))
    else:
        path.write_bytes(data)
    body = json.loads((folder / "progress.json").read_text())
    body["sha256"][name] = checkpoint._sha256(path)
    (folder / "progress.json").write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("name, tensors, problem", [
    ("state.safetensors", {**_state(), "merged/l/B": torch.full((4, 2), float("nan"))},
     "tensor 'merged/l/B' holds NaN or infinite values"),
    ("state.safetensors", {**_state(), "merged/l/A": torch.ones(2, 3, dtype=torch.int64)},
     "tensor 'merged/l/A' has dtype I64, not F16 or BF16 or F32 or F64"),
    ("state.safetensors", {**_state(), "merged/l/A": torch.ones(5, 3)}, r"\(r=5\) has no merged/l/B of shape"),
    ("deploy.safetensors", {"deploy/l/A": torch.ones(2, 3)}, "has no deploy/l/B"),
    ("deploy.safetensors", {"deploy/l/A": torch.ones(2, 3), "deploy/l/B": torch.ones(4, 2, 1)}, "not a matrix"),
    ("rng.safetensors", {"0/torch": torch.ones(16, dtype=torch.uint8)}, "RNG state '0/torch' has shape \\[16\\]"),
    ("rng.safetensors", {"0/torch": torch.ones(5056)}, "has dtype F32, not U8"),
])
def test_checkpoint_tensors_are_checked_even_when_the_checksums_match(tmp_path, name, tensors, problem):
    folder = _save(tmp_path)
    path = _replace(folder, name, tensors)
    with pytest.raises(CheckpointError, match=problem) as err:
        checkpoint.load(folder, META)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_header_length_is_bounded(tmp_path):
    folder = _save(tmp_path)
    data = (folder / "state.safetensors").read_bytes()
    path = _replace(folder, "state.safetensors", data=(2**40).to_bytes(8, "little") + data[8:])
    with pytest.raises(CheckpointError, match=f"{path}: header: its length field says {2**40} bytes, more than"):
        checkpoint.load(folder, META)


def test_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path):
    folder = _save(tmp_path)
    assert checkpoint.load(folder, META, shapes={"l": (4, 3)}).state
    with pytest.raises(CheckpointError, match=r"tensor 'merged/l/A' has shape \[2, 3\], which does not fit layer l "
                                              r"\(4, 5\) of the model"):
        checkpoint.load(folder, META, shapes={"l": (4, 5)})


def test_only_safetensors_json_and_yaml_are_read():
    """No pickle-based loader anywhere in the package: a run folder or adapter cannot run code."""
    offenders = [p.name for p in SRC.rglob("*.py")
                 if any(bad in p.read_text() for bad in ("torch.load(", "import pickle", "yaml.load(",
                                                         "yaml.unsafe_load"))]
    assert offenders == []


# -- task names and remote code ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "..\\x"])
def test_task_names_that_escape_the_run_folder_are_refused(tmp_path, capsys, name):
    code = main(["run", "--model", "tiny-random", "--benchmark", "jsonl", "--data-dir", str(tmp_path),
                 "--tasks", f"ok,{name}", "--output", str(tmp_path / "out")])
    assert code == 2
    assert f"unsafe task name {name!r}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_trust_remote_code_is_off_unless_set():
    assert RunConfig().trust_remote_code is False
    assert build_config({}).trust_remote_code is False
    assert build_config({"trust_remote_code": True}).trust_remote_code is True


@pytest.mark.parametrize("flag", [False, True])
def test_load_model_passes_trust_remote_code_through(tmp_path, monkeypatch, flag):
    seen = []

    class Stop(Exception):
        pass

    def record(source, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise Stop

    import slao.models

    monkeypatch.setattr(slao.models.AutoTokenizer, "from_pretrained", record)
    with pytest.raises(Stop):
        load_model(str(tmp_path), trust_remote_code=flag)
    assert seen == [flag]


def test_run_passes_the_setting_to_load_model(monkeypatch, tmp_path, capsys):
    import slao.models

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise TrainingDiverged("stop here")  # any SlaoError ends the run cleanly

    monkeypatch.setattr(slao.models, "load_model", fake)
    base = ["run", "--tasks", "bbc-topic", "--set", "data.train_per_task=4", "--set", "data.test_per_task=2"]
    assert main([*base, "--output", str(tmp_path / "a")]) == 3
    assert seen["trust_remote_code"] is False
    assert main([*base, "--trust-remote-code", "--output", str(tmp_path / "b")]) == 3
    assert seen["trust_remote_code"] is True


# -- a loss that becomes NaN ------------------------------------------------------------------------
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from slao.methods.slao import SlaoMethod

    def poisoned(self, i, params):  # the loss of task 2 becomes NaN at its first step
        return torch.tensor(float("nan")) if i == 2 else None

    monkeypatch.setattr(SlaoMethod, "extra_loss", poisoned)
    out = tmp_path / "run"
    code = main(["run", "--method", "slao", "--tasks", "bbc-topic,rt-sentiment", "--output", str(out),
                 "--set", "data.train_per_task=8", "--set", "data.test_per_task=2", "--set", "train.batch_size=4",
                 "--set", "eval.max_new_tokens=2"])
    err = capsys.readouterr().err
    assert code == 3
    assert "the loss became nan at task 2 (rt-sentiment), step 1" in err and "Traceback" not in err
    last = checkpoint.latest(out)
    assert last.name == "task-0001"
    loaded = checkpoint.load(last, {"method": "slao", "base_model": BASE})
    assert loaded.progress["accuracy"][0][0] is not None and loaded.state
    assert not json.loads((out / "results.json").read_text())["finished"]
