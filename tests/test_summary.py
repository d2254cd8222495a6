"""The headline numbers on hand-computed records: the Wilson interval, the per-repeat latency ratio (median and range
of each seed's mean latency over the reference's mean for the same seed) beside the pooled ratio, and the table cell
that prints them. No data files, no models."""

from __future__ import annotations

import math

import pytest

from specs_rl.run.report import format_table
from specs_rl.run.summary import (
    LATENCY_RATIOS,
    REFERENCE,
    REPEAT_RATIO,
    SPECULATIVE_RATIO,
    aggregate_rows,
    summary_rows,
    wilson_interval,
)
from specs_rl.types import STAGES, TOKEN_KINDS


def _rec(method: str, seed: int, i: int, total: float, correct: bool) -> dict:
    return {
        "id": f"p{i}",
        "method": method,
        "n": 4,
        "seed": seed,
        "correct": correct,
        "steps": [{"source": "target"}],
        "latency_s": {**dict.fromkeys(STAGES, 0.0), "total": total},
        "tokens": dict.fromkeys(TOKEN_KINDS, 0),
        "deferrals": 0,
    }


# seed -> (reference latencies, specs latencies): per-seed mean ratios 1/2, 3/4, 1/1
LATENCIES = {1: ([1.0, 3.0], [1.0, 1.0]), 2: ([4.0, 4.0], [3.0, 3.0]), 3: ([1.0, 1.0], [0.5, 1.5])}


def _records() -> list[dict]:
    recs = []
    for seed, (ref, spec) in LATENCIES.items():
        recs += [_rec(REFERENCE, seed, i, t, correct=True) for i, t in enumerate(ref)]
        recs += [_rec("specs", seed, i, t, correct=i == 0 or seed == 2) for i, t in enumerate(spec)]
    return recs


def test_wilson_interval_by_hand():
    # 8 of 10: p = 0.8, z^2 = 3.8415; centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.71674,
    # half = z sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22658 -> [0.4902, 0.9433]
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    lo, hi = wilson_interval(0, 10)  # clipped at 0; upper = z^2/10 / (1 + z^2/10) = 0.27753
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 0.27753, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_per_repeat_ratio_is_the_median_and_range_of_per_seed_ratios():
    recs = _records()
    rows = summary_rows(recs)
    agg = {a["method"]: a for a in aggregate_rows(recs, rows)}
    spec, ref = agg["specs"], agg[REFERENCE]
    # per seed: 1.0 / 2.0, 3.0 / 4.0, 1.0 / 1.0
    rep = spec[REPEAT_RATIO]
    assert rep["values"] == pytest.approx([0.5, 0.75, 1.0])
    assert (rep["median"], rep["min"], rep["max"], rep["repeats"]) == pytest.approx((0.75, 0.5, 1.0, 3))
    # pooled: mean 10/6 over mean 14/6 = 5/7 (not the median of the per-seed ratios)
    assert spec[LATENCY_RATIOS["latency_mean_s"]] == pytest.approx(5 / 7)
    # pooled p50: median(0.5, 1, 1, 1.5, 3, 3) = 1.25 over median(1, 1, 1, 3, 4, 4) = 2
    assert spec[LATENCY_RATIOS["latency_p50_s"]] == pytest.approx(0.625)
    assert ref[REPEAT_RATIO]["values"] == [1.0, 1.0, 1.0] and ref[LATENCY_RATIOS["latency_mean_s"]] == 1.0
    # accuracy pooled over seeds 4/6 with its Wilson interval; per seed 1/2, 2/2, 1/2 -> std 0.2887
    assert spec["accuracy"] == pytest.approx(4 / 6)
    assert spec["accuracy_ci"] == pytest.approx(list(wilson_interval(4, 6)))
    assert spec["accuracy_seed_std"] == pytest.approx(0.288675, abs=1e-6)
    assert spec["seeds"] == [1, 2, 3]
    # the table cell: pooled ratio, then the median [min, max] of the repeats and their count
    table = format_table([spec], aggregate=True)
    assert "0.71x (med 0.75 [0.50,1.00] k=3)" in table


def test_per_repeat_ratio_pairs_each_seed_with_the_same_seed_of_the_reference():
    recs = _records()
    # a seed the reference did not run has no ratio; the others keep theirs
    recs += [_rec("specs", 9, 0, 5.0, correct=False)]
    rows = summary_rows(recs)
    spec = next(a for a in aggregate_rows(recs, rows) if a["method"] == "specs")
    assert spec[REPEAT_RATIO]["values"] == pytest.approx([0.5, 0.75, 1.0])
    # one repeat: the cell shows the pooled ratio alone
    one = [r for r in _records() if r["seed"] == 2]
    spec = next(a for a in aggregate_rows(one, summary_rows(one)) if a["method"] == "specs")
    assert spec[REPEAT_RATIO]["repeats"] == 1 and spec[REPEAT_RATIO]["median"] == pytest.approx(0.75)
    assert "0.75x" in format_table([spec], aggregate=True) and "med" not in format_table(
        [spec], aggregate=True
    )


def test_repeat_ratio_across_n_and_the_demo_headline_and_reading():
    """A tuned SPECS at n = 8 against beam search at n = 4 (the short demo's pair): the per-seed ratios pair
    different n, and the demo prints them with both accuracies' intervals and a one-line reading."""
    from eval import demo
    from specs_rl.run.summary import repeat_ratio

    recs = _records()
    for r in recs:
        r["n"] = 8 if r["method"] == "specs" else 4
    rows = summary_rows(recs)
    agg = aggregate_rows(recs, rows)
    spec = next(a for a in agg if a["method"] == "specs")
    assert spec[REPEAT_RATIO] is None  # no beam search at n = 8: no same-n ratio
    rep = repeat_ratio(rows, ("specs", 8), (REFERENCE, 4))
    assert rep["values"] == pytest.approx([0.5, 0.75, 1.0])
    assert repeat_ratio(rows, ("specs", 8), (REFERENCE, 8)) is None
    [(s, b)] = demo.pairs(agg)
    assert (s["n"], b["n"]) == (8, 4)
    head, read = demo.headlines(rows, agg)
    assert head.startswith(
        "SPECS n=8 / beam search (target) n=4: latency x0.75 (median of 3 repeats, range x0.50-x1.00"
    )
    assert "accuracy -33.3 points (0.667 [" in head and "vs 1.000 [" in head
    # the slowest repeat ties beam search: not "faster in every repeat"; 4/6 vs 6/6 on 6 runs: intervals overlap
    assert read == (
        "  reading: SPECS and beam search are not separated in time (ratios x0.50-x1.00); "
        "the accuracy gap (-33.3 points) is within the 95% intervals: not resolved at this size."
    )
    faster = dict(rep, min=0.5, max=0.9)
    apart = dict(spec, accuracy=0.2, accuracy_ci=[0.1, 0.3])
    base = dict(next(a for a in agg if a["method"] == REFERENCE), accuracy=0.8, accuracy_ci=[0.7, 0.9])
    assert demo.reading(apart, base, faster) == (
        "SPECS took less time than beam search in each of the 3 repeats; "
        "its accuracy is lower by 60.0 points, outside both intervals."
    )


def test_a_speculative_variant_is_paired_with_its_base_seed_by_seed():
    """specs_sd's per-repeat ratio is to specs at the same n and seed; target_sd's to target_only (n-free); a
    method without a base has none, and the table's column shows the ratio and the acceptance length."""
    recs = []
    for seed, (ref, spec) in LATENCIES.items():  # specs_sd takes the reference's latencies: specs is the base
        recs += [_rec("specs", seed, i, t, correct=True) for i, t in enumerate(ref)]
        recs += [_rec("specs_sd", seed, i, t, correct=True) for i, t in enumerate(spec)]
        recs += [{**_rec("target_only", seed, 0, 2.0, True), "n": None}]
        recs += [{**_rec("target_sd", seed, 0, 1.0 + seed / 10, True), "n": None}]
    for r in recs:
        if r["method"].endswith("_sd"):
            r["tokens"] = {**r["tokens"], "target_accepted": 6, "target_rounds": 4}
    agg = {a["method"]: a for a in aggregate_rows(recs, summary_rows(recs))}
    assert agg["specs_sd"][SPECULATIVE_RATIO]["values"] == pytest.approx([0.5, 0.75, 1.0])
    assert agg["target_sd"][SPECULATIVE_RATIO]["values"] == pytest.approx([0.55, 0.6, 0.65])
    assert agg["specs"][SPECULATIVE_RATIO] is None and agg["target_only"][SPECULATIVE_RATIO] is None
    assert agg["specs_sd"]["acceptance_length_mean"] == pytest.approx(2.5)  # 1 + 6 / 4
    table = format_table([agg["specs_sd"], agg["specs"]], aggregate=True)
    assert "vs no spec. decoding" in table and "0.75x [0.50,1.00] k=3, acc len 2.50" in table
    assert "vs no spec. decoding" not in format_table([agg["specs"]], aggregate=True)
