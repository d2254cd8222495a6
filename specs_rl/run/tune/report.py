"""Showing a study: the front as a table and the accuracy-latency plot of its trials (drawn with the report
module's plotting code, :mod:`specs_rl.run.report`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specs_rl.run.report import finish_plot, method_colors, new_plot
from specs_rl.run.tune.choose import front


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_front(rows: Sequence[dict[str, Any]]) -> str:
    """One line per front point: method, trial, accuracy, latency, parameters (``*``: the chosen one)."""
    head = ["", "method", "trial", "problems", "accuracy", "lat mean s", "params"]
    lines = [
        [
            "*" if r.get("chosen") else "",
            r["method"],
            str(r["number"]),
            str(r["problems"]),
            f"{r['accuracy']:.3f}",
            f"{r['latency_s']:.4g}",
            params_text(r["params"]),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 6) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


def plot_front(
    trials: Sequence[dict[str, Any]],
    path: Path,
    *,
    chosen: Sequence[dict[str, Any]] = (),
    marks: Sequence[dict[str, Any]] = (),
    title: str = "",
) -> dict[str, Any]:
    """Accuracy against mean latency: every completed trial (small), each method's front (a step line), the chosen
    points (stars), and ``marks`` (``{"label", "latency_s", "accuracy", "marker", "method"?}``: the reference, the
    baselines, the test re-run; ``method`` colours it), the legend beside the axes. Unlike
    :func:`specs_rl.run.report.plot_accuracy_latency` (one line per method through its n grid), a tuning study is a
    cloud of trials per method with a front of its own."""
    plt, fig, ax = new_plot((10, 5))
    methods = list(dict.fromkeys([*(t["method"] for t in trials), *(c["method"] for c in chosen)]))
    colors = method_colors(plt, methods)
    for m in methods:
        mine = [t for t in trials if t["method"] == m]
        ax.scatter(
            [t["latency_s"] for t in mine], [t["accuracy"] for t in mine], s=18, color=colors[m], alpha=0.45,
            label=f"{m}: {len(mine)} trials, front",
        )  # fmt: skip
        f = front(mine)
        ax.step(
            [t["latency_s"] for t in f], [t["accuracy"] for t in f], where="post", color=colors[m], lw=1.5
        )
        ax.scatter([t["latency_s"] for t in f], [t["accuracy"] for t in f], s=30, color=colors[m], zorder=3)
    for c in chosen:
        ax.scatter(
            [c["latency_s"]], [c["accuracy"]], marker="*", s=260, color=colors.get(c["method"], "black"),
            edgecolors="black", linewidths=1.0, zorder=5, label=f"{c['method']} chosen (trial {c['number']})",
        )  # fmt: skip
    for mark in marks:
        ax.scatter(
            [mark["latency_s"]], [mark["accuracy"]], marker=mark.get("marker", "D"), s=90, facecolors="none",
            edgecolors=colors.get(mark.get("method", ""), "dimgray"), linewidths=1.5, zorder=4, label=mark["label"],
        )  # fmt: skip
    lats = [t["latency_s"] for t in trials] + [m["latency_s"] for m in marks]
    legend = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0}
    finish_plot(
        plt,
        fig,
        ax,
        path,
        lats,
        title or "tuning: accuracy vs latency",
        legend=legend if trials or marks else None,
    )
    return {"path": path.name, "trials": len(trials), "marks": len(marks)}
