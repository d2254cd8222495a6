"""Reports of a run: the table, the accuracy-latency plot and the W&B run, written as ``summary.json`` grows.

Used by ``compare``, ``merge``, ``demo`` and ``tune``. matplotlib and wandb are imported only when a plot or a
W&B run is asked for, and :func:`check_extras` says before any work starts when one of them is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from specs_rl.config import ConfigError, to_dict
from specs_rl.run.records import write_json
from specs_rl.run.summary import LATENCY_RATIOS, REPEAT_RATIO, SPECULATIVE_RATIO, aggregate_rows, summary_rows
from specs_rl.types import STAGES, TOKEN_KINDS


@dataclass
class ReportConfig:
    """How a run is shown (not what it computes: these keys may differ when a run is resumed or merged)."""

    wandb: bool = field(default=True, metadata={"help": "log to W&B (offline unless logged in)"})
    project: str = field(default="specs-rl", metadata={"help": "W&B project"})
    wandb_dir: str | None = field(default=None, metadata={"help": "where W&B writes its files (null: out)"})
    plot: bool = field(default=True, metadata={"help": "write accuracy_latency.png"})
    progress: bool = field(default=True, metadata={"help": "progress bar with ETA on stderr"})


REPORT_KEYS = ("out", "wandb", "project", "wandb_dir", "plot", "progress")


def check_extras(report: ReportConfig) -> None:
    """The optional packages this run will need are installed (checked before any work, not at the end)."""
    for key, module, extra in (("plot", "matplotlib", "eval"), ("wandb", "wandb", "track")):
        if getattr(report, key, False) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{key}=true needs the {module} package (pip install specs-rl[{extra}]) or set {key}=false"
            )


# ------------------------------------------------------------------------------------------------------------------
# The table


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _acc(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        return "-"
    lo, hi = row["accuracy_ci"]
    return f"{row['accuracy']:.3f} [{lo:.2f},{hi:.2f}]"


def _ratio(row: dict[str, Any]) -> str:
    pooled, rep = row.get(LATENCY_RATIOS["latency_mean_s"]), row.get(REPEAT_RATIO)
    if pooled is None:
        return "-"
    if rep and rep["repeats"] > 1:
        return (
            f"{pooled:.2f}x (med {rep['median']:.2f} [{rep['min']:.2f},{rep['max']:.2f}] k={rep['repeats']})"
        )
    return f"{pooled:.2f}x"


def _speculative(row: dict[str, Any]) -> str:
    """A speculative variant's acceptance length and its latency ratio to its base (median [range] over repeats)."""
    rep, length = row.get(SPECULATIVE_RATIO), row.get("acceptance_length_mean")
    if not rep:
        return "-" if length is None else f"acc len {length:.2f}"
    ratio = f"{rep['median']:.2f}x [{rep['min']:.2f},{rep['max']:.2f}] k={rep['repeats']}"
    return ratio if length is None else f"{ratio}, acc len {length:.2f}"


TOKEN_HEADS = {
    "draft": "tok draft",
    "target_generate": "tok tgt gen",
    "target_score": "tok tgt score",
    "judge": "tok judge",
}


def format_table(rows: Sequence[dict[str, Any]], aggregate: bool = False) -> str:
    """The summary as an aligned text table (one line per row). Stage times overlap (``verify`` is the wall time of
    target scoring + PRM in draft steps); only ``lat`` is a problem's end-to-end time."""
    head = ["method", "n", "seeds" if aggregate else "seed", "problems", "accuracy [95% CI]"]
    if aggregate:
        head += ["acc std"]
    head += ["lat mean s", "p50", "p90"]
    head += [f"{s} s" for s in STAGES] + ["draft frac", "defer/pb"] + [TOKEN_HEADS[k] for k in TOKEN_KINDS]
    speculative = aggregate and any(r.get(SPECULATIVE_RATIO) for r in rows)
    if aggregate:
        head += ["vs BS(target)"] + (["vs no spec. decoding"] if speculative else [])
    lines = []
    for r in rows:
        cells = [
            r["method"],
            "-" if r["n"] is None else str(r["n"]),
            ",".join(map(str, r["seeds"])) if aggregate else str(r["seed"]),
            str(r["problems"]),
            _acc(r),
        ]
        if aggregate:
            cells.append(_fmt(r.get("accuracy_seed_std"), ".3f"))
        cells += [_fmt(r["latency_mean_s"]), _fmt(r["latency_p50_s"]), _fmt(r["latency_p90_s"])]
        cells += [_fmt(r["latency_stage_mean_s"][s]) for s in STAGES]
        cells += [_fmt(r["draft_step_fraction"], ".2f"), _fmt(r["deferrals_per_problem"], ".2f")]
        cells += [_fmt(r["tokens_mean"][k], ".1f") for k in TOKEN_KINDS]
        if aggregate:
            cells.append(_ratio(r))
        if speculative:
            cells.append(_speculative(r))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


# ------------------------------------------------------------------------------------------------------------------
# The plot


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower latency and higher accuracy), by increasing latency.

    >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.2)])
    [3, 0, 2]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def point_label(row: dict[str, Any]) -> str:
    return row["method"] + ("" if row["n"] is None else f" n={row['n']}")


def new_plot(size: tuple[float, float] = (7.5, 5)) -> tuple[Any, Any, Any]:
    """``(plt, fig, ax)`` of an accuracy-latency figure (matplotlib imported here, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    return plt, fig, ax


def method_colors(plt: Any, methods: Sequence[str]) -> dict[str, Any]:
    """One colour per method, in the order given (tab10, tab20 past ten methods)."""
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def finish_plot(
    plt: Any,
    fig: Any,
    ax: Any,
    path: Path,
    latencies: Sequence[float],
    title: str,
    *,
    legend: dict[str, Any] | None,
) -> None:
    """The accuracy-latency axes (latency on a log scale when it spans more than 20x), the title, the legend
    (``legend``: its keyword arguments; None: no legend), saved to ``path`` and closed."""
    lats = [x for x in latencies if x > 0]
    if lats and max(lats) / min(lats) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean latency per problem (s)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy_latency(
    aggregate: Sequence[dict[str, Any]],
    path: Path,
    title: str = "",
    marks: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Accuracy against mean latency per problem, one point per (method, n) with its 95% interval, one line per
    method through its n grid, the Pareto front dashed. ``marks``: extra labelled points drawn on top
    (``{"label", "latency_mean_s", "accuracy", "marker"?}``, e.g. a tuner's choice). Returns
    ``{"path", "points", "pareto"}``."""
    plt, fig, ax = new_plot()
    pts = [a for a in aggregate if a.get("accuracy") is not None and a["latency_mean_s"] is not None]
    methods = list(dict.fromkeys(a["method"] for a in pts))
    colors = method_colors(plt, methods)
    drawn = 0
    for m_i, m in enumerate(methods):
        mine = sorted((a for a in pts if a["method"] == m), key=lambda a: (a["n"] is None, a["n"] or 0))
        xs = [a["latency_mean_s"] for a in mine]
        ys = [a["accuracy"] for a in mine]
        lo = [max(0.0, a["accuracy"] - a["accuracy_ci"][0]) for a in mine]  # Wilson bounds may round past it
        hi = [max(0.0, a["accuracy_ci"][1] - a["accuracy"]) for a in mine]
        color = colors[m]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=color, alpha=0.3, capsize=2)
        ax.plot(xs, ys, "-", color=color, alpha=0.5, lw=1)
        marker = "osD^vPX*h<>p"[m_i % 12]  # shapes too, so methods that coincide stay visible
        ax.scatter(
            xs, ys, color=color, marker=marker, s=40, zorder=3, label=m, alpha=0.85, edgecolors="white"
        )
        drawn += len(xs)
        for a in mine:
            if a["n"] is not None:
                ax.annotate(
                    f"n={a['n']}", (a["latency_mean_s"], a["accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points",
                )  # fmt: skip
    for mark in marks:
        ax.scatter(
            [mark["latency_mean_s"]], [mark["accuracy"]], marker=mark.get("marker", "*"), s=160, zorder=4,
            facecolors="none", edgecolors="black", linewidths=1.5, label=mark["label"],
        )  # fmt: skip
    front = pareto_front([(a["latency_mean_s"], a["accuracy"]) for a in pts])
    if front:
        fx = [pts[i]["latency_mean_s"] for i in front]
        fy = [pts[i]["accuracy"] for i in front]
        ax.step(fx, fy, where="post", ls="--", color="black", lw=1, label="Pareto front", zorder=2)
    legend = {"fontsize": 8, "loc": "best"} if pts or marks else None
    lats = [a["latency_mean_s"] for a in pts]
    finish_plot(plt, fig, ax, path, lats, title or "accuracy vs latency", legend=legend)
    return {"path": path.name, "points": drawn, "pareto": [point_label(pts[i]) for i in front]}


# ------------------------------------------------------------------------------------------------------------------
# W&B


def wandb_metrics(rows: Sequence[dict[str, Any]], aggregate: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flat summary metrics: ``{method}/n{n}/{metric}`` over seeds and ``{method}/n{n}/seed{s}/{metric}``."""
    keys = ("accuracy", "latency_mean_s", "latency_p50_s", "latency_p90_s", "draft_step_fraction")
    out: dict[str, Any] = {}
    for a in aggregate:
        base = f"{a['method']}/n{a['n'] if a['n'] is not None else '-'}"
        for k in (*keys, "accuracy_seed_std", *LATENCY_RATIOS.values(), "problems"):
            out[f"{base}/{k}"] = a.get(k)
        if a.get("accuracy_ci"):
            out[f"{base}/accuracy_ci_lo"], out[f"{base}/accuracy_ci_hi"] = a["accuracy_ci"]
        for ratio in (REPEAT_RATIO, SPECULATIVE_RATIO):
            if a.get(ratio):
                for k in ("median", "min", "max", "repeats"):
                    out[f"{base}/{ratio}_{k}"] = a[ratio][k]
        if a.get("acceptance_length_mean") is not None:
            out[f"{base}/acceptance_length_mean"] = a["acceptance_length_mean"]
        for s in STAGES:
            out[f"{base}/latency_{s}_s"] = a["latency_stage_mean_s"][s]
        for k in TOKEN_KINDS:
            out[f"{base}/tokens_{k}"] = a["tokens_mean"][k]
    for r in rows:
        base = f"{r['method']}/n{r['n'] if r['n'] is not None else '-'}/seed{r['seed']}"
        for k in keys:
            out[f"{base}/{k}"] = r.get(k)
    return {k: v for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


PROBLEM_COLUMNS = (
    "method", "n", "seed", "id", "correct", "answer", "latency_s", "draft_step_fraction", "deferrals",
    *(f"tokens_{k}" for k in TOKEN_KINDS), "final_score",
)  # fmt: skip


def log_wandb(
    cfg: Any,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    aggregate: Sequence[dict[str, Any]],
    plot: Path | None,
    *,
    job_type: str = "compare",
    tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One W&B run: the config, a per-problem table, the summary table and metrics, the plot; ``tables`` adds named
    ``(columns, data)`` tables and ``summary`` more summary values (a tuner's trials and choice)."""
    import wandb

    from specs_rl.tracking import finish_run, init_run

    report, out = cfg.report, cfg.run.out
    run = init_run(
        report.project,
        to_dict(cfg),
        name=Path(out).name,
        directory=report.wandb_dir or out,
        job_type=job_type,
    )
    problem_rows = [
        [
            r.get("method"), r.get("n"), r.get("seed"), r["id"], r.get("correct"), str(r.get("answer")),
            r["latency_s"]["total"], r.get("draft_step_fraction"), r.get("deferrals"),
            *(r["tokens"].get(k, 0) for k in TOKEN_KINDS), r.get("final_score"),
        ]
        for r in records
    ]  # fmt: skip
    summary_cols = ["method", "n", "seeds", "problems", "accuracy", "accuracy_seed_std", "latency_mean_s"]
    summary_cols += ["latency_p50_s", "latency_p90_s", "draft_step_fraction", *LATENCY_RATIOS.values()]
    logged: dict[str, Any] = {
        "problems_table": wandb.Table(columns=list(PROBLEM_COLUMNS), data=problem_rows),
        "summary_table": wandb.Table(
            columns=summary_cols,
            data=[[json.dumps(a[c]) if c == "seeds" else a[c] for c in summary_cols] for a in aggregate],
        ),
    }
    for name, (columns, data) in (tables or {}).items():
        logged[name] = wandb.Table(columns=columns, data=data)
    if plot is not None and plot.exists():
        logged["accuracy_latency"] = wandb.Image(str(plot))
    run.log(logged)
    metrics = {**wandb_metrics(rows, aggregate), **(summary or {})}
    for k, v in metrics.items():
        run.summary[k] = v
    run_dir = (
        None if getattr(run, "disabled", False) or not getattr(run, "dir", None) else Path(run.dir).parent
    )
    finish_run(run)
    return {"project": report.project, "run_dir": str(run_dir) if run_dir else None, "metrics": len(metrics)}


# ------------------------------------------------------------------------------------------------------------------


def write_report(
    out: Path,
    cfg: Any,
    records: Sequence[dict[str, Any]],
    grader: dict[str, str],
    *,
    order: Sequence[tuple[str, Any, Any]] = (),
    extra: dict[str, Any] | None = None,
    job_type: str = "compare",
    title: str = "",
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` (then the plot, then W&B, updating it after each) and print the tables.

    ``cfg`` is a recipe's config: its ``report`` section (:class:`ReportConfig`) says what to write, ``run.out``
    where."""
    stream = stream if stream is not None else sys.stdout
    rows = summary_rows(records, order)
    agg = aggregate_rows(records, rows)
    summary: dict[str, Any] = {"rows": rows, "aggregate": agg, "grader": grader, **(extra or {})}
    write_json(out / "summary.json", summary)
    print(format_table(rows), file=stream)
    if any(len(a["seeds"]) > 1 for a in agg):
        print("\nover seeds (the repeats):", file=stream)
        print(format_table(agg, aggregate=True), file=stream)
    if cfg.report.plot:
        summary["plot"] = plot_accuracy_latency(agg, out / "accuracy_latency.png", title=title)
        write_json(out / "summary.json", summary)
        print(f"\nplot: {out / 'accuracy_latency.png'} ({summary['plot']['points']} points)", file=stream)
    if cfg.report.wandb:
        plot = out / "accuracy_latency.png" if cfg.report.plot else None
        summary["wandb"] = log_wandb(cfg, records, rows, agg, plot, job_type=job_type)
        write_json(out / "summary.json", summary)
        if summary["wandb"]["run_dir"]:
            print(f"W&B run: {summary['wandb']['run_dir']}", file=stream)
    print(f"summary: {out / 'summary.json'}", file=stream)
    return summary
