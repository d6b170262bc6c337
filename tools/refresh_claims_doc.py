"""Refreshes the claims section of docs/results.md from the run records in results/claims.

Every `slao compare` block of that section is run again with --collect on a copy of the records (nothing
is trained), and the tables below it are replaced by what it prints: the header, the methods, the note on
unlike runs, the order robustness and SLAO's paired rows. The ledger is replaced by `slao claims`, and the
main table's figures are redrawn into docs/figures/claims/. Prose is left alone, and the doc is read again
before it is written, so prose edited while the tables are computed is kept: read the diff and fix the
sentences whose numbers moved.

    python tools/refresh_claims_doc.py --data-dir ../shared/data/superni
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The paper's claims, tested"
GENERATED = ("Model ", "|", "The methods' means", "Per task the spread", "Not yet run under two orders")
# Begins as the long explanation does, so that GENERATED finds it and the next refresh replaces it.
SHORT_ROBUSTNESS = ("Per task the spread (max − min over orders) of its final score; MOPD the largest spread, AOPD "
                    "the mean, each tested against what noise alone gives, as the main table explains.")
FIGURES = ("cost-vs-tasks", "paired-differences", "seen-average-order-1", "seen-average-order-2", "order-spread")


def slao(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "slao", *args], capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        sys.exit(f"slao {' '.join(args)} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return run


def compare_args(block: list[str], data_dir: str) -> list[str] | None:
    """The arguments of a documented `slao compare` command, without its --output; None for another command."""
    cmd = " ".join(line.rstrip("\\").strip() for line in block)
    if not cmd.startswith("slao compare") or "slao claims" in cmd:
        return None
    args = [a.strip("'") for a in re.findall(r"'[^']*'|\S+", cmd)][2:]
    if "--output" in args:
        i = args.index("--output")
        del args[i:i + 2]
    if "--data-dir" in args:
        args[args.index("--data-dir") + 1] = data_dir
    return args


def _table(lines: list[str], i: int) -> list[str]:
    out = []
    while i < len(lines) and lines[i].startswith("|"):
        out.append(lines[i])
        i += 1
    return out


def _line(lines: list[str], prefix: str) -> list[str]:
    found = [line for line in lines if line.startswith(prefix)]
    return [found[0], ""] if found else []


def extract(md: str, explain: bool = True) -> list[str]:
    """The parts of a comparison.md the doc shows; without `explain`, the order robustness's long explanation
    (which the first table of the section carries) is cut to one sentence."""
    lines = md.split("\n")
    head = next(i for i, line in enumerate(lines) if line.startswith("Model "))
    out = [lines[head], ""]
    out += _table(lines, next(i for i in range(head, len(lines)) if lines[i].startswith("| method |"))) + [""]
    out += _line(lines, "The methods' means")
    if "## Order robustness" in lines:
        i = lines.index("## Order robustness") + 2
        out += [lines[i] if explain else SHORT_ROBUSTNESS, ""]
        out += _table(lines, next(k for k in range(i, len(lines)) if lines[k].startswith("|"))) + [""]
        out += _line(lines, "Not yet run under two orders")
    paired = _table(lines, next(i for i, line in enumerate(lines) if line.startswith("| x − y |")))
    return out + paired[:2] + [line for line in paired[2:] if line.startswith("| slao − ")] + [""]


def blocks(section: list[str]):
    """Each ```bash block of the section: (the line after its closing fence, its lines)."""
    i = 0
    while i < len(section):
        if section[i] != "```bash":
            i += 1
            continue
        start = i = i + 1
        while section[i] != "```":
            i += 1
        i += 1
        yield i, section[start:i - 1]


def splice(text: str, tables: dict[str, list[str]], ledger: str) -> str:
    """The doc with the tables below each refreshed block and the ledger replaced, everything else as it is
    now (the doc is read again at the end, so prose edited while the tables were computed is kept)."""
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    section = text[start:end].split("\n")
    new: list[str] = []
    done = 0
    for after, block in blocks(section):
        new += section[done:after]
        done = after
        key = "\n".join(block)
        if key in tables:
            while done < len(section) and (not section[done].strip() or section[done].startswith(GENERATED)):
                done += 1  # the old tables
            new += [""] + tables[key] + [""]
    out = "\n".join(new + section[done:])
    a, b = out.index("| claim |"), out.index("### Reading the ledger")
    out = out[:a] + ledger.strip() + "\n\n\n" + out[b:]
    return text[:start] + out + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the superni folder of the benchmark data")
    parser.add_argument("--records", default=str(ROOT / "results/claims"))
    parser.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    opts = parser.parse_args()
    doc = Path(opts.doc)
    text = doc.read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))].split("\n")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "claims"
        shutil.copytree(opts.records, copy)
        tables: dict[str, list[str]] = {}
        main_args = None
        for _, block in blocks(section):
            args = compare_args(block, opts.data_dir)
            if args is None:
                continue
            main_args = main_args or args
            slao("compare", *args, "--output", str(copy), "--collect")
            tables["\n".join(block)] = extract((copy / "comparison.md").read_text(), explain=not tables)
            print("refreshed the table of", args[args.index("--methods") + 1][:90])
        slao("claims", str(copy))
        doc.write_text(splice(doc.read_text(), tables, (copy / "claims.md").read_text()))
        print("refreshed the tables and the ledger")
        if main_args:
            slao("compare", *main_args, "--output", str(copy), "--collect")
            slao("report", str(copy))
            dest = doc.parent / "figures/claims"
            for name in FIGURES:
                if (copy / "figures" / f"{name}.png").exists():
                    shutil.copy(copy / "figures" / f"{name}.png", dest / f"{name}.png")
            print(f"redrew the figures in {dest}")


if __name__ == "__main__":
    main()
