"""``backend: hf``: a math benchmark searched with real (or tiny random) models and graded by Math-Verify."""

from __future__ import annotations

from typing import Any

from specs_rl.datasets import load_problems
from specs_rl.grading import Grader
from specs_rl.hf.parts import build_parts
from specs_rl.types import SearchResult


def build_hf_task(cfg: Any) -> Any:
    """A :class:`specs_rl.runner.Task` for a :class:`specs_rl.runner.RunConfig` with ``backend: hf``.

    Problems come from ``cfg.data`` (read and validated first, so a bad data file fails before any model loads);
    the parts from ``cfg.hf``. A result is graded on the last ``\\boxed{}`` of its text against the gold answer
    with Math-Verify in a worker process; the grade dict holds ``correct``, ``pred``, ``gold``, ``timed_out`` and
    ``grader`` (name and version).
    """
    from specs_rl.runner import Task

    problems = load_problems(cfg.data)
    parts = build_parts(cfg.hf)
    grader = Grader()

    def grade(result: SearchResult) -> dict[str, Any]:
        gold = result.problem.answer
        if gold is None:
            return {
                "correct": None,
                "pred": parts.answer_of(result.trace) or None,
                "gold": None,
                "grader": grader.info,
            }
        return {**grader.grade(result.trace.text, gold).as_dict(), "grader": grader.info}

    return Task(f"hf:{cfg.data.dataset}", problems, parts, grade)
