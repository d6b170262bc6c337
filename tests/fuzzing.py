"""The fuzzing suite's harness and shared strategies. The suite fuzzes everything a user hands over, one
module per surface: data folders of every source (O-LoRA layout, SuperNI task files, JSONL tasks with
options.json and instruction.txt, csv/json files read by ``datasets``, the hf tasks YAML) in
test_fuzz_data.py, config YAML files and ``--set`` values in test_fuzz_settings.py, adapter folders and
checkpoints in test_fuzz_weights.py.

Property: every input either loads (and what loads is usable: hashable, UTF-8, the promised shapes), or
raises a SlaoError, which the CLI prints as one line and exits 2 with, whose message is one line naming
the file (and the line or record where there is one); never another exception, never a hang (each example
runs under a hypothesis deadline and a hard alarm).

Counts: in the default test command each target tries the number of examples given in its ``@fuzz(...)``,
the same examples every run (derandomized). ``SLAO_FUZZ_EXAMPLES=N`` tries N fresh random examples per
target (N/10 for the ``datasets`` target): ``SLAO_FUZZ_EXAMPLES=2000 pytest -m fuzz``.
"""

from __future__ import annotations

import json
import os
import re
import signal
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st

from slao.cli import main
from slao.errors import SlaoError
from slao.harness import tasks_sha256

FUZZ_EXAMPLES = int(os.environ.get("SLAO_FUZZ_EXAMPLES") or 0)
HARD_LIMIT_S = 30  # an example still running after this is a hang
DEADLINE = timedelta(seconds=5)  # tiny files load in milliseconds; this only catches pathological slowness


def fuzz(default_examples: int, large_divisor: int = 1):
    """Hypothesis settings of one target: ``default_examples`` (derandomized) or SLAO_FUZZ_EXAMPLES."""
    n = max(1, FUZZ_EXAMPLES // large_divisor) if FUZZ_EXAMPLES else default_examples
    # No explain phase: it re-runs a failure under a line tracer, slow enough to trip the hard limit.
    return settings(max_examples=n, deadline=DEADLINE, derandomize=not FUZZ_EXAMPLES, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])


class Hang(BaseException):
    """An example that ran past HARD_LIMIT_S (a BaseException: no ``except Exception`` swallows it)."""


@contextmanager
def hard_limit(seconds: float = HARD_LIMIT_S):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, names: list[str]):
    """``call()``'s result, or the SlaoError it raised after checking that its message is one line that
    names one of ``names`` (files or folders); any other exception fails the example."""
    with hard_limit():
        try:
            result = call()
        except SlaoError as err:
            event("refused: " + " ".join(re.sub(r"/\S*|'[^']*'", "_", str(err)).split()[:5]))
            message = str(err)
            assert "\n" not in message and "\r" not in message, f"message of several lines: {message!r}"
            assert any(name in message for name in names), f"message names none of {names}: {message!r}"
            assert err.exit_status == 2
            return err
    event("loaded")
    return result


# -- strategies ------------------------------------------------------------------------------------------
class Raw(str):
    """JSON text written as is by ``dump_json`` (what json.dumps never writes)."""


NASTY_JSON = [
    '"\\ud800"', '"x\\udc00y"', '"\\ud83d\\ude00"', "[" * 3000 + "]" * 3000, '{"a":' * 2000 + "1" + "}" * 2000,
    "9" * 5000, "NaN", "-Infinity", "1e999", '"\\u0000"', '""', "[]", "{}", "null", "true", "-1", "0.5",
]
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
plain_texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "-", "...", "good", "bad", "passage: p\nquestion: q?", "a, b", "\x00", "é\u2028"]),
)
texts = st.one_of(plain_texts, plain_texts, plain_texts, plain_texts, plain_texts, surrogates)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.sampled_from(NASTY_JSON).map(Raw))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3),
                      max_leaves=5)

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts,
                         st.sampled_from(["slao", "seq-lora", "linear", "0.5", "2020-01-01", "0x1f", ".inf"]))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=2),
                           max_leaves=4)


def maybe(valid):
    """Mostly ``valid`` (three times in four), else any JSON value."""
    return st.one_of(valid, valid, valid, values)


def dump_json(value) -> str:
    """JSON text of ``value``; Raw parts as they are, strings ASCII-escaped (a surrogate as \\udxxx)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump_json(v) for v in value) + "]"
    return json.dumps(value)


@st.composite
def mutate(draw, data: bytes) -> bytes:
    """``data`` with a few bytes cut, flipped, inserted or dropped."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(("cut", "flip", "insert", "drop")))
        if op == "cut":
            del out[pos:]
        elif op == "flip" and pos < len(out):
            out[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "drop":
            del out[pos:pos + draw(st.integers(1, 8))]
    return bytes(out)


def contents(near_valid):
    """A file's bytes: mostly near-valid, else random, or near-valid with bytes cut, flipped, inserted or
    dropped."""
    return st.one_of(near_valid, near_valid, near_valid, st.binary(max_size=200), near_valid.flatmap(mutate))


def as_json(strategy):
    return strategy.map(lambda v: dump_json(v).encode())


@st.composite
def folder(draw, valid: dict[str, bytes | None], fuzzed: dict[str, object], often=()) -> dict[str, bytes | None]:
    """The files ``valid`` (relative path -> bytes, None: absent) with one or two of them (those in
    ``often`` three times as likely) replaced by generated content (or removed)."""
    files = dict(valid)
    pool = st.sampled_from(sorted(fuzzed) + 2 * list(often))
    for rel in {draw(pool), draw(pool)} if draw(st.booleans()) else {draw(pool)}:
        files[rel] = None if draw(st.integers(0, 9)) == 0 else draw(contents(fuzzed[rel]))
    return files


def write_files(root: Path, files: dict[str, bytes | None]) -> list[str]:
    """Write ``files`` under ``root``; return every path (written or not), for the message check."""
    for rel, data in files.items():
        if data is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return [str(root / rel) for rel in files]


def check_tasks(tasks) -> None:
    """What loaded is usable downstream: hashed for results and checkpoints, dumped, prompted."""
    tasks_sha256(tasks)
    for task in tasks:
        json.dumps(task.info)
        assert task.train and task.test
        for ex in task.train + task.test:
            assert isinstance(ex.text, str) and ex.answers and all(isinstance(a, str) and a for a in ex.answers)
            task.prompt(ex).encode("utf-8")


LABELS = ["good", "bad"]
labels_or_junk = st.one_of(st.sampled_from(LABELS), st.sampled_from(LABELS), texts)


# -- end to end through the CLI --------------------------------------------------------------------------
def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``slao argv`` under the hard limit: its exit status and what it printed on stderr."""
    with hard_limit():
        code = main(argv)
    return code, capsys.readouterr().err
