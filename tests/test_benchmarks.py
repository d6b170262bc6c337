"""The field's benchmarks: named orders, --exclude, the SuperNI and hf sources, carving. Fixture files are
written here in each layout (never the shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slao.config import build_config, parse_sets
from slao.data import load_tasks
from slao.data.hf import HfSpec, load_hf_task
from slao.data.superni import load_superni_task
from slao.errors import ConfigError, DataError
from slao.tasks import BENCHMARK_ORDERS, benchmark_source, load_benchmark, resolve_task_names

# design.md §4, written out again here so that a typo in either place fails.
DESIGN_ORDERS = {
    ("standard", 1): "dbpedia, amazon, yahoo, agnews",
    ("standard", 2): "dbpedia, amazon, agnews, yahoo",
    ("standard", 3): "yahoo, amazon, agnews, dbpedia",
    ("long", 4): "mnli, cb, wic, copa, qqp, boolqa, rte, imdb, yelp, amazon, sst-2, dbpedia, agnews, multirc, yahoo",
    ("long", 5): "multirc, boolqa, wic, mnli, cb, copa, qqp, rte, imdb, sst-2, dbpedia, agnews, yelp, amazon, yahoo",
    ("long", 6): "yelp, amazon, mnli, cb, copa, qqp, rte, imdb, sst-2, dbpedia, agnews, yahoo, multirc, boolqa, wic",
    ("superni", 1): "task1572_samsum_summary, task363_sst2_polarity_classification, task1290_xsum_summarization, "
    "task181_outcome_extraction, task002_quoref_answer_generation, task1510_evalution_relation_extraction, "
    "task639_multi_woz_user_utterance_generation, task1729_personachat_generate_next, "
    "task073_commonsenseqa_answer_generation, task1590_diplomacy_text_generation, "
    "task748_glucose_reverse_cause_event_detection, task511_reddit_tifu_long_text_summarization, "
    "task591_sciq_answer_generation, task1687_sentiment140_classification, task875_emotion_classification",
    ("superni", 2): "task748, task073, task1590, task639, task1572, task1687, task591, task363, task1510, task1729, "
    "task181, task511, task002, task1290, task875",
}
# The published O-LoRA folder of each long-sequence task name.
OLORA_FOLDERS = {
    "mnli": "NLI/MNLI", "cb": "NLI/CB", "rte": "NLI/RTE", "wic": "WiC/WiC", "copa": "COPA/COPA", "qqp": "QQP/QQP",
    "boolqa": "BoolQA/BoolQA", "multirc": "MultiRC/MultiRC", "imdb": "SC/IMDB", "yelp": "SC/yelp",
    "amazon": "SC/amazon", "sst-2": "SC/SST-2", "dbpedia": "TC/dbpedia", "agnews": "TC/agnews", "yahoo": "TC/yahoo",
}


def _cfg(*sets: str, **top):
    return build_config(top, parse_sets(list(sets)))


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _ni_file(path: Path, definition: str, pairs: list[tuple[str, object]]) -> Path:
    instances = [{"id": f"x-{i}", "input": text, "output": out} for i, (text, out) in enumerate(pairs)]
    return _write_json(path, {"Definition": [definition], "Positive Examples": [], "Instances": instances})


# --- orders and exclude -----------------------------------------------------------------------------


@pytest.mark.parametrize(("benchmark", "order"), sorted(DESIGN_ORDERS))
def test_orders_are_design_lists(benchmark: str, order: int) -> None:
    names = resolve_task_names(_cfg(benchmark=benchmark, order=order))
    expected = [n.strip() for n in DESIGN_ORDERS[benchmark, order].split(",")]
    if benchmark == "superni" and order == 2:  # design.md abbreviates order 2 to the task numbers
        names = [n.split("_")[0] for n in names]
    assert names == expected


def test_every_named_order_is_listed_and_defaults_to_the_first() -> None:
    assert {(b, o) for b, spec in BENCHMARK_ORDERS.items() for o in spec["orders"] if b != "packaged"} == set(
        DESIGN_ORDERS)
    assert resolve_task_names(_cfg(benchmark="long"))[0] == "mnli"  # order 4
    assert sorted(resolve_task_names(_cfg(benchmark="superni", order=2))) == sorted(
        resolve_task_names(_cfg(benchmark="superni", order=1)))
    with pytest.raises(ConfigError, match="orders 4, 5, 6"):
        resolve_task_names(_cfg(benchmark="long", order=1))


def test_tasks_override_and_exclude() -> None:
    assert resolve_task_names(_cfg(benchmark="long", tasks=["cb", "rte"])) == ["cb", "rte"]
    names = resolve_task_names(_cfg(benchmark="long", order=6, exclude=["yahoo", "wic"]))
    assert len(names) == 13 and "yahoo" not in names and "wic" not in names and names[0] == "yelp"
    with pytest.raises(ConfigError, match="'yahooo' not in the task list"):
        resolve_task_names(_cfg(benchmark="standard", exclude=["yahooo"]))
    with pytest.raises(ConfigError, match="no task"):
        resolve_task_names(_cfg(benchmark="long", tasks=["cb"], exclude=["cb"]))


@pytest.mark.parametrize(("benchmark", "where"), [("standard", "O-LoRA"), ("long", "O-LoRA"), ("superni", "SAPT")])
def test_missing_data_dir_says_where_the_data_comes_from(benchmark: str, where: str) -> None:
    with pytest.raises(ConfigError, match="--data-dir") as err:
        load_benchmark(_cfg(benchmark=benchmark))
    assert where in str(err.value)


@pytest.fixture
def olora_long(tmp_path: Path) -> Path:
    """Every long-sequence dataset in its published O-LoRA folder; yahoo has labels only, multirc no test."""
    root = tmp_path / "cl"
    _write_json(root / "instruction_config.json", {"NLI": [{"instruction": "Relation?\n"}]})
    for name, folder in OLORA_FOLDERS.items():
        _write_json(root / folder / "labels.json", ["yes", "no"])
        if name == "yahoo":
            continue
        rows = [{"label": ["yes", "no"][i % 2], "sentence": f"{name} {i}"} for i in range(10)]
        _write_json(root / folder / "train.json", rows)
        if name != "multirc":
            _write_json(root / folder / "test.json", rows[:4])
    return root


def test_long_order_loads_olora_folders_with_exclude_and_carve(olora_long: Path) -> None:
    cfg = _cfg("data.carve_test=0.2", benchmark="long", order=5, data_dir=str(olora_long), exclude=["yahoo"])
    tasks = load_benchmark(cfg)
    assert [t.name for t in tasks] == resolve_task_names(cfg) and len(tasks) == 14
    for task in tasks:
        assert task.info["dataset"] == OLORA_FOLDERS[task.name] and task.metric == "exact"
    carved = {t.name for t in tasks if "test_carved_from_train" in t.info}
    assert carved == {"multirc"}
    with pytest.raises(DataError, match="MultiRC/test.json"):
        load_benchmark(_cfg(benchmark="long", tasks=["multirc"], data_dir=str(olora_long)))


# --- SuperNI ----------------------------------------------------------------------------------------


@pytest.fixture
def superni_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ni"
    labels = ["POS", "NEG"]
    cls = [(f"tweet {i}", [labels[i % 2]]) for i in range(12)]
    _ni_file(root / "task363_sst2_polarity_classification/train.json", "Classify as POS or NEG.", cls)
    _ni_file(root / "task363_sst2_polarity_classification/test.json", "Classify as POS or NEG.", cls[:4])
    _ni_file(root / "task363_sst2_polarity_classification/dev.json", "unused", [("never read", "x")])
    summ = [(f"dialogue {i} " * 3, f"summary number {i}") for i in range(12)]
    _ni_file(root / "task1572_samsum_summary/train.json", "Summarize the dialogue.", summ)
    _ni_file(root / "task1572_samsum_summary/test.json", "Summarize the dialogue.",
             [("d", ["one summary", "another summary"])])
    _ni_file(root / "task875_emotion_classification/train.json", "Which emotion?",
             [(f"s{i}", ["joy", "anger", "fear"][i % 3]) for i in range(12)])  # no test.json
    return root


def test_superni_prompt_options_and_metric(superni_dir: Path) -> None:
    cls, summ = load_tasks("superni", ["task363_sst2_polarity_classification", "task1572_samsum_summary"],
                           superni_dir, 0)
    assert cls.prompt(cls.test[0]) == (
        "Definition: Classify as POS or NEG.\n\nNow complete the following example -\nInput: tweet 0\nOutput:")
    assert cls.options == ["NEG", "POS"] and cls.metric == "exact" and len(cls.test) == 4
    assert summ.options is None and summ.metric == "rougeL"
    assert summ.test[0].answers == ("one summary", "another summary") and summ.train[0].answers == ("summary number 0",)
    assert "dev" not in cls.info["files"] and cls.info["source"] == "superni"
    forced = load_tasks("superni", ["task363_sst2_polarity_classification"], superni_dir, 0, metric="rougeL")[0]
    assert forced.metric == "rougeL" and forced.options == ["NEG", "POS"]


def test_superni_missing_split_error_and_carve(superni_dir: Path) -> None:
    folder = superni_dir / "task875_emotion_classification"
    with pytest.raises(DataError, match="carve_test") as err:
        load_superni_task(folder, "emo")
    assert str(folder / "test.json") in str(err.value)
    task = load_superni_task(folder, "emo", carve_test=0.25, seed=2)
    again = load_superni_task(folder, "emo", carve_test=0.25, seed=2)
    assert (len(task.train), len(task.test)) == (9, 3) and task.test == again.test
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    assert task.info["test_carved_from_train"] == {"fraction": 0.25, "seed": 2}
    assert task.options == ["anger", "fear", "joy"]
    # only test.json (like the local dbpedia): with carve_test, train is carved out of test and recorded
    only_test = superni_dir / "only_test"
    _ni_file(only_test / "test.json", "d", [(f"q{i}", f"a{i % 2}") for i in range(10)])
    with pytest.raises(DataError, match="only_test/train.json"):
        load_superni_task(only_test, "ot")
    task = load_superni_task(only_test, "ot", carve_test=0.2)
    assert (len(task.train), len(task.test)) == (8, 2) and task.info["train_carved_from_test"]["fraction"] == 0.2
    assert "test_carved_from_train" not in task.info and task.info["files"] == {"test": str(only_test / "test.json")}


def test_superni_records_without_a_usable_answer_are_dropped(superni_dir: Path) -> None:
    cls_dir = superni_dir / "task363_sst2_polarity_classification"
    _ni_file(cls_dir / "test.json", "d", [("t0", "POS"), ("t1", "-"), ("t2", ["MAYBE"]), ("t3", ["-", "NEG"])])
    _ni_file(superni_dir / "task1572_samsum_summary/test.json", "d", [("d0", "a summary"), ("d1", ["", "..."])])
    cls, summ = load_tasks("superni", ["task363_sst2_polarity_classification", "task1572_samsum_summary"],
                           superni_dir, 0)
    assert [e.text for e in cls.test] == ["t0", "t3"] and cls.test[1].answers == ("NEG",)
    assert cls.info["dropped_no_answer"] == {"train": 0, "test": 2}
    assert [e.text for e in summ.test] == ["d0"] and summ.info["dropped_no_answer"] == {"train": 0, "test": 1}


@pytest.mark.parametrize(
    ("instances", "problem"),
    [([{"input": "a", "output": []}], "instance 1: 'output'"),
     ([{"input": "a", "output": "b"}, {"output": "b"}], "instance 2: expected an object with a string 'input'"),
     ([], "'Instances' is empty")],
)
def test_superni_bad_file_names_file_and_instance(tmp_path: Path, instances, problem: str) -> None:
    path = _write_json(tmp_path / "t/train.json", {"Definition": ["d"], "Instances": instances})
    _write_json(tmp_path / "t/test.json", {"Definition": ["d"], "Instances": [{"input": "a", "output": "b"}]})
    with pytest.raises(DataError, match=problem) as err:
        load_superni_task(tmp_path / "t", "t")
    assert str(path) in str(err.value)


def test_long_reads_sapt_copy_in_ni_layout(tmp_path: Path) -> None:
    root = tmp_path / "sapt"
    for name in ("mnli", "sst-2"):
        pairs = [(f"{name} {i}", ["entailment", "neutral", "contradiction"][i % 3]) for i in range(9)]
        _ni_file(root / name / "train.json", f"{name} definition", pairs)
        _ni_file(root / name / "test.json", f"{name} definition", pairs[:3])
    cfg = _cfg(benchmark="long", tasks=["sst-2", "mnli"], data_dir=str(root))
    assert benchmark_source("long", root, ["sst-2"]) == "superni"
    tasks = load_benchmark(cfg)
    assert [t.name for t in tasks] == ["sst-2", "mnli"] and all(t.metric == "exact" for t in tasks)
    assert tasks[0].prefix.startswith("Definition: sst-2 definition")


SAPT_FOLDERS = "agnews amazon boolq cb copa dbpedia imdb mnli multirc qqp rte sst2 wic yahoo yelp".split()


def test_long_reads_sapt_long_sequence_folders_and_labels(tmp_path: Path) -> None:
    # SAPT's CL_Benchmark/Long_Sequence: its own folder names (boolq, sst2), labels.json the option list
    root = tmp_path / "Long_Sequence"
    for folder in SAPT_FOLDERS:
        labels = ["Positive", "Negative", "Neutral"] if folder == "mnli" else ["True", "False"]
        pairs = [(f"{folder} text {i}", labels[i % 2]) for i in range(8)]  # a third label never used in train
        definition = "Which one? Choose one from the option.\n"
        _ni_file(root / folder / "train.json", definition, pairs)
        _ni_file(root / folder / "test.json", definition, [*pairs[:3], (f"{folder} odd", "-")])
        _ni_file(root / folder / "dev.json", definition, [("never read", "x")])
        _write_json(root / folder / "labels.json", labels)
    cfg = _cfg(benchmark="long", order=4, data_dir=str(root))
    tasks = load_benchmark(cfg)
    assert [t.name for t in tasks] == resolve_task_names(cfg)  # boolqa, sst-2 ... as the orders name them
    by_name = {t.name: t for t in tasks}
    assert by_name["mnli"].options == ["Positive", "Negative", "Neutral"]  # labels.json, in its order
    assert by_name["boolqa"].options == ["True", "False"] and by_name["sst-2"].test[0].text == "sst2 text 0"
    for task in tasks:
        assert task.metric == "exact" and len(task.test) == 3
        assert task.info["dropped_no_answer"] == {"train": 0, "test": 1}
        assert "Option: " + ", ".join(task.options) in task.prefix
    assert by_name["mnli"].info["files"]["labels"] == str(root / "mnli/labels.json")
    (root / "cb/labels.json").write_text('{"not": "a list"}')
    with pytest.raises(DataError, match=r"cb/labels.json: expected a non-empty JSON list"):
        load_benchmark(_cfg(benchmark="long", tasks=["cb"], data_dir=str(root)))


def test_superni_prompt_truncation_keeps_frame_and_answer(superni_dir: Path) -> None:
    from slao.encoding import TaskEncoder
    from slao.models import load_model

    _, tok = load_model("tiny-random")
    (task,) = load_tasks("superni", ["task1572_samsum_summary"], superni_dir, 0)
    enc = TaskEncoder(tok, task, max_prompt_tokens=len(enc_ids(tok, task.prefix + task.suffix)) + 3)
    item = enc.train_example(task.train[5])
    assert item.prompt[: len(enc.prefix)] == enc.prefix and item.prompt[-len(enc.suffix):] == enc.suffix
    assert len(item.prompt) == enc.max_prompt_tokens  # the input was cut to 3 tokens
    assert tok.decode(item.answer, skip_special_tokens=True).strip() == "summary number 5"


def enc_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_run_records_excluded_metric_and_carve(superni_dir: Path, tmp_path: Path) -> None:
    from slao.cli import main

    out = tmp_path / "run"
    code = main(["run", "--model", "tiny-random", "--benchmark", "superni", "--data-dir", str(superni_dir),
                 "--tasks", "task1572_samsum_summary,task363_sst2_polarity_classification,"
                 "task875_emotion_classification", "--exclude", "task363_sst2_polarity_classification",
                 "--output", str(out), "--set", "data.carve_test=0.25", "--set", "eval.max_new_tokens=3",
                 "--set", "train.group_by_length=true"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["excluded"] == ["task363_sst2_polarity_classification"]
    assert results["tasks"] == ["task1572_samsum_summary", "task875_emotion_classification"]
    info = results["task_info"]
    assert info["task1572_samsum_summary"]["metric"] == "rougeL"
    assert info["task875_emotion_classification"]["metric"] == "exact"
    assert info["task875_emotion_classification"]["test_carved_from_train"] == {"fraction": 0.25, "seed": 0}
    assert "test_carved_from_train" not in info["task1572_samsum_summary"]
    assert all(0 <= v <= 100 for v in results["accuracy"][-1])


# --- hf (datasets.load_dataset on files written here) -------------------------------------------------


@pytest.fixture
def hf_files(tmp_path: Path, monkeypatch) -> Path:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "hf"
    root.mkdir()
    rows = [f'"review {i}, with a comma",{"good" if i % 2 else "bad"}\n' for i in range(12)]
    (root / "train.csv").write_text("review,stars\n" + "".join(rows))
    (root / "test.csv").write_text("review,stars\n" + "".join(rows[:4]))
    with open(root / "qa.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"q": f"question {i}", "ctx": f"context {i}", "a": [f"answer {i}", f"ans {i}"]}) + "\n")
    return root


def test_hf_csv_columns_options_and_prompt(hf_files: Path) -> None:
    spec = HfSpec(path="csv", data_files={"train": "train.csv", "test": "test.csv"}, text_column=["review"],
                  label_column="stars", instruction="Is the review good?")
    task = load_hf_task("stars", spec, base=hf_files)
    assert len(task.train) == 12 and task.options == ["bad", "good"] and task.metric == "exact"
    assert task.prompt(task.train[1]) == (
        "Dataset:stars\nIs the review good?\nOption: bad, good \nreview 1, with a comma\nAnswer:")
    assert task.train[1].answers == ("good",) and task.info["source"] == "hf"


def test_hf_records_without_a_usable_answer_are_dropped(hf_files: Path) -> None:
    with open(hf_files / "test.csv", "a") as f:
        f.write('"an odd one",-\n')
    spec = {"path": "csv", "data_files": {"train": "train.csv", "test": "test.csv"}, "text_column": ["review"],
            "label_column": "stars"}
    (task,) = load_tasks("hf", ["stars"], hf_files, 0, hf=spec)
    assert len(task.test) == 4 and task.info["dropped_no_answer"] == {"train": 0, "test": 1}


def test_hf_missing_split_names_file_and_carves(hf_files: Path) -> None:
    spec = HfSpec(path="json", data_files={"train": "qa.jsonl"}, text_column=["ctx", "q"], label_column="a")
    with pytest.raises(DataError, match="no split 'test'.*data.carve_test"):
        load_hf_task("qa", spec, base=hf_files)
    gone = HfSpec(path="csv", data_files={"train": "train.csv", "test": "gone.csv"}, text_column=["review"])
    with pytest.raises(DataError, match="gone.csv"):
        load_hf_task("x", gone, base=hf_files)
    only_test = HfSpec(path="csv", data_files={"test": "train.csv"}, text_column=["review"], label_column="stars")
    with pytest.raises(DataError, match="no split 'train'"):
        load_hf_task("ot", only_test, base=hf_files)
    carved = load_hf_task("ot", only_test, base=hf_files, carve_test=0.25)
    assert (len(carved.train), len(carved.test)) == (9, 3) and "train_carved_from_test" in carved.info
    task = load_hf_task("qa", spec, base=hf_files, carve_test=0.5, seed=1)
    assert (len(task.train), len(task.test)) == (3, 3) and task.info["test_carved_from_train"]["fraction"] == 0.5
    assert task.metric == "rougeL" and task.options is None  # every answer differs: free text
    assert task.train[0].text.startswith("ctx: context") and "\nq: question" in task.train[0].text
    assert len(task.train[0].answers) == 2
    with pytest.raises(DataError, match=r"no column 'text'; columns: q, ctx, a"):
        load_hf_task("qa", HfSpec(path="json", data_files={"train": "qa.jsonl"}), base=hf_files, carve_test=0.5)


def test_hf_class_label_names_are_the_options(tmp_path: Path, hf_files: Path) -> None:
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=feats).to_parquet(
            str(tmp_path / f"{split}.parquet"))
    spec = HfSpec(path="parquet", data_files={"train": str(tmp_path / "train.parquet"),
                                              "test": str(tmp_path / "test.parquet")})
    task = load_hf_task("yn", spec)
    assert task.options == ["no", "yes"] and [e.target for e in task.test] == ["no", "yes", "yes"]


def test_hf_benchmark_from_settings_and_tasks_yaml(hf_files: Path) -> None:
    cfg = _cfg("data.hf_path=csv", "data.hf_data_files.train=train.csv", "data.hf_data_files.test=test.csv",
               "data.hf_text_column=review", "data.hf_label_column=stars", "data.train_per_task=5",
               benchmark="hf", tasks=["stars"], data_dir=str(hf_files))
    (task,) = load_benchmark(cfg)
    assert len(task.train) == 5 and task.info["caps"]["available"]["train"] == 12
    (hf_files / "tasks.yaml").write_text(
        "stars: {path: csv, data_files: {train: train.csv, test: test.csv}, text_column: review, label_column: stars}\n"
        "qa: {path: json, data_files: {train: qa.jsonl}, text_column: [q], label_column: a}\n")
    cfg = _cfg("data.carve_test=0.5", f"data.hf_tasks={hf_files / 'tasks.yaml'}", benchmark="hf",
               data_dir=str(hf_files), exclude=["stars"])
    (qa,) = load_benchmark(cfg)
    assert qa.name == "qa" and qa.metric == "rougeL" and "test_carved_from_train" in qa.info
    (hf_files / "bad.yaml").write_text("qa: {path: json, colum: x}\n")
    with pytest.raises(ConfigError, match="unknown key 'colum'"):
        load_benchmark(_cfg(f"data.hf_tasks={hf_files / 'bad.yaml'}", benchmark="hf"))
    with pytest.raises(ConfigError, match="names no dataset"):
        load_benchmark(_cfg(benchmark="hf", tasks=["x"]))


# --- length-grouped batches -------------------------------------------------------------------------
