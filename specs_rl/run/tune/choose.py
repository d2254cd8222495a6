"""The choice rules: on each method's completed trials (the whole tune set), ``max_accuracy_under_latency`` (the
highest accuracy with mean latency <= ``latency_s``) or ``min_latency_within`` (the lowest mean latency with accuracy
>= the reference's - ``points``), and the Pareto front they are read from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.run.report import pareto_front
from specs_rl.run.tune.config import ChoiceRule


def front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other beats in both accuracy and mean latency, by increasing latency."""
    return [points[i] for i in pareto_front([(p["latency_s"], p["accuracy"]) for p in points])]


def rule_text(rule: ChoiceRule, reference: str | None = None, reference_accuracy: float | None = None) -> str:
    """The rule in words (with the reference's measured accuracy once known)."""
    if rule.rule == "max_accuracy_under_latency":
        return f"highest accuracy with mean latency <= {rule.latency_s:g} s"
    ref = reference or "the reference"
    if reference_accuracy is not None:
        ref += f" ({reference_accuracy:.3f})"
    return f"lowest mean latency with accuracy >= {ref} - {rule.points:g} points"


def choose(
    points: Sequence[dict[str, Any]], rule: ChoiceRule, reference_accuracy: float | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(chosen, closest)`` among ``points`` (``{"accuracy", "latency_s", "number", ...}``): the point the rule
    picks (None if none qualifies) and, when none does, the one nearest to qualifying (the fastest for a latency
    budget; the most accurate for an accuracy floor). Ties go to the other objective, then the lower number.

    >>> pts = [{"number": 0, "accuracy": 0.9, "latency_s": 1.0}, {"number": 1, "accuracy": 0.8, "latency_s": 0.5}]
    >>> choose(pts, ChoiceRule("max_accuracy_under_latency", latency_s=0.7))[0]["number"]
    1
    >>> choose(pts, ChoiceRule("min_latency_within", points=5), reference_accuracy=0.9)[0]["number"]
    0
    """
    if not points:
        return None, None
    eps = 1e-9
    if rule.rule == "max_accuracy_under_latency":
        assert rule.latency_s is not None
        ok = [p for p in points if p["latency_s"] <= rule.latency_s + eps]
        best = max(ok, key=lambda p: (p["accuracy"], -p["latency_s"], -p["number"])) if ok else None
        nearest = min(points, key=lambda p: (p["latency_s"], -p["accuracy"], p["number"]))
    else:
        if reference_accuracy is None or rule.points is None:
            raise SpecsError(f"rule {rule.rule} needs the reference's accuracy")
        floor = reference_accuracy - rule.points / 100
        ok = [p for p in points if p["accuracy"] >= floor - eps]
        best = min(ok, key=lambda p: (p["latency_s"], -p["accuracy"], p["number"])) if ok else None
        nearest = max(points, key=lambda p: (p["accuracy"], -p["latency_s"], -p["number"]))
    return best, (None if best is not None else nearest)
