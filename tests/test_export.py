"""slao export RUN --merge-into-base OUT: the base model with the run's final LoRA folded into its weights,
loaded by plain transformers (no PEFT), answers as base + adapter through PEFT does; what it refuses."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from jsonl_tasks import write_jsonl_tasks
from slao.cli import main
from slao.config import EvalConfig
from slao.data import load_tasks
from slao.encoding import TaskEncoder
from slao.evaluate import generate, left_pad
from slao.models import load_model

TASKS = ["alpha", "beta", "gamma"]
ALPHA, RANK = 32.0, 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_jsonl_tasks(root / "data", TASKS, 12, 6, options=True)
    run = root / "run"
    assert main(["run", "--method", "slao", "--model", "tiny-random", "--benchmark", "jsonl", "--data-dir",
                 str(data), "--tasks", ",".join(TASKS), "--output", str(run), "--set", "train.lr=2e-2",
                 "--set", "train.epochs=2", "--set", "train.batch_size=4", "--set", "eval.max_new_tokens=4"]) == 0
    out = root / "merged"
    assert main(["export", str(run), "--merge-into-base", str(out)]) == 0
    return data, run, out


def _prompts(data, tok):
    return [TaskEncoder(tok, t, 256).prompt(x) for t in load_tasks("jsonl", TASKS, data, 0) for x in t.test]


def test_folder_is_a_plain_safetensors_model(exported):
    _, run, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not any(n.startswith("adapter") or n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert json.loads((out / "slao_export.json").read_text())["base_model"] == "tiny-random(seed=0)"
    assert not list(out.parent.glob(".merged.*"))  # no temporary folder left behind


def test_merged_weights_are_base_plus_scaled_lora(exported):
    _, run, out = exported
    base, _ = load_model("tiny-random", seed=0)
    base_sd = base.state_dict()
    merged = load_file(str(out / "model.safetensors"))
    lora = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    folded = 0
    for key, W0 in base_sd.items():
        if key == "lm_head.weight" and key not in merged:  # tied to the embeddings, saved once
            continue
        layer = key.removesuffix(".weight")
        a_key = f"base_model.model.{layer}.lora_A.weight"
        if a_key in lora:
            delta = (ALPHA / RANK) * lora[a_key.replace("lora_A", "lora_B")] @ lora[a_key]
            assert delta.abs().max() > 1e-3, "a LoRA of zeros would prove nothing"
            torch.testing.assert_close(merged[key], W0 + delta, rtol=1e-5, atol=1e-6)
            folded += 1
        else:
            assert torch.equal(merged[key], W0), key  # everything else is the base model's
    assert folded == 4  # q_proj and v_proj of both layers


def test_plain_transformers_answers_like_base_plus_adapter(exported):
    data, run, out = exported
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    base, ref_tok = load_model("tiny-random", seed=0)
    reference = PeftModel.from_pretrained(base, str(run / "adapter"))
    prompts = _prompts(data, tok)
    assert prompts == _prompts(data, ref_tok) and len(prompts) == 18
    cfg = EvalConfig(max_new_tokens=8)
    answers = generate(model, tok, prompts, cfg, show=False)
    assert answers == generate(reference, ref_tok, prompts, cfg, show=False)
    assert any(answers)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   reference(input_ids=ids, attention_mask=mask).logits, rtol=1e-4, atol=1e-5)
        # 12 greedy tokens past the end of sequence too: the same token ids all the way
        longer = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
        torch.testing.assert_close(model.generate(input_ids=ids, attention_mask=mask, **longer),
                                   reference.generate(input_ids=ids, attention_mask=mask, **longer), rtol=0, atol=0)
    # and like the run itself: its final predictions came from the same merged LoRA
    predictions = json.loads((run / "predictions.json").read_text())
    four = generate(model, tok, prompts, EvalConfig(max_new_tokens=4), show=False)
    assert four == [p["prediction"] for t in TASKS for p in predictions[t]]


def test_existing_output_is_refused_unless_forced(exported, tmp_path, capsys):
    _, run, _ = exported
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--merge-into-base", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").exists()
    assert main(["export", str(run), "--merge-into-base", str(out), "--force", "--dtype", "bfloat16"]) == 0
    assert not (out / "notes.txt").exists()
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert main(["export", str(run), "--merge-into-base", str(run / "inside"), "--force"]) == 2
    assert "outside the run folder" in capsys.readouterr().err and not (run / "inside").exists()


def test_unfinished_or_foreign_runs_are_refused(exported, tmp_path, capsys):
    _, run, _ = exported
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["export", str(half), "--merge-into-base", str(tmp_path / "o")]) == 2
    assert f"slao run --resume {half}" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--merge-into-base", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text().replace("seed: 0", "seed: 1"))
    (other / "adapter").symlink_to(run / "adapter")  # an adapter trained on another base model
    assert main(["export", str(other), "--merge-into-base", str(tmp_path / "o")]) == 2
    assert "tiny-random(seed=0)" in capsys.readouterr().err and not (tmp_path / "o").exists()
