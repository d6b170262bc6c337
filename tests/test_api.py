"""The Python API over a user's PeftModel: the same merged LoRA as ``slao run --method slao`` when driven by
the same loop, SLAO's rule around a plain loop and around transformers' Trainer, its state saved and
restored, and clear errors for what does not fit."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from slao import ContinualLoRA, ContinualLoRACallback
from slao.cli import main
from slao.config import build_config, read_yaml
from slao.encoding import TaskEncoder
from slao.errors import SlaoError
from slao.methods.slao import orthogonal_init
from slao.models import load_model
from slao.tasks import load_benchmark
from slao.train import train_task

TASKS = "bbc-topic,rt-sentiment,word-polarity"
SMALL = ["--model", "tiny-random", "--benchmark", "packaged", "--tasks", TASKS, "--set", "data.train_per_task=12",
         "--set", "data.test_per_task=2", "--set", "eval.max_new_tokens=2", "--set", "train.batch_size=4",
         "--set", "train.lr=0.01", "--set", "eval.rows=last"]


def peft_model(seed: int = 0):
    base, tok = load_model("tiny-random", seed=seed)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    return get_peft_model(base, config), tok


def lora(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_same_merged_lora_as_slao_run(tmp_path):
    """Driven by slao's own training loop, the API gives the run's adapter bit for bit: the method's part
    (init, merge) is the same code, and so is everything around it."""
    run = tmp_path / "run"
    assert main(["run", "--method", "slao", *SMALL, "--output", str(run)]) == 0
    cfg = build_config(read_yaml(run / "config.yaml"))
    tasks = load_benchmark(cfg)
    model, tok = peft_model(cfg.seed)
    cl = ContinualLoRA(model, "slao", seed=cfg.seed)
    acc = Accelerator(cpu=True)
    set_seed(cfg.seed)  # as the harness does once the model is built
    for i, task in enumerate(tasks, 1):
        encoder = TaskEncoder(tok, task, cfg.data.max_prompt_tokens)
        cl.begin_task()
        train_task(acc, cl.adapter, cl.method, i, task.name, [encoder.train_example(x) for x in task.train],
                   cfg.train, cfg.seed, tok.pad_token_id, lambda record: None)
        cl.end_task()
    cl.save_pretrained(tmp_path / "api-adapter")
    expected = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "api-adapter" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys() and len(got) > 0
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def plain_task(model, tok, seed: int, steps: int = 3):
    """A user's own loop: a few AdamW steps of next-token loss on made-up text."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for _ in range(steps):
        ids = torch.randint(5, 200, (2, 10), generator=gen)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def check_slao_rule(before: list[dict], trained: list[dict], after: list[dict]) -> None:
    """SLAO (design.md §2) on what the model held: task i starts from (orthogonal_init(A_ft,i-1), B_ft,i-1);
    after it the model holds A_ft,i and B_m,i-1 + (B_ft,i - B_m,i-1) / sqrt(i)."""
    merged_b = {}
    for i, (start, ft, end) in enumerate(zip(before, trained, after, strict=True), 1):
        for key in ft:
            if "lora_A" in key:
                assert torch.equal(end[key], ft[key])
                if i > 1:
                    assert torch.allclose(start[key], orthogonal_init(trained[i - 2][key]), atol=1e-6)
            else:
                if i > 1:
                    assert torch.equal(start[key], trained[i - 2][key])
                expected = ft[key] if i == 1 else merged_b[key] + (ft[key] - merged_b[key]) / math.sqrt(i)
                assert torch.allclose(end[key], expected, atol=1e-6)
                merged_b[key] = end[key]
        assert any(not torch.equal(ft[k], start[k]) for k in ft)  # the loop did train


def test_plain_loop_follows_slao_and_state_round_trips(tmp_path):
    model, tok = peft_model()
    cl = ContinualLoRA(model, "slao")
    before, trained, after = [], [], []
    for t in range(3):
        cl.begin_task()
        before.append(lora(model))
        plain_task(model, tok, seed=t)
        trained.append(lora(model))
        cl.end_task()
        after.append(lora(model))
        if t == 1:
            cl.save(tmp_path / "state.safetensors")
    check_slao_rule(before, trained, after)
    # a restart after task 2 continues to the same task 3
    again, _ = peft_model()
    resumed = ContinualLoRA(again, "slao")
    resumed.load(tmp_path / "state.safetensors")
    assert resumed.tasks_done == 2
    resumed.begin_task()
    assert all(torch.equal(lora(again)[k], before[2][k]) for k in before[2])


def test_trainer_callback_follows_slao(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, tok = peft_model()
    cl = ContinualLoRA(model, "slao")
    recorded = {"before": [], "trained": [], "after": []}

    class Record(ContinualLoRACallback):
        def on_train_begin(self, args, state, control, **kw):
            super().on_train_begin(args, state, control, **kw)
            recorded["before"].append(lora(model))

        def on_train_end(self, args, state, control, **kw):
            recorded["trained"].append(lora(model))
            super().on_train_end(args, state, control, **kw)
            recorded["after"].append(lora(model))

    def dataset(seed):
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 200, (8, 10), generator=gen)
        return [{"input_ids": row, "labels": row} for row in ids]

    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, max_steps=2,
                             learning_rate=0.01, report_to=[], save_strategy="no", use_cpu=True,
                             logging_strategy="no", disable_tqdm=True)
    for t in range(3):
        Trainer(model=model, args=args, train_dataset=dataset(t), callbacks=[Record(cl)]).train()
    check_slao_rule(recorded["before"], recorded["trained"], recorded["after"])
    assert cl.tasks_done == 3


def test_what_does_not_fit_is_refused():
    model, _ = peft_model()
    with pytest.raises(SlaoError, match="inc-lora.*slao run"):
        ContinualLoRA(model, "inc-lora")
    with pytest.raises(SlaoError, match="unknown method"):
        ContinualLoRA(model, "nope")
    with pytest.raises(SlaoError, match="unknown option 'shedule'"):
        ContinualLoRA(model, "slao", shedule="inv")
    with pytest.raises(SlaoError, match="schedule"):
        ContinualLoRA(model, "slao", schedule="2")
    cl = ContinualLoRA(model, "slao")
    with pytest.raises(SlaoError, match="begin_task"):
        cl.end_task()
    cl.begin_task()
    with pytest.raises(SlaoError, match="end_task"):
        cl.begin_task()
    with pytest.raises(SlaoError, match="no LoRA adapter named 'other'"):
        ContinualLoRA(model, "slao", adapter_name="other")
    base, _ = load_model("tiny-random", seed=0)
    with pytest.raises(SlaoError, match="get_peft_model"):
        ContinualLoRA(base, "slao")


def test_seq_lora_through_the_api():
    model, tok = peft_model()
    cl = ContinualLoRA(model, "seq-lora")
    cl.begin_task()
    plain_task(model, tok, seed=0)
    first = lora(model)
    cl.end_task()
    cl.begin_task()
    assert all(torch.equal(lora(model)[k], first[k]) for k in first)  # starts from the last LoRA, unmerged




@pytest.mark.parametrize("method", ["opcm", "lora-lego"])
def test_merging_methods_through_the_api_give_their_own_merge(method):
    """Fresh-init merging methods fit the API: after each task the model holds exactly what the method's
    own after_task makes of the fine-tuned LoRAs (replayed here on a second instance of the method)."""
    from slao.methods import get_method

    model, tok = peft_model()
    cl = ContinualLoRA(model, method, seed=0)
    cls = get_method(method)
    replay = cls(cls.Options(), cl.adapter.shapes(), cl.adapter.rank)
    for t in range(1, 4):
        cl.begin_task()
        plain_task(model, tok, seed=t)
        trained = cl.adapter.get()
        cl.end_task()
        expected = replay.after_task(t, trained)
        held = cl.adapter.get()
        assert all(torch.allclose(held[n][0], expected[n][0]) and torch.allclose(held[n][1], expected[n][1])
                   for n in expected)
    assert any(not torch.equal(held[n][1], trained[n][1]) for n in held)  # a merge, not the last LoRA
