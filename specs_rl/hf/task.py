"""``backend: hf``: a math benchmark searched with transformers models (real, GGUF or tiny random ones), graded on
the boxed answer by Math-Verify."""

from __future__ import annotations

from typing import Any

from specs_rl.datasets import load_problems
from specs_rl.grading import boxed_answer_grade
from specs_rl.hf.parts import build_parts
from specs_rl.interfaces import Task


def build_task(cfg: Any) -> Task:
    """The Task of a run config with ``backend: hf``: problems from ``cfg.data`` (read and validated first, so a bad
    data file fails before any model loads), parts from ``cfg.hf``, grading by the last ``\\boxed{}`` of the
    response against the gold answer (Math-Verify in a worker process)."""
    problems = load_problems(cfg.data)
    parts = build_parts(cfg.hf)
    grade, grader = boxed_answer_grade(parts.answer_of)
    return Task(f"hf:{cfg.data.dataset}", problems, parts, grade, grader)
