"""configs/paper/: one recipe per benchmark and order, each valid and holding the paper's settings and its
reported number; the Long order-4 recipe runs end to end with the tiny model on a tiny O-LoRA folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slao.cli import main
from slao.config import build_config, read_yaml
from slao.tasks import BENCHMARK_ORDERS, resolve_task_names

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
RECIPES = [(b, o) for b in ("standard", "long", "superni") for o in BENCHMARK_ORDERS[b]["orders"]]
REPORTED = {"standard": "average accuracy 80.4", "long": "average accuracy 74.8", "superni": "average accuracy 37.2"}
# The published O-LoRA folder of each Long task, and its options.
NLI = ["entailment", "neutral", "contradiction"]
TF = ["True", "False"]
OLORA = {"mnli": ("NLI/MNLI", NLI), "cb": ("NLI/CB", NLI), "rte": ("NLI/RTE", ["entailment", "not_entailment"]),
         "wic": ("WiC/WiC", TF), "copa": ("COPA/COPA", ["1", "2"]), "qqp": ("QQP/QQP", TF),
         "boolqa": ("BoolQA/BoolQA", TF), "multirc": ("MultiRC/MultiRC", TF), "imdb": ("SC/IMDB", ["Good", "Bad"]),
         "yelp": ("SC/yelp", ["1", "2", "3", "4", "5"]), "amazon": ("SC/amazon", ["1", "2", "3", "4", "5"]),
         "sst-2": ("SC/SST-2", ["Good", "Bad"]), "dbpedia": ("TC/dbpedia", ["Company", "Artist"]),
         "agnews": ("TC/agnews", ["World", "Sports"]), "yahoo": ("TC/yahoo", ["Health", "Sports"])}


def test_one_recipe_per_benchmark_and_order():
    assert sorted(p.name for p in PAPER.glob("*.yaml")) == sorted(f"{b}-o{o}.yaml" for b, o in RECIPES)
    assert len(RECIPES) == 8


@pytest.mark.parametrize(("benchmark", "order"), RECIPES)
def test_recipe_holds_the_papers_settings(benchmark, order):
    path = PAPER / f"{benchmark}-o{order}.yaml"
    cfg = build_config(read_yaml(path))  # valid: every key known, every value of its type
    assert (cfg.benchmark, cfg.order) == (benchmark, order)
    assert resolve_task_names(cfg) == BENCHMARK_ORDERS[benchmark]["orders"][order]
    assert cfg.model == "meta-llama/Llama-2-7b-chat-hf" and cfg.model_dtype == "bfloat16"
    assert cfg.method.name == "slao"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 32.0, 0.1,
                                                                                          ["q_proj", "v_proj"])
    superni = benchmark == "superni"
    t = cfg.train
    # global batch 8: 1 example x 8 accumulation steps (Standard, Long) or 2 x 4 (SuperNI)
    assert (t.lr, t.batch_size, t.batch_size // t.grad_accum, t.epochs) == (
        (5e-5, 8, 2, 5) if superni else (1e-4, 8, 1, 1))
    assert t.lr_schedule == "constant" and t.weight_decay == 0.0
    assert cfg.eval.max_new_tokens == 50 and cfg.eval.bf16 is False and cfg.eval.rows == "all"
    assert cfg.data.train_per_task is None and cfg.data.test_per_task is None  # the whole published splits
    assert cfg.data.metric == ("rougeL" if superni else "auto")
    text = path.read_text()
    assert REPORTED[benchmark] in text and f"--config configs/paper/{path.name}" in text
    assert "bf16" in text.split("model_dtype:")[0].splitlines()[-2]  # the comment says why bf16


def _tiny_olora(root: Path) -> Path:
    """Every Long dataset in the published O-LoRA layout: 8 training and 4 test records each."""
    (root / "instruction_config.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "instruction_config.json").write_text(json.dumps(
        {kind: [{"instruction_type": "zero-shot", "instruction": f"A {kind} question.\n"}]
         for kind in ("NLI", "QQP", "SC", "TC", "BoolQA", "MultiRC", "WiC")}))
    for name, (folder, labels) in OLORA.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 8), ("test", 4)):
            rows = [{"label": labels[i % len(labels)], "sentence": f"{name} {split} {i}"} for i in range(n)]
            (d / f"{split}.json").write_text(json.dumps(rows))
    return root


def test_long_order_4_recipe_runs_with_the_tiny_model(tmp_path):
    data, out = _tiny_olora(tmp_path / "cl"), tmp_path / "run"
    # overridden: the model and the data; and 3 new tokens instead of 50, as the untrained tiny model never stops
    assert main(["run", "--config", str(PAPER / "long-o4.yaml"), "--model", "tiny-random", "--data-dir", str(data),
                 "--output", str(out), "--set", "eval.max_new_tokens=3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and results["tasks"] == BENCHMARK_ORDERS["long"]["orders"][4]
    assert results["order"] == 4 and results["train_steps"] == [1] * 15  # 8 examples, global batch 8
    R = results["accuracy"]
    assert all(v is not None for i, row in enumerate(R) for v in row[: i + 1])  # the full matrix
    assert set(results["metrics"]) >= {"aa", "bwt", "forgetting"}
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["model"] == "tiny-random" and ran["model_dtype"] == "bfloat16"
    recipe = {"lr": 1e-4, "lr_schedule": "constant", "epochs": 1.0, "batch_size": 8, "grad_accum": 8}
    assert {k: ran["train"][k] for k in recipe} == recipe and ran["eval"]["max_new_tokens"] == 3
    assert ran["lora"] == {"r": 8, "alpha": 32.0, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert ran["data"]["max_prompt_tokens"] == 512
    assert (out / "adapter" / "adapter_model.safetensors").exists()
