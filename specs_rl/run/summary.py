"""Summaries of records: accuracy with its interval, latency statistics, and latency ratios over repeats.

A *row* summarizes one (method, n, seed); an *aggregate* row one (method, n) over its seeds. Seeds are the run's
repeats: with ``order: problem`` every seed of every method searches problem ``i`` before any searches ``i + 1``, so
each seed's latency ratio to the reference method is measured under the same load, and the aggregate reports the
median and range of those per-repeat ratios with their count (and the pooled ratio beside them).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from specs_rl.methods import speculative_base
from specs_rl.types import STAGES, TOKEN_KINDS, acceptance_length

REFERENCE = "beam_search_target"  # the method latencies are compared with (the paper's beam search, BS(B))
# latency statistic -> its pooled ratio to the reference at the same n, in the aggregate rows
LATENCY_RATIOS = {
    "latency_mean_s": "latency_vs_beam_search_target",
    "latency_p50_s": "latency_p50_vs_beam_search_target",
}
REPEAT_RATIO = (
    "latency_ratio_repeats"  # {"median", "min", "max", "repeats", "values"} of the mean-latency ratio
)
# a speculative variant's (target_sd, <base>_sd) per-repeat ratio of mean latencies to its base at the same n and
# seed, as REPEAT_RATIO (< 1: speculative target steps made it faster)
SPECULATIVE_RATIO = "latency_vs_base_repeats"


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (NaN for an empty list)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, range and count of repeated measurements (what a timing is reported as)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"median": None, "min": None, "max": None, "repeats": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "repeats": len(vals),
        "values": list(vals),
    }


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (with a 95% Wilson interval) where graded, latency mean / p50 / p90 and per stage, draft-step
    fraction, deferrals, tokens per kind, and the mean true reward on tabular tasks."""
    recs = list(records)
    graded = [r for r in recs if r.get("correct") is not None]
    totals = [r["latency_s"]["total"] for r in recs]
    out: dict[str, Any] = {"problems": len(recs)}
    if graded:
        k = sum(bool(r["correct"]) for r in graded)
        out["accuracy"] = k / len(graded)
        out["accuracy_ci"] = list(wilson_interval(k, len(graded)))
    else:
        out["accuracy"], out["accuracy_ci"] = None, None
    out["latency_mean_s"] = statistics.fmean(totals) if totals else float("nan")
    out["latency_p50_s"] = quantile(totals, 0.5)
    out["latency_p90_s"] = quantile(totals, 0.9)
    out["latency_stage_mean_s"] = {
        s: statistics.fmean(r["latency_s"].get(s, 0.0) for r in recs) if recs else 0.0 for s in STAGES
    }
    steps = sum(len(r["steps"]) for r in recs)
    draft_steps = sum(s["source"] == "draft" for r in recs for s in r["steps"])
    out["draft_step_fraction"] = draft_steps / steps if steps else 0.0
    out["deferrals_per_problem"] = sum(r.get("deferrals", 0) for r in recs) / max(len(recs), 1)
    out["tokens_mean"] = {
        m: statistics.fmean(r["tokens"].get(m, 0) for r in recs) if recs else 0.0 for m in TOKEN_KINDS
    }
    # speculative target steps: tokens emitted per target verification forward, over all of them (None: none)
    out["acceptance_length_mean"] = acceptance_length(
        {k: sum(r["tokens"].get(k, 0) for r in recs) for k in ("target_accepted", "target_rounds")}
    )
    rewards = [r["reward"] for r in recs if isinstance(r.get("reward"), (int, float))]
    if rewards:
        out["reward_mean"] = statistics.fmean(rewards)
    return out


def target_step_fraction(records: Iterable[dict[str, Any]]) -> float:
    """Steps written by the target over all steps (deferrals included): what a random-switch ablation matches."""
    steps = [s for r in records for s in r["steps"]]
    return sum(s["source"] == "target" for s in steps) / len(steps) if steps else 0.0


def run_key(r: dict[str, Any]) -> tuple[str, Any, Any]:
    return (str(r.get("method")), r.get("n"), r.get("seed"))


def summary_rows(records: Sequence[dict[str, Any]], order: Sequence[tuple[str, Any, Any]] = ()) -> list[dict]:
    """One row per (method, n, seed): :func:`summarize` of its records, in ``order`` first."""
    groups: dict[tuple[str, Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[run_key(r)].append(r)
    keys = [k for k in order if k in groups] + sorted(
        (k for k in groups if k not in set(order)), key=lambda k: (k[0], str(k[1]), str(k[2]))
    )
    return [{"method": k[0], "n": k[1], "seed": k[2], **summarize(groups[k])} for k in keys]


def aggregate_rows(
    records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], reference: str = REFERENCE
) -> list[dict[str, Any]]:
    """One row per (method, n) over its seeds: the pooled summary, the spread of accuracy over seeds
    (``accuracy_seed_std``, the paper's ±), the pooled latency ratios to ``reference`` at the same n
    (:data:`LATENCY_RATIOS`, < 1 is faster) and the per-repeat ratio of mean latencies (:data:`REPEAT_RATIO`: each
    seed's mean over the reference's mean for the same seed; median, range and count)."""
    pooled: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        pooled[(str(r.get("method")), r.get("n"))].append(r)
    seeds: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        seeds[(row["method"], row["n"])].append(row)
    out = []
    for key, mine in seeds.items():
        accs = [r["accuracy"] for r in mine if r["accuracy"] is not None]
        out.append(
            {
                "method": key[0],
                "n": key[1],
                "seeds": [r["seed"] for r in mine],
                **summarize(pooled[key]),
                "accuracy_seed_std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None),
            }
        )
    for stat, ratio in LATENCY_RATIOS.items():
        ref = {a["n"]: a[stat] for a in out if a["method"] == reference}
        for a in out:
            base = ref.get(a["n"])
            ok = base and a["n"] is not None and base > 0 and a[stat] is not None
            a[ratio] = a[stat] / base if ok else None
    for a in out:
        same = (reference, a["n"])
        a[REPEAT_RATIO] = repeat_ratio(rows, (a["method"], a["n"]), same) if a["n"] is not None else None
    for a in out:
        base_name = speculative_base(a["method"])
        a[SPECULATIVE_RATIO] = (
            repeat_ratio(rows, (a["method"], a["n"]), (base_name, a["n"])) if base_name else None
        )
    return out


def repeat_ratio(
    rows: Sequence[dict[str, Any]], run: tuple[str, int | None], reference: tuple[str, int | None]
) -> dict[str, Any] | None:
    """The per-repeat ratio of mean latencies of ``run`` (method, n) to ``reference`` (method, n), over the seeds
    both ran: each seed's mean over the reference's mean for the same seed (measured in the same interleaved run),
    as :func:`spread` (median, range, count); None when no seed has both."""
    by_seed = {(r["method"], r["n"], r["seed"]): r for r in rows}
    per_seed = []
    for (method, n, seed), row in by_seed.items():
        base = by_seed.get((*reference, seed))
        if (method, n) == run and base and (base["latency_mean_s"] or 0) > 0:
            per_seed.append(row["latency_mean_s"] / base["latency_mean_s"])
    return spread(per_seed) if per_seed else None
