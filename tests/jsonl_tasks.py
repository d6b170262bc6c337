"""Writes a small JSONL benchmark folder for tests: one task per name, two answers each."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["red", "blue", "green", "gold"]


def write_jsonl_tasks(folder: Path, names: list[str], train_n: int, test_n: int, options: bool) -> Path:
    """Task k answers WORDS[k] or WORDS[k+1] (cyclic over as many words as tasks), alternating."""
    words = WORDS[: len(names)]
    for k, name in enumerate(names):
        opts = [words[k], words[(k + 1) % len(words)]]
        d = folder / name
        d.mkdir(parents=True)
        for split, n in (("train", train_n), ("test", test_n)):
            with open(d / f"{split}.jsonl", "w") as f:
                for i in range(n):
                    f.write(json.dumps({"input": f"{split} {i} of {name}", "output": opts[i % 2]}) + "\n")
        if options:
            (d / "options.json").write_text(json.dumps(opts))
    return folder
