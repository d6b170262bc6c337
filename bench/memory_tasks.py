"""Memory over a long task sequence: adapter state bytes and peak resident memory after every task, per
method (each method in its own process, so each peak is its own), as a table, a JSON and a PNG.

    python bench/memory_tasks.py --model tiny-random            # 50 synthetic tasks
    python bench/memory_tasks.py --model smollm2-135m           # 10 synthetic tasks
    python bench/memory_tasks.py --model tiny-random --tasks 4 --methods slao,seq-lora

Checks (exit status 1 if one fails): slao's state after the last task has exactly the bytes it had
after task 1, and its peak RSS after the last task is within 2% of the peak after task 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C

WORDS = ["red", "blue", "green", "gold", "black", "white", "pink", "grey"]
RSS_TOLERANCE = 0.02


def write_tasks(folder: Path, n: int, train: int, test: int) -> list[str]:
    """``n`` small JSONL tasks: two options each, the answer fixed by the parity of the example."""
    names = []
    for k in range(n):
        name = f"task{k:02d}"
        d = folder / name
        d.mkdir(parents=True)
        opts = [WORDS[k % len(WORDS)], WORDS[(k + 3) % len(WORDS)]]
        for split, count in (("train", train), ("test", test)):
            lines = [json.dumps({"input": f"{split} example {i} of {name}", "output": opts[i % 2]})
                     for i in range(count)]
            (d / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        (d / "options.json").write_text(json.dumps(opts))
        names.append(name)
    return names


def peak_rss_bytes() -> int:
    kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024


def child(args) -> int:
    """One method's run in this process: peak RSS recorded right after each task's evaluation."""
    from slao.config import build_config
    from slao.harness import run_experiment

    cfg = build_config({
        "model": args.model, "benchmark": "jsonl", "data_dir": args.data, "tasks": args.task_names.split(","),
        "method": {"name": args.method},
        "data": {"train_per_task": args.train_per_task, "test_per_task": args.test_per_task},
        "train": {"batch_size": args.batch, "lr": args.lr}, "eval": {"max_new_tokens": args.max_new_tokens},
    })
    rss: list[int] = []

    def echo(message: str, *a, **k) -> None:
        if message.startswith("after task "):  # the harness's line once a task is trained and scored
            rss.append(peak_rss_bytes())

    with C.quiet():
        results = run_experiment(cfg, args.run_dir, echo=echo)
    Path(args.child_out).write_text(json.dumps({
        "peak_rss_bytes": rss, "adapter_state_bytes": results["adapter_state_bytes"],
        "train_seconds": results["train_seconds"], "eval_seconds": results["eval_seconds"],
    }))
    return 0


def plot(path: Path, figures: dict, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "x"), ("-", "d"), ("--", "v")]
    for k, (method, f) in enumerate(figures.items()):
        x = range(1, len(f["adapter_state_bytes"]) + 1)
        line, marker = styles[k % len(styles)]  # methods with equal figures (inc-lora, o-lora) stay visible
        kw = {"linestyle": line, "marker": marker, "markersize": 4, "label": method}
        left.plot(x, [b / 2**20 for b in f["adapter_state_bytes"]], **kw)
        right.plot(x, [b / 2**20 for b in f["peak_rss_bytes"]], **kw)
    left.set(xlabel="tasks learned", ylabel="adapter state (MiB)", title="state kept between tasks")
    right.set(xlabel="tasks learned", ylabel="peak resident memory (MiB)", title="peak RSS of the process")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(f"memory over a task sequence ({model})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random", help="tiny-random | smollm2-135m | a folder")
    p.add_argument("--tasks", type=int, help="number of tasks (default 50 on tiny-random, else 10)")
    p.add_argument("--methods", default="slao,seq-lora,inc-lora,o-lora", help="comma-separated (slao list)")
    p.add_argument("--train-per-task", type=int, default=8)
    p.add_argument("--test-per-task", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=3)
    p.add_argument("--out", default=C.default_out("memory_tasks"))
    p.add_argument("--plot", help="PNG path (default: --out with .png)")
    for hidden in ("--child", "--method", "--data", "--task-names", "--run-dir", "--child-out"):
        p.add_argument(hidden, help=argparse.SUPPRESS, **({"action": "store_true"} if hidden == "--child" else {}))
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    from slao.methods import get_method

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # an unknown name fails here, with the list of valid ones
    n = args.tasks or (50 if args.model == "tiny-random" else 10)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        names = write_tasks(Path(tmp) / "data", n, args.train_per_task, args.test_per_task)
        for m in methods:
            out = Path(tmp) / f"{m}.json"
            cmd = [sys.executable, __file__, "--child", "--method", m, "--model", args.model,
                   "--data", str(Path(tmp) / "data"), "--task-names", ",".join(names),
                   "--run-dir", str(Path(tmp) / "runs" / m), "--child-out", str(out),
                   "--train-per-task", str(args.train_per_task), "--test-per-task", str(args.test_per_task),
                   "--batch", str(args.batch), "--lr", str(args.lr), "--max-new-tokens", str(args.max_new_tokens)]
            print(f"running {m} over {n} tasks ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{m} failed (exit status {done.returncode})")
            figures[m] = json.loads(out.read_text())

    shown = sorted({0, min(1, n - 1), n // 4, n // 2, n - 1})
    rows = []
    for m, f in figures.items():
        for k in shown:
            rows.append([m, k + 1, f["adapter_state_bytes"][k] / 2**20, f["peak_rss_bytes"][k] / 2**20])
    print(C.table(["method", "after task", "state MiB", "peak RSS MiB"], rows))

    checks = {}
    if "slao" in figures:
        f = figures["slao"]
        state, rss = f["adapter_state_bytes"], f["peak_rss_bytes"]
        checks["slao_state_constant"] = state[-1] == state[0]
        checks["slao_rss_growth"] = (rss[-1] - rss[0]) / rss[0]
        checks["slao_rss_within_2pct"] = checks["slao_rss_growth"] <= RSS_TOLERANCE
        # Task 2 is the first to run the orthogonal init and the merge (their first calls allocate once):
        # growth after it is what would grow with the number of tasks.
        checks["slao_rss_growth_after_task2"] = (rss[-1] - rss[min(1, n - 1)]) / rss[min(1, n - 1)]
        print(f"check: slao state after task {n} = {state[-1]} bytes, after task 1 = {state[0]} bytes: "
              f"{'same' if checks['slao_state_constant'] else 'DIFFERENT'}")
        print(f"check: slao peak RSS grew {100 * checks['slao_rss_growth']:.2f}% from task 1 to task {n} "
              f"(limit {100 * RSS_TOLERANCE:.0f}%): {'ok' if checks['slao_rss_within_2pct'] else 'FAILED'}; "
              f"{100 * checks['slao_rss_growth_after_task2']:.2f}% from task 2 on")
    C.write_json(args.out, {"benchmark": "memory_tasks", "machine": C.machine(), "settings": vars(args),
                            "tasks": n, "figures": figures, "checks": checks})
    plot(Path(args.plot or Path(args.out).with_suffix(".png")), figures, args.model)
    ok = checks.get("slao_state_constant", True) and checks.get("slao_rss_within_2pct", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
