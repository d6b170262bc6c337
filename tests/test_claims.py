"""slao claims on hand-made comparison folders (no model): each claim's verdict follows its paired interval,
is never 'supported' without an interval clear of zero (or of the margin), and names what was not run."""

from __future__ import annotations

import json

import pytest
import yaml

from slao.claims import ledger, read_runs
from slao.cli import main
from slao.errors import DataError
from slao.methods.base import METHODS
from slao.metrics import all_metrics
from slao.variants import label_of

TASKS = ["task-a", "task-b", "task-c"]
N = 40  # test examples a task
SEEDS = (0, 1, 2)


def _results(method: str, seed: int, quality: float, order=None, sizes=None) -> dict:
    """A finished run whose every scored cell has ``quality`` of its N examples right (seed shifts one)."""
    T = len(TASKS)
    right = int(round(quality * N)) + seed
    cell = [1.0 if k < right else 0.0 for k in range(N)]
    scores = [[list(cell) if j <= i else None for j in range(T)] for i in range(T)]
    R = [[100.0 * sum(c) / N if c is not None else None for c in row] for row in scores]
    return {"method": method.split("(")[0], "model": "tiny-random", "benchmark": "superni", "seed": seed,
            "order": order, "tasks": TASKS, "finished": True, "accuracy": R, "zero_shot": None,
            "metrics": all_metrics(R), "example_scores": scores,
            "adapter_state_bytes": sizes or [1000] * T,
            "task_info": {t: {"metric": "exact", "train": 8, "test": N, "test_sha256": f"h{t}{seed}"}
                          for t in TASKS},
            "versions": {"git_commit": "abc1234def"}}


def _write(folder, label: str, quality: float, seeds=SEEDS, sizes=None, lr=1e-3):
    name = label.replace("(", "+").replace(")", "").replace(",", "+")
    for s in seeds:
        path = folder / name / f"seed-{s}"
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(_results(label, s, quality, sizes=sizes)))
        config = {"seed": s, "method": {"name": label.split("(")[0]}, "train": {"lr": lr}}
        (path / "config.yaml").write_text(yaml.safe_dump(config))


def _baselines() -> list[str]:
    import slao.methods  # noqa: F401

    return sorted(n for n, m in METHODS.items() if n != "slao" and m.data_free and not m.multi_task
                  and not m.oracle)


def _claim(led: dict, cid: str) -> dict:
    return next(c for c in led["claims"] if c["id"] == cid)


def test_folder_names_map_back_to_labels(tmp_path):
    assert label_of("slao+init=merged") == "slao(init=merged)"
    assert label_of("slao+a_rule=interpolate+schedule=inv") == "slao(a_rule=interpolate,schedule=inv)"
    assert label_of("seq-lora") == "seq-lora"
    _write(tmp_path, "slao", 0.6)
    _write(tmp_path, "slao(init=merged)", 0.5, seeds=(0,))
    (tmp_path / "figures").mkdir()
    unfinished = tmp_path / "seq-lora" / "seed-0"
    unfinished.mkdir(parents=True)
    (unfinished / "results.json").write_text(json.dumps({**_results("seq-lora", 0, 0.5), "finished": False}))
    (unfinished / "config.yaml").write_text("seed: 0\n")
    runs = read_runs(tmp_path)
    assert sorted(runs) == ["slao", "slao(init=merged)"] and len(runs["slao"]) == 3


def test_runs_of_another_configuration_are_refused(tmp_path):
    _write(tmp_path, "slao", 0.6)
    _write(tmp_path, "seq-lora", 0.5, lr=3e-4)  # seed, order and method may differ; the budget may not
    with pytest.raises(DataError, match=r"other settings than .*seq-lora.*train.lr"):
        read_runs(tmp_path)


def test_every_claim_supported_when_every_interval_clears_zero(tmp_path):
    _write(tmp_path, "slao", 0.7)
    for name in _baselines():
        _write(tmp_path, name, 0.4)
    _write(tmp_path, "per-task-lora", 0.9)  # an oracle: a bound, not a baseline
    _write(tmp_path, "mtl", 0.75)
    _write(tmp_path, "slao(a_rule=interpolate)", 0.5)
    _write(tmp_path, "slao(init=merged)", 0.5)
    _write(tmp_path, "slao(init=random)", 0.45)
    led = ledger(read_runs(tmp_path), replicates=300)
    verdicts = {c["id"]: c["verdict"] for c in led["claims"]}
    assert verdicts["data-free"] == "supported"
    assert verdicts["mtl"].startswith("supported (SLAO within 8.0 points")  # the paper's SuperNI gap
    assert verdicts["asymmetric"] == "supported" and verdicts["init"] == "supported"
    assert verdicts["constant"] == "supported (measured exactly)"
    first = _claim(led, "data-free")
    assert "per-task-lora" not in " ".join(first["evidence"])
    assert first["interval"].startswith("slao − ") and "[+" in first["interval"]
    assert led["commits"] == ["abc1234def"]


def test_one_better_baseline_refutes_and_an_undetected_one_is_not_detectable(tmp_path):
    _write(tmp_path, "slao", 0.6)
    _write(tmp_path, "seq-lora", 0.6)  # the same scores: the interval is [0, 0], never 'supported'
    _write(tmp_path, "o-lora", 0.3)
    led = ledger(read_runs(tmp_path), replicates=300)
    first = _claim(led, "data-free")
    assert first["verdict"].startswith("not detectable at this scale") and "seq-lora" in first["verdict"]
    assert first["verdict"].endswith(f"; {len(_baselines()) - 2} not yet run")
    assert "not run: " in first["evidence"][-1] and "magmax" in first["evidence"][-1]
    _write(tmp_path, "magmax", 0.9)
    first = _claim(ledger(read_runs(tmp_path), replicates=300), "data-free")
    assert first["verdict"] == f"not supported (magmax above SLAO); {len(_baselines()) - 3} not yet run"
    # everything run so far below SLAO, but baselines missing: not yet supported
    for folder in ("seq-lora", "magmax"):
        for path in sorted((tmp_path / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (tmp_path / folder).rmdir()
    first = _claim(ledger(read_runs(tmp_path), replicates=300), "data-free")
    assert first["verdict"].startswith("not yet tested in full (1 of ")


def test_the_mtl_claim_follows_the_margin(tmp_path):
    _write(tmp_path, "slao", 0.5)
    _write(tmp_path, "mtl", 0.8)  # 30 points above SLAO
    runs = read_runs(tmp_path)
    assert _claim(ledger(runs, 300), "mtl")["verdict"].startswith("not supported (SLAO more than 8.0")
    assert _claim(ledger(runs, 300, mtl_margin=40.0), "mtl")["verdict"].startswith("supported")
    assert _claim(ledger(runs, 300, mtl_margin=30.0), "mtl")["verdict"].startswith("not detectable")


def test_a_growing_state_is_not_constant(tmp_path):
    _write(tmp_path, "slao", 0.5, sizes=[1000, 1000, 1200])
    led = ledger(read_runs(tmp_path), 300)
    state = _claim(led, "constant")
    assert state["verdict"] == "not supported (the state changes)" and "+200 bytes" in state["interval"]
    assert _claim(led, "asymmetric")["verdict"] == "not tested (no runs)"


def test_cli_writes_the_ledger_and_refuses_a_folder_without_slao(tmp_path, capsys):
    _write(tmp_path, "slao", 0.7)
    _write(tmp_path, "seq-lora", 0.4)
    assert main(["claims", str(tmp_path), "--replicates", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| claim | paper") and (tmp_path / "claims.md").read_text() == out
    assert json.loads((tmp_path / "claims.json").read_text())["claims"][0]["id"] == "data-free"
    other = tmp_path / "other"
    _write(other, "seq-lora", 0.4)
    assert main(["claims", str(other)]) == 2
    assert "no finished run of slao" in capsys.readouterr().err
    with pytest.raises(DataError, match="not a folder"):
        read_runs(tmp_path / "missing")


def test_the_means_are_over_the_runs_both_sides_have(tmp_path):
    _write(tmp_path, "slao", 0.6)
    _write(tmp_path, "seq-lora", 0.5)
    _write(tmp_path, "inc-lora", 0.55, seeds=(0,))
    ours = _claim(ledger(read_runs(tmp_path), replicates=200), "data-free")["ours"]
    # seeds shift one example each: SLAO's seed 0 alone is 60.0, its three seeds 62.5
    assert ours == "SLAO 60.0; best baseline inc-lora 55.0 (over the 1 run both have; SLAO has 3)"
    _write(tmp_path, "inc-lora", 0.55, seeds=(1, 2))
    ours = _claim(ledger(read_runs(tmp_path), replicates=200), "data-free")["ours"]
    assert ours == "SLAO 62.5; best baseline inc-lora 57.5"


def test_a_second_order_of_slao_alone_leaves_the_other_means_on_the_first(tmp_path):
    for label, q in (("slao", 0.6), ("mtl", 0.7), ("seq-lora", 0.5), ("slao(init=merged)", 0.55),
                     ("slao(init=random)", 0.3)):
        _write(tmp_path, label, q)
    for s in SEEDS:  # order 2 of SLAO and the merged init only: 20 points higher, not paired with the rest
        for label, q in (("slao", 0.8), ("slao(init=merged)", 0.75)):
            path = tmp_path / label.replace("(", "+").replace(")", "") / "order-2" / f"seed-{s}"
            path.mkdir(parents=True)
            (path / "results.json").write_text(json.dumps(_results(label, s, q, order=2)))
            (path / "config.yaml").write_text(yaml.safe_dump({"seed": s, "order": 2,
                                                              "method": {"name": "slao"}, "train": {"lr": 1e-3}}))
    led = ledger(read_runs(tmp_path), replicates=200)
    assert _claim(led, "mtl")["ours"] == "SLAO 62.5, MTL 72.5 (over the 3 runs both have; SLAO has 6)"
    assert "means over the 3 runs all three have" in " ".join(_claim(led, "mtl")["evidence"])
    assert "SLAO closes 50%" in " ".join(_claim(led, "mtl")["evidence"])  # (62.5-52.5)/(72.5-52.5)
    # the merged init has both orders, the random one only order 1: each pair over its own runs
    assert _claim(led, "init")["ours"] == ("SLAO 72.5, merged 67.5; SLAO 62.5, random 32.5 "
                                           "(over the 3 runs both have; SLAO has 6)")


def test_a_verdict_on_a_part_filled_grid_says_so(tmp_path):
    _write(tmp_path, "slao", 0.6)
    _write(tmp_path, "mtl", 0.62)
    for label, q in (("slao", 0.6), ("mtl", 0.62)):  # order 2 of both, seed 0 only
        path = tmp_path / label / "order-2" / "seed-0"
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(_results(label, 0, q, order=2)))
        (path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "order": 2, "method": {"name": label},
                                                          "train": {"lr": 1e-3}}))
    mtl = _claim(ledger(read_runs(tmp_path), replicates=200), "mtl")
    assert mtl["verdict"].startswith("supported") and mtl["verdict"].endswith(
        "(provisional: mtl on a part-filled grid, see below)")
    assert "4 paired runs, part-filled: no order seeds 0, 1, 2; order 2 seed 0" in " ".join(mtl["evidence"])
