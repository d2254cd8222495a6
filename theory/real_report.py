"""``theory real``, reporting: ``real.png`` (one panel per problem, the pooled mean first) and the printed tables
(per problem, pooled, and the scan). Reads only the result dicts of :mod:`theory.real_stats`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _panel(ax: Any, res: Mapping[str, Any], ns: np.ndarray, title: str) -> None:
    """One panel: each variant's bias-corrected TV to π* with its 95% interval, the exact TV where known,
    TV(π_target, π*) as a reference line (its interval a band) and the sampling floor as a band down to 0."""
    keys = [str(int(n)) for n in ns]
    ref = res["tv_target_opt"]
    values = [ref["tv_corrected"], res["tv_floor"], *res.get("exact", {}).get("specs", {}).get("specs", [])]
    for rows in res["specs"].values():
        values += [v for k in keys for v in (rows[k]["tv"], rows[k]["tv_ci"][1])]
    positive = [v for v in values if v > 0]
    bottom = 0.3 * min(positive) if positive else 1e-4
    ax.axhspan(
        bottom, max(res["tv_floor"], bottom), color="gray", alpha=0.15, label="below the sampling floor"
    )
    ax.axhline(max(ref["tv_corrected"], bottom), color="k", ls="--", lw=1, label="TV(π_target, π*)")
    ax.axhspan(max(ref["tv_ci"][0], bottom), max(ref["tv_ci"][1], bottom), color="k", alpha=0.07)
    for j, (name, rows) in enumerate(res["specs"].items()):
        tv = np.array([rows[k]["tv_corrected"] for k in keys])
        lo, hi = (np.array([rows[k]["tv_ci"][i] for k in keys]) for i in (0, 1))
        shown = np.maximum(tv, bottom)  # a bias-corrected 0 is drawn at the bottom edge
        ax.errorbar(ns * 1.04**j, shown, yerr=[shown - np.maximum(lo, bottom), np.maximum(hi - shown, 0)],
                    marker="o", ms=3, capsize=3, color=f"C{j}", label=f"{name} (95% CI)")  # fmt: skip
        if "exact" in res:
            label = "exact TV (dashed)" if j == len(res["specs"]) - 1 else None
            ax.plot(ns, np.maximum(res["exact"]["specs"][name], bottom), "--", lw=1, color=f"C{j}", alpha=0.6,
                    label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.set_xlabel("n (drafts per step)")
    ax.set_ylabel("TV to π* over final answers (0 at the bottom edge)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_real(result: Mapping[str, Any], path: Path) -> None:
    """``real.png``: one panel per problem, and the pooled mean first when there are several (dashed, per
    variant: the exact TV on the tabular backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array(result["n"], dtype=np.float64)
    panels = [(p, f"problem {p['index']} (id {p['id']})") for p in result["problems"]]
    if len(panels) > 1:
        panels.insert(0, (result["pooled"], f"mean over {len(result['problems'])} problems"))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (res, title) in zip(axes.flat, panels):
        _panel(ax, res, ns, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"SPECS vs rejection-sampled π*, β = {result['beta']}, {result['samples']} samples", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(rec: Mapping[str, Any]) -> str:
    return f"{rec['tv_corrected']:.3f} [{rec['tv_ci'][0]:.3f},{rec['tv_ci'][1]:.3f}]"


def print_table(res: Mapping[str, Any], ns: Sequence[int], title: str) -> None:
    """Bias-corrected TV to π* [95% interval] per n (rows) and variant (columns); ``(ex ...)`` the exact TV."""
    ref = res["tv_target_opt"]
    line = f"{title}: TV(π_target, π*) {_cell(ref)}"
    if "exact" in res:
        line += f" (exact {res['exact']['tv_target_opt']:.3f})"
    print(f"{line}, sampling floor {res['tv_floor']:.3f}")
    names = list(res["specs"])
    width = 31 if "exact" in res else 19
    print(f"{'n':>5} " + " ".join(f"{name:>{width}}" for name in names))
    for i, n in enumerate(ns):
        cells = []
        for name in names:
            cell = _cell(res["specs"][name][str(n)])
            if "exact" in res:
                cell += f" (ex {res['exact']['specs'][name][i]:.3f})"
            cells.append(f"{cell:>{width}}")
        print(f"{n:>5} " + " ".join(cells))


def print_scan(rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per scanned problem, then the positions whose TV(π_target, π*) interval lies above 0.2."""
    print(f"{'problem':>7} {'answers':>7} {'target top':>16} {'π* top':>16} {'TV(π_t, π*) [95%]':>21}  id")
    for r in rows:
        tops = [f"{m['answer'][:10]} {m['share']:.2f}" for m in (r["target_majority"], r["optimum_majority"])]
        cells = f"{r['index']:>7} {r['target_answers']:>7} {tops[0]:>16} {tops[1]:>16}"
        print(f"{cells} {_cell(r['tv_target_opt']):>21}  {r['id']}")
    chosen = ",".join(str(r["index"]) for r in rows if r["tv_target_opt"]["tv_ci"][0] >= 0.2) or "none"
    print(f"problems whose TV(π_target, π*) interval lies above 0.2: {chosen}")
