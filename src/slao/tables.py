"""Every table slao prints or writes: a run's accuracy matrix, and a comparison's methods, paired
differences, McNemar tests and order robustness, as aligned text (terminal) or Markdown (comparison.md).
The numbers come from slao.metrics, slao.compare and slao.stats; this module only formats them."""

from __future__ import annotations

from slao.metrics import HIGHER_IS_BETTER, LABELS, METRICS, PAIRED
from slao.stats import none_first

PAIRED_RULE = (
    "Differences are x − y in points with a 95% paired interval: a paired bootstrap ({replicates} replicates), "
    "each replicate redrawing the seeds within each task order and the test examples within each task, the "
    "same draws for both methods and for every row of the accuracy matrix, joined with a t-interval over the "
    "runs' own differences (given more runs than orders; runs minus orders degrees of freedom): the "
    "interval runs from the lower of the two lower ends to the higher of the two upper ends. A method is "
    "called better only where that interval excludes zero. \"Detects about ±w\": the difference this setting "
    "finds 4 times in 5 (the larger of 2.8 bootstrap standard errors and the t-interval's own). With three "
    "seeds per order the bootstrap alone is too narrow where seeds vary as much as test examples do "
    "(bench/paired_calibration.py): the t-interval pays for knowing the seeds' spread from a few runs."
)


# -- cells ---------------------------------------------------------------------------------------------
def format_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    if n < 1e6:
        return f"{n / 1e3:.1f} KB"
    return f"{n / 1e6:.2f} MB"


def format_stat(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return "n/a"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def format_interval(iv: dict | None) -> str:
    if iv is None:
        return "n/a"
    return f"{iv['diff']:+.1f} [{iv['lo']:+.1f}, {iv['hi']:+.1f}]"


def _num(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


# -- layouts -------------------------------------------------------------------------------------------
def markdown(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def aligned(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" if c == 0 else f"{{:>{w}}}" for c, w in enumerate(widths))
    return [fmt.format(*headers), *[fmt.format(*r) for r in rows]]


# -- a run ----------------------------------------------------------------------------------------------
def results_table(results: dict) -> str:
    """A run's accuracy matrix (rows after each task; '-' where not scored), zero-shot row and metrics."""
    names = results["tasks"]
    width = max(8, min(16, max(len(n) for n in names) + 1))

    def cell(v) -> str:
        return f"{'-' if v is None else f'{v:.1f}':>{width}}"

    head = f"{'after task':<18}" + "".join(f"{_short(n, width - 1):>{width}}" for n in names)
    seeds = results.get("seed_label") or f"seed {results['seed']}"
    lines = [f"{results['method']} on {results['model']} ({results['benchmark']}, {seeds})",
             "accuracy (%): row = after training that task, column = task scored", head]
    for i, row in enumerate(results["accuracy"]):
        if all(v is None for v in row):
            continue
        lines.append(f"{f'{i + 1}. ' + _short(names[i], 14):<18}" + "".join(cell(v) for v in row))
    if results.get("zero_shot"):
        lines.append(f"{'zero-shot':<18}" + "".join(cell(v) for v in results["zero_shot"]))
    metrics = results.get("metrics") or {}
    if metrics:
        parts = [f"{LABELS.get(k, k)} {_num(v)}" for k, v in metrics.items()]
        lines.append("metrics: " + ", ".join(parts) + "  (in points; F forgetting, LA learning accuracy)")
    sizes = [b for b in results.get("adapter_state_bytes") or [] if b is not None]
    if sizes:
        lines.append(f"adapter state: {sizes[-1] / 1e6:.2f} MB after the last task "
                     f"({sizes[0] / 1e6:.2f} MB after the first)")
    return "\n".join(lines)


# -- a comparison -----------------------------------------------------------------------------------
def _keeps(entry: dict) -> str:
    """What a method keeps between tasks besides its adapter: data or not, and whether its state grows."""
    data = {True: "data-free", False: "keeps data", None: "?"}[entry.get("data_free")]
    return data + (", grows" if entry.get("grows") else "")


def _seconds(s: dict) -> str:
    """A time column: mean ± std, and how many runs it covers where some runs predate its record."""
    text = format_stat(s)
    n, total = s.get("n"), len(s.get("values") or [])
    return text + (f" ({n} of {total} runs)" if s["mean"] is not None and n is not None and n < total else "")


def method_rows(comp: dict) -> tuple[list[str], list[list[str]]]:
    head = (["method", "runs"] + [LABELS[k] for k in METRICS]
            + ["adapter state", "keeps", "train s", "method s", "eval s"])
    rows = [[name, str(e.get("runs", len(e["seeds"])))] + [format_stat(e[k]) for k in METRICS]
            + [format_bytes(e["adapter_state_bytes"]), _keeps(e), _seconds(e["train_seconds"]),
               _seconds(e.get("method_seconds") or {"mean": None}), _seconds(e["eval_seconds"])]
            for name, e in comp["methods"].items()]
    return head, rows


def paired_rows(paired: dict) -> tuple[list[str], list[list[str]]]:
    head = ["x − y"] + [f"{LABELS[k]} [95% interval]" for k in PAIRED] + ["AA verdict"]
    rows = []
    for pair in paired.get("pairs", {}).values():
        aa = pair["aa"]
        word = "n/a" if aa is None else (f"{pair['x'] if aa['diff'] > 0 else pair['y']} better" if aa["separated"]
                                         else f"none detected (±{aa['detectable']:.1f})")
        rows.append([f"{pair['x']} − {pair['y']}"] + [format_interval(pair.get(k)) for k in PAIRED] + [word])
    return head, rows


def verdict(label: str, x: str, y: str, iv: dict | None, higher_is_better: bool) -> str:
    """One sentence for a paired difference x − y: who is better, by how much, how sure."""
    if iv is None:
        return f"{label}: n/a (not scored for both)"
    rng = f"[{iv['lo']:+.1f}, {iv['hi']:+.1f}]"
    if not iv["separated"]:
        return (f"{label}: no difference detected ({iv['diff']:+.1f} {rng}); this setting detects about "
                f"±{iv['detectable']:.1f} points")
    better = x if (iv["diff"] > 0) == higher_is_better else y
    side = "above" if iv["diff"] > 0 else "below"
    return f"{label}: {x} {side} {y} by {abs(iv['diff']):.1f} {rng}; {better} is better"


def paired_lines(paired: dict) -> list[str]:
    """Verdict sentences for every pair that involves the reference method (the first one named)."""
    lines = []
    for pair in paired.get("pairs", {}).values():
        if paired.get("reference") not in (pair["x"], pair["y"]):
            continue
        parts = [verdict(LABELS[k], pair["x"], pair["y"], pair.get(k), HIGHER_IS_BETTER[k]) for k in PAIRED]
        lines.append(f"- {pair['x']} vs {pair['y']}: " + "; ".join(parts) + ".")
    return lines


def mcnemar_rows(paired: dict) -> tuple[list[str], list[list[str]]]:
    head = ["task", "x vs y", "only x right", "only y right", "exact p"]
    rows = []
    for pair in paired.get("pairs", {}).values():
        if paired.get("reference") not in (pair["x"], pair["y"]):
            continue
        for task, m in (pair.get("mcnemar") or {}).items():
            rows.append([task, f"{pair['x']} vs {pair['y']}", str(m["x_only"]), str(m["y_only"]),
                         f"{m['p']:.3g}"])
    return head, rows


def order_rows(comp: dict) -> tuple[list[str], list[list[str]]]:
    head = ["method", "AOPD", "AOPD from noise alone", "orders differ on average", "MOPD", "MOPD from noise alone",
            "widest task", "beyond noise", "seeds"]
    rows = []
    for name, e in comp["methods"].items():
        rob = e.get("order_robustness") or {}
        if rob.get("mopd") is None:  # not yet run under two orders: said in a line below the table
            continue
        opd = rob.get("opd") or {}
        widest = max(opd, key=opd.get) if opd else None
        boot = rob.get("aopd_bootstrap")
        mopd_noise, mopd_call = _against_noise(boot, "mopd_")
        rows.append([name, _num(rob.get("aopd")), *_against_noise(boot, ""), _num(rob.get("mopd")), mopd_noise,
                     "n/a" if widest is None else f"{widest} ({opd[widest]:.1f})", mopd_call,
                     ", ".join(map(str, rob.get("seeds") or [])) or "n/a"])
    return head, rows


def _against_noise(boot: dict | None, prefix: str) -> list[str]:
    """The floor noise alone gives ('4.6 (95th pct 7.7)') and the call against it ('not detected (p 0.07)')."""
    if not boot or f"{prefix}noise" not in boot:
        return ["n/a", "n/a"]
    p = boot[f"{prefix}p"]
    return [f"{boot[f'{prefix}noise']:.1f} (95th pct {boot[f'{prefix}noise_95']:.1f})",
            f"{'yes' if p < 0.05 else 'not detected'} (p {p:.2g})"]


ORDER_RULE = ("Per task the spread (max − min over orders) of its final score, mean over the seeds run under "
              "every order (the last column); MOPD the largest spread, AOPD the mean. A spread is never negative, so "
              "test and seed noise alone make AOPD positive: \"from noise alone\" is the AOPD the orders would "
              "show if they had the same true scores (a bootstrap that redraws seeds within each order and test "
              "examples within each task, recentred on that null), and the orders differ only where the "
              "observed AOPD exceeds that null's 95th percentile (one-sided p below 0.05). With several seeds the "
              "floor counts test-set noise at both levels, as the paired bootstrap does, so it errs high: \"not "
              "detected\" is the safe side of the call. MOPD is tested the same way, against the widest spread noise "
              "alone gives over the tasks.")


def _one_order_note(comp: dict) -> str:
    """Which methods have no order robustness yet (runs of fewer than two orders, or no seed under both)."""
    lacking = [name for name, e in comp["methods"].items() if (e.get("order_robustness") or {}).get("mopd") is None]
    return f"Not yet run under two orders with a shared seed: {', '.join(lacking)}." if lacking else ""


def _counted(word: str, values) -> str:
    """'seed 0' for one value, 'seeds 0, 1, 2' for several."""
    values = list(values)
    return f"{word}{'' if len(values) == 1 else 's'} {', '.join(map(str, values))}"


def _has_spreads(comp: dict) -> bool:
    """Whether any method has its order robustness: it needs runs of two orders or more (a grid over
    several orders whose second has not run yet has none to show)."""
    return len(comp.get("orders") or []) > 1 and any(
        (e.get("order_robustness") or {}).get("mopd") is not None for e in comp["methods"].values())


def _header(comp: dict) -> str:
    orders = comp.get("orders")
    where = (_counted("order", orders) if orders
             else f"tasks {', '.join(comp.get('tasks') or [])}")
    return (f"Model {comp.get('model')}, benchmark {comp.get('benchmark')}, {where}; train_per_task "
            f"{comp.get('train_per_task')}, test_per_task {comp.get('test_per_task')}; "
            f"{_counted('seed', comp['seeds'])} "
            f"({comp.get('runs_done')} of {comp.get('runs_total')} runs finished)." + _failed_note(comp))


def _units_text(units: frozenset) -> str:
    """(order, seed) runs in words: 'orders 1, 2, seeds 0, 1, 2' when they are every pair of the two; one by
    one otherwise, a run made without --orders (order None) first."""
    orders = sorted({o for o, _ in units}, key=none_first)
    seeds = sorted({s for _, s in units})
    if len(units) == len(orders) * len(seeds) and (orders == [None] or None not in orders):
        return (_counted("order", orders) + ", " if orders != [None] else "") + _counted("seed", seeds)
    ordered = sorted(units, key=lambda u: (none_first(u[0]), u[1]))
    return ", ".join(f"order {o} seed {s}" if o is not None else f"seed {s}" for o, s in ordered)


def unlike_runs_note(comp: dict) -> str:
    """A sentence when the methods' means are over different (order, seed) runs (a grid filled in pieces):
    those means are not like for like, the paired differences are. Empty when every method has the same."""
    groups: dict[frozenset, list[str]] = {}
    for name, e in comp["methods"].items():
        groups.setdefault(frozenset(tuple(u) for u in e.get("units") or []), []).append(name)
    if len(groups) < 2:
        return ""
    common = max(groups, key=lambda g: len(groups[g]))
    parts = [f"{', '.join(names)}: {_units_text(g)}" for g, names in groups.items() if g != common]
    parts.append(f"{'every other method' if len(groups[common]) > 1 else groups[common][0]}: {_units_text(common)}")
    return ("The methods' means are over different runs (" + "; ".join(parts) + "), so they are not like for "
            "like; the paired differences compare each pair on the runs both have.")


def _failed_note(comp: dict) -> str:
    failed = comp.get("failed") or []
    if not failed:
        return ""
    return " Failed, left out: " + "; ".join(f"{r['cell']} (log {r['log']})" for r in failed) + "."


def _paired_section(comp: dict, layout) -> list[str]:
    paired = comp.get("paired") or {}
    if not paired.get("pairs"):
        why = ("runs without per-example scores (made by an older slao): " + ", ".join(paired["missing"])
               if paired.get("missing") else "fewer than two methods finished")
        return [f"No paired statistics: {why}."]
    lines = [PAIRED_RULE.format(replicates=paired["replicates"]), ""]
    lines += layout(*paired_rows(paired)) + [""] + paired_lines(paired)
    if paired.get("detectable_aa") is not None:
        lines += ["", f"Smallest AA difference this setting detects (median over pairs): about "
                      f"±{paired['detectable_aa']:.1f} points."]
    head, rows = mcnemar_rows(paired)
    if rows:
        lines += ["", f"Exact McNemar tests on the final row, per exact-match task ({paired['reference']} "
                      "against each other method; discordant examples pooled over seeds and orders):", ""]
        lines += layout(head, rows)
    return lines


def comparison_markdown(comp: dict) -> str:
    lines = [f"# Comparison: {', '.join(comp['methods'])}", "", _header(comp), ""]
    lines += markdown(*method_rows(comp))
    lines += ["", "AA, BWT, F (forgetting), FWT and LA (learning accuracy: the mean of the diagonal, each task "
                  "right after training on it) in points, mean ± sample std over runs (seeds, and orders where "
                  "there are several); times are totals per run in seconds, \"method s\" the method's own work "
                  "outside training (its statistics, init and merge).", ""]
    if note := unlike_runs_note(comp):
        lines += [note, ""]
    if _has_spreads(comp):
        lines += ["## Order robustness", "", ORDER_RULE, ""]
        lines += markdown(*order_rows(comp)) + [""]
        if note := _one_order_note(comp):
            lines += [note, ""]
    lines += ["## Paired comparisons", ""] + _paired_section(comp, markdown)
    return "\n".join(lines) + "\n"


def comparison_table(comp: dict) -> str:
    """The comparison as aligned text for the terminal: methods, paired verdicts, order robustness."""
    lines = ["comparison on " + _header(comp)]
    lines += aligned(*method_rows(comp))
    lines += ["metrics in points (mean ± sample std over runs); times are totals per run in seconds"]
    if note := unlike_runs_note(comp):
        lines += [note]
    if _has_spreads(comp):
        lines += ["order robustness:"] + aligned(*order_rows(comp))
        if note := _one_order_note(comp):
            lines += [note]
    lines += ["paired comparisons:"] + _paired_section(comp, aligned)
    return "\n".join(lines)
