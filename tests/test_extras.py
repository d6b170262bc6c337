"""Optional extras: a feature whose extra is not installed stops with one line naming
``pip install 'slao[<extra>]'`` (exit status 2 from the CLI); the core never imports them up front."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slao.cli import main
from slao.data.hf import HfSpec, load_hf_task
from slao.errors import MissingExtraError, import_extra
from slao.metrics import all_metrics


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    R = [[80.0, None], [70.0, 90.0]]
    (run / "results.json").write_text(json.dumps({
        "method": "slao", "model": "tiny-random(seed=0)", "benchmark": "jsonl", "seed": 0, "tasks": ["a", "b"],
        "finished": True, "accuracy": R, "zero_shot": None, "metrics": all_metrics(R, None),
        "adapter_state_bytes": [10, 10], "train_seconds": [1.0, 1.0], "eval_seconds": [0.1, 0.1],
        "task_info": {t: {"metric": "exact", "train": 4, "test": 2} for t in "ab"}}))
    return run


def test_report_without_matplotlib_names_the_plots_extra(tmp_path, monkeypatch, capsys):
    run = _run_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a missing package looks like to import
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == "slao: error: matplotlib is not installed (needed for figures): pip install 'slao[plots]'\n"
    assert not (run / "figures").exists()  # refused before anything was drawn or written
    monkeypatch.undo()
    assert main(["report", str(run)]) == 0 and (run / "figures" / "seen-average.png").is_file()


def test_hf_benchmark_without_datasets_names_the_hf_extra(tmp_path, monkeypatch):
    (tmp_path / "train.csv").write_text("text,label\na,x\n")
    spec = HfSpec(path="csv", data_files={"train": "train.csv", "test": "train.csv"})
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingExtraError, match=r"^datasets is not installed \(needed for the hf benchmark\): "
                                                r"pip install 'slao\[hf\]'$"):
        load_hf_task("t", spec, base=tmp_path)


def test_an_import_error_inside_an_installed_extra_is_not_reported_as_missing(tmp_path, monkeypatch):
    # The extra is there but broken (it imports something absent): that error must surface as it is.
    (tmp_path / "slao_broken_extra.py").write_text("import slao_no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="slao_no_such_module_anywhere"):
        import_extra("slao_broken_extra", "plots", "figures")
    with pytest.raises(MissingExtraError, match=r"pip install 'slao\[slurm\]'"):
        import_extra("slao_not_installed_either.sub", "slurm", "job submission")


def test_the_core_imports_without_the_extras():
    # A fresh interpreter in which matplotlib and datasets cannot be imported: the CLI, the harness, the
    # data loaders and the report module still load, and `slao list` runs.
    code = ("import sys; sys.modules['matplotlib'] = sys.modules['datasets'] = None; "
            "import slao.cli, slao.harness, slao.data, slao.report, slao.plots, slao.tasks; "
            "sys.exit(slao.cli.main(['list']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "slao" in out.stdout and "packaged" in out.stdout
