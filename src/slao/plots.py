"""PNG figures of runs and comparisons: accuracy-matrix heatmaps, seen-task average accuracy, adapter size.

Every figure function takes plain results dicts (as in results.json) grouped by method, so it is tested
without a model. Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot, no global
backend, nothing shown on screen. matplotlib is the optional extra ``slao[plots]``: it is imported when a
figure is drawn, and its absence is a one-line error that names the extra.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slao.errors import import_extra
from slao.metrics import mean_matrix, order_spread, seen_average
from slao.stats import none_first

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]
LINESTYLES = ["-", "--", "-.", ":"]


def short_name(name: str, width: int = 16) -> str:
    """A task name that fits a tick label; SuperNI's 'task1572_samsum_summary' keeps its number."""
    return name if len(name) <= width else name[: width - 1] + "…"


def require_matplotlib() -> None:
    """A MissingExtraError naming ``slao[plots]`` when matplotlib is not installed."""
    import_extra("matplotlib", "plots", "figures")


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _style(k: int) -> dict:
    # Markers and dash styles differ too, so methods with identical curves stay distinguishable.
    return {"marker": MARKERS[k % len(MARKERS)], "linestyle": LINESTYLES[k % len(LINESTYLES)]}


def _dodge(k: int, count: int) -> float:
    """A small sideways shift per method, so that identical curves (common at chance level) stay visible."""
    return (k - (count - 1) / 2) * min(0.05, 0.3 / max(count, 1))


def _mean_std(series: Sequence[Sequence[float | None]]) -> tuple[list[float | None], list[float | None]]:
    """Elementwise mean and sample std over runs, ignoring None; std None with fewer than two values."""
    means, stds = [], []
    for cells in zip(*series, strict=True):
        vals = [v for v in cells if v is not None]
        mean = sum(vals) / len(vals) if vals else None
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) >= 2 else None)
    return means, stds


# -- (a) accuracy matrix ------------------------------------------------------------------------------
def accuracy_heatmap(R: Sequence[Sequence[float | None]], tasks: Sequence[str], title: str, path: Path) -> Path:
    """Annotated heatmap of R: row = after training task i, column = task j; cells never scored are grey.

    Rows with no score at all (a joint run's, an unfinished run's) are left out rather than drawn grey.
    """
    T = len(tasks)
    labels = [short_name(t) for t in tasks]
    rows = [i for i, row in enumerate(R) if any(v is not None for v in row)] or list(range(T))
    joint = T > 1 and rows == [T - 1] and all(v is not None for v in R[T - 1])
    names = ["all tasks, jointly"] if joint else [f"{i + 1}. {labels[i]}" for i in rows]
    cells = [[np.nan if v is None else v for v in R[i]] for i in rows]
    data = np.ma.masked_invalid(np.array(cells, dtype=float))
    fig = _figure(max(5.5, 2.8 + 0.8 * T), max(3.0, 2.2 + 0.55 * len(rows)))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(data, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    size = 9 if T <= 6 else 7.5 if T <= 10 else 6.5
    for y, i in enumerate(rows):
        for j in range(T):
            v = R[i][j]
            if v is not None:
                # viridis is dark at the low end: light text there, dark text on the yellow end.
                ax.text(j, y, f"{v:.1f}", ha="center", va="center", fontsize=size,
                        color="white" if v < 60 else "black")
    ax.set_xticks(range(T), labels, rotation=35, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_xlabel("task scored (grey: not evaluated)")
    ax.set_ylabel("after training" if joint else "after training task")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.05, pad=0.03)
    return _save(fig, path)


# -- (b) average accuracy over the tasks seen so far ---------------------------------------------------
def seen_average_figure(runs: dict[str, Sequence[dict]], title: str, path: Path) -> Path:
    """One line per method: mean over seeds of the seen-task average after each task, ±std band."""
    tasks = _tasks(runs)
    T = len(tasks)
    x = np.arange(1, T + 1)
    fig = _figure(max(8.0, 5.0 + 0.45 * T), 4.6)
    ax = fig.add_subplot()
    plotted: list[float] = []
    seed_counts = sorted({len(rs) for rs in runs.values() if rs})
    for k, (name, results) in enumerate(runs.items()):
        if not results:
            continue
        seeds = len(results)
        mean, std = _mean_std([seen_average(r["accuracy"]) for r in results])
        idx = [i for i, v in enumerate(mean) if v is not None]
        label = name if len(seed_counts) == 1 else f"{name} ({seeds} seed{'s' * (seeds > 1)})"
        shift = _dodge(k, len(runs))
        if len(idx) == 1:  # a joint (multi-task) run has one evaluation, after all tasks
            i = idx[0]
            line = ax.plot([x[i] + shift], [mean[i]], marker="*", markersize=14, linestyle="none",
                           label=f"{label}: one evaluation, after all tasks")[0]
            if std[i] is not None:
                ax.errorbar([x[i] + shift], [mean[i]], yerr=[std[i]], color=line.get_color(), capsize=4)
        elif idx:
            xs, ys = x[idx] + shift, np.array([mean[i] for i in idx])
            line = ax.plot(xs, ys, label=label, markersize=5, **_style(k))[0]
            sd = np.array([std[i] if std[i] is not None else 0.0 for i in idx])
            if seeds > 1:
                ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.18, linewidth=0)
        plotted += [mean[i] + (std[i] or 0) for i in idx] + [mean[i] - (std[i] or 0) for i in idx]
    lo, hi = (min(plotted), max(plotted)) if plotted else (0.0, 100.0)
    # at least a 10-point window inside 0..100, plus room for markers sitting on 0 or 100
    pad = max(2.0, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    hi = max(hi, lo + 10.0)
    ax.set_ylim(lo - 1.5, hi + 1.5)
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 100])  # no negative accuracy on the axis
    ax.set_xlim(0.6, T + 0.4)
    ax.set_xticks(x, [f"{i}. {short_name(t)}" for i, t in zip(x, tasks, strict=True)],
                  rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel("after training task")
    ax.set_ylabel("average accuracy on tasks seen (%)")
    many = max(seed_counts, default=1) > 1
    ax.set_title(title + ("\nmean over seeds, band ± std" if many else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


# -- (c) adapter state size ------------------------------------------------------------------------------
def state_size_figure(runs: dict[str, Sequence[dict]], title: str, path: Path) -> Path:
    """Adapter state kept by each method after each task (first seed; sizes do not depend on it)."""
    tasks = _tasks(runs)
    T = len(tasks)
    sizes = {name: rs[0].get("adapter_state_bytes") or [None] * T for name, rs in runs.items() if rs}
    biggest = max((v for s in sizes.values() for v in s if v is not None), default=0)
    scale, unit = (1e6, "MB") if biggest >= 1e6 else (1e3, "KB")
    fig = _figure(7.5, 4.4)
    ax = fig.add_subplot()
    for k, (name, seq) in enumerate(sizes.items()):
        idx = [i for i, v in enumerate(seq) if v is not None]
        xs = [i + 1 for i in idx]
        ys = [seq[i] / scale for i in idx]
        # Sizes are often identical between methods: earlier methods get bigger markers and wider lines,
        # so that the ones drawn over them leave a visible rim instead of hiding them.
        big = max(4.0, 11.0 - 1.2 * k)
        if len(idx) == 1:
            ax.plot(xs, ys, marker="*", markersize=big + 5, linestyle="none", label=f"{name}, after all tasks")
        elif idx:
            ax.plot(xs, ys, label=name, markersize=big, linewidth=max(1.0, 3.0 - 0.3 * k), **_style(k))
    ax.set_xlim(0.6, T + 0.4)
    ax.set_xticks(range(1, T + 1))
    ax.set_ylim(bottom=0, top=biggest / scale * 1.12 if biggest else 1)
    ax.set_xlabel("number of tasks learned")
    ax.set_ylabel(f"adapter state ({unit})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


# -- (d) cost against the number of tasks ----------------------------------------------------------------
def _cumulative_seconds(r: dict) -> list[float | None]:
    """Seconds spent up to each task: training plus the method's own work (statistics, init, merge).
    None after a task without a time; a joint (multi-task) run has its one training at the last task."""
    train = r.get("train_seconds") or []
    own = r.get("method_seconds") or [0.0] * len(train)
    out, total = [], 0.0
    for t, m in zip(train, own, strict=False):
        if t is None:
            out.append(None)
            continue
        total += t + (m or 0.0)
        out.append(total)
    return out


def cost_figure(runs: dict[str, Sequence[dict]], title: str, path: Path) -> Path:
    """Two panels against the number of tasks learned: the state each method keeps (first run; sizes do
    not depend on the seed) and the cumulative seconds of training plus the method's own work (mean over
    the runs of the first task order, since per-task times depend on which task it is; a method without
    runs of that order shows its own first order, and says which)."""
    tasks = _tasks(runs)
    T = len(tasks)
    fig = _figure(12.0, 4.6)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = {name: rs[0].get("adapter_state_bytes") or [None] * T for name, rs in runs.items() if rs}
    biggest = max((v for seq in sizes.values() for v in seq if v is not None), default=0)
    scale, unit = (1e6, "MB") if biggest >= 1e6 else (1e3, "KB")
    first_order = (_orders(runs) or [None])[0]
    for k, (name, results) in enumerate(runs.items()):
        if not results:
            continue
        order = first_order if any(r.get("order") == first_order for r in results) else results[0].get("order")
        first = [r for r in results if r.get("order") == order]
        label = name if order == first_order else f"{name} (order {order})"
        panels = [(left, [v / scale if v is not None else None for v in sizes[name]]),
                  (right, _mean_std([_cumulative_seconds(r) for r in first])[0])]
        for ax, seq in panels:
            idx = [i for i, v in enumerate(seq) if v is not None]
            xs, ys = [i + 1 for i in idx], [seq[i] for i in idx]
            big = max(4.0, 11.0 - 1.2 * k)  # earlier methods drawn bigger: identical curves leave a rim
            if len(idx) == 1:
                ax.plot(xs, ys, marker="*", markersize=big + 5, linestyle="none", label=f"{label} (joint)")
            elif idx:
                ax.plot(xs, ys, label=label, markersize=big, linewidth=max(1.0, 3.0 - 0.3 * k), **_style(k))
    for ax, ylabel in ((left, f"state kept between tasks ({unit})"),
                       (right, "training + method seconds, cumulative")):
        ax.set_xlim(0.6, T + 0.4)
        ax.set_xticks(range(1, T + 1))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("number of tasks learned")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.set_title("memory", fontsize=10)
    right.set_title("time (on the machine that ran them)", fontsize=10)
    fig.suptitle(title, fontsize=10)
    right.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


# -- (e) order robustness -------------------------------------------------------------------------------
def order_spread_figure(runs: dict[str, Sequence[dict]], title: str, path: Path,
                        robustness: dict | None = None) -> Path | None:
    """A panel per method run under two orders or more: each task's final score under each order (mean over
    the seeds run under every order), joined by a bar whose length is the task's spread (OPD). The panel
    title gives AOPD and, where ``robustness`` (method -> its comparison entry's order_robustness) has it,
    the AOPD from noise alone. None when no method has two orders."""
    from slao.compare import group_by_order, order_finals

    panels = {}
    for name, results in runs.items():
        seeds, finals = order_finals(group_by_order(results))
        if seeds:
            panels[name] = (seeds, finals)
    if not panels:
        return None
    tasks = sorted(set.union(*(set(f) for _, finals in panels.values() for f in finals.values())))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.4 * cols + 2.2, 0.32 * len(tasks) * rows + 1.6 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    orders = sorted({o for _, finals in panels.values() for o in finals}, key=none_first)
    colors = {o: f"C{k}" for k, o in enumerate(orders)}
    for ax, (name, (seeds, finals)) in zip(axes, panels.items(), strict=False):
        for y, task in enumerate(tasks):
            vals = [finals[o][task] for o in finals if task in finals[o]]
            if len(vals) > 1:
                ax.plot([min(vals), max(vals)], [y, y], color="0.75", linewidth=3, solid_capstyle="round")
            for k, o in enumerate(sorted(finals, key=none_first)):
                if task in finals[o]:
                    ax.plot([finals[o][task]], [y], marker=MARKERS[k % len(MARKERS)], color=colors[o],
                            linestyle="none", markersize=6, label=f"order {o}" if y == 0 else None)
        rob = (robustness or {}).get(name) or {}
        boot = rob.get("aopd_bootstrap")
        shared = sorted(set.intersection(*(set(f) for f in finals.values())))
        aopd = order_spread([[finals[o][t] for t in shared] for o in finals])["aopd"] if shared else None
        head = f"{name}" + (f"\nAOPD {aopd:.1f}" if aopd is not None else "")
        if boot:
            head += f", from noise alone {boot['noise']:.1f}"
        ax.set_title(head + f"\nseeds {', '.join(map(str, seeds))}", fontsize=8)
        ax.set_xlim(-3, 103)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_yticks(range(len(tasks)), [short_name(t, 24) for t in tasks], fontsize=7)
    for k, ax in enumerate(axes[:len(panels)]):
        if k + cols >= len(panels):  # nothing drawn below it: it carries the axis' labels
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("final score (%)", fontsize=8)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
    fig.suptitle(title + "\nthe bar is each task's spread over orders (OPD)", fontsize=9)
    return _save(fig, path)


# -- all of them ---------------------------------------------------------------------------------------
def paired_figure(paired: dict, title: str, path: Path) -> Path | None:
    """The reference method minus each other method, per metric: the paired difference and its 95%
    interval against a zero line; filled where the interval excludes zero. None without paired pairs."""
    from slao.metrics import HIGHER_IS_BETTER, LABELS, PAIRED

    ref = paired.get("reference")
    pairs = [p for p in (paired.get("pairs") or {}).values() if ref in (p["x"], p["y"])]
    if not pairs:
        return None
    keys = PAIRED
    fig = _figure(3.2 * len(keys) + 1.5, 0.55 * len(pairs) + 1.8)
    axes = fig.subplots(1, len(keys), sharey=True)
    others = [p["y"] if p["x"] == ref else p["x"] for p in pairs]
    for ax, key in zip(axes, keys, strict=True):
        for row, pair in enumerate(pairs):
            iv = pair.get(key)
            if iv is None:
                ax.text(0, row, "n/a", ha="center", va="center", fontsize=8, color="0.5")
                continue
            sign = 1.0 if pair["x"] == ref else -1.0  # always the reference minus the other
            d, lo, hi = (sign * iv["diff"], sign * iv["lo"], sign * iv["hi"])
            lo, hi = min(lo, hi), max(lo, hi)
            good = (d > 0) == HIGHER_IS_BETTER[key]
            color = ("tab:green" if good else "tab:red") if iv["separated"] else "0.45"
            ax.errorbar([d], [row], xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3,
                        markerfacecolor=color if iv["separated"] else "white")
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        better = "higher" if HIGHER_IS_BETTER[key] else "lower"
        ax.set_xlabel(f"{LABELS[key]}: {ref} − other (points; {better} is better)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(pairs)), [f"vs {o}" for o in others])
    axes[0].invert_yaxis()
    fig.suptitle(title + "\n95% paired intervals (bootstrap joined with t over runs); filled: the interval "
                 "excludes zero", fontsize=9)
    return _save(fig, path)


def _tasks(runs: dict[str, Sequence[dict]]) -> list[str]:
    for results in runs.values():
        if results:
            return list(results[0]["tasks"])
    return []


# Every name write_figures draws under: what matches one of these in a figures folder and was not drawn by the
# latest call is a figure of an earlier state of the folder (a grid that has since gained an order, say).
FIGURE_NAMES = ("accuracy-*.png", "seen-average*.png", "adapter-state.png", "cost-vs-tasks.png",
                "paired-differences.png", "order-spread.png")


def remove_stale_figures(folder: Path, drawn: Sequence[Path]) -> list[Path]:
    """Delete the figures of ``folder`` that write_figures names but did not draw this time, so that the
    folder never shows a figure of runs it no longer describes (``accuracy-slao.png`` beside
    ``accuracy-slao-order-1.png`` once a second order came in). Other files are left alone. Returns what
    was removed."""
    folder = Path(folder)
    keep = {Path(p).name for p in drawn}
    stale = sorted({p for pattern in FIGURE_NAMES for p in folder.glob(pattern) if p.name not in keep})
    for p in stale:
        p.unlink()
    return stale


def _orders(runs: dict[str, Sequence[dict]]) -> list:
    """The task orders the runs were made under, a run without one (None) first."""
    found = {r.get("order") for rs in runs.values() for r in rs}
    return sorted(found, key=none_first)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_figures(runs: dict[str, Sequence[dict]], folder: Path, context: str,
                  paired: dict | None = None, robustness: dict | None = None) -> list[Path]:
    """The figures for the runs (method -> results of each seed) into ``folder``: a heatmap per method
    (and order), the seen-task average (per order), the adapter state, memory and time against tasks, the
    spread over orders where there are several (with ``robustness``, method -> order_robustness, in its
    titles), and the paired differences when given."""
    from slao.compare import group_by_order

    folder = Path(folder)
    paths = []
    for name, results in runs.items():
        by_order = group_by_order(results)
        for order, group in by_order.items():  # a matrix averages runs of one task order only
            seeds = [r["seed"] for r in group]
            which = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))}"
            tag = f"-order-{order}" if len(by_order) > 1 else ""
            label = f", order {order}" if len(by_order) > 1 else ""
            paths.append(accuracy_heatmap(mean_matrix([r["accuracy"] for r in group]), group[0]["tasks"],
                                          f"{name}: accuracy matrix ({which}{label})\n{context}",
                                          folder / f"accuracy-{_safe(name)}{tag}.png"))
    orders = _orders(runs)
    if len(orders) <= 1:
        paths.append(seen_average_figure(runs, f"Average accuracy on the tasks seen so far\n{context}",
                                         folder / "seen-average.png"))
    else:  # the tasks seen after the i-th one differ between orders: one figure per order
        for order in orders:
            of_order = {name: [r for r in rs if r.get("order") == order] for name, rs in runs.items()}
            paths.append(seen_average_figure(of_order, f"Average accuracy on the tasks seen so far, order {order}"
                                             f"\n{context}", folder / f"seen-average-order-{order}.png"))
    paths.append(state_size_figure(runs, f"Adapter state kept between tasks\n{context}",
                                   folder / "adapter-state.png"))
    paths.append(cost_figure(runs, f"Memory and time against the number of tasks\n{context}",
                             folder / "cost-vs-tasks.png"))
    spread = order_spread_figure(runs, f"Final score per task under each order\n{context}",
                                 folder / "order-spread.png", robustness)
    paths += [spread] if spread else []
    if paired:
        drawn = paired_figure(paired, f"Paired differences\n{context}", folder / "paired-differences.png")
        paths += [drawn] if drawn else []
    return paths
