"""Grading on real data: MATH-500's own solutions grade 500/500, GSM8K's '#### n' golds, boxed extraction, and a
pathological comparison that times out instead of hanging."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from specs_rl.datasets import DataConfig, load_problems
from specs_rl.grading import Grader, extract_boxed, grader_info

from .conftest import DATA


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=20.0) as g:
        yield g


def test_extract_boxed():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}.") == r"\left( 3, \frac{\pi}{2} \right)"
    assert extract_boxed(r"\boxed{x^{2^{y}} + \{1\}}") == r"x^{2^{y}} + \{1\}"
    assert extract_boxed(r"so $\boxed 5$") == "5"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{unclosed {brace}") is None
    assert extract_boxed("The answer is 5.") is None
    assert extract_boxed("") is None


def test_math500_reference_solutions_grade_500_of_500(grader):
    rows = [json.loads(line) for line in (DATA / "math500_test.jsonl").read_text().splitlines()]
    assert len(rows) == 500
    wrong = [r["unique_id"] for r in rows if not grader.grade(r["solution"], r["answer"]).correct]
    assert wrong == []
    # and a shifted answer is caught: each solution against the next problem's answer (distinct answers only)
    pairs = [(a, b) for a, b in zip(rows, rows[1:]) if a["answer"] != b["answer"]][:40]
    fooled = [a["unique_id"] for a, b in pairs if grader.grade(a["solution"], b["answer"]).correct]
    assert len(fooled) <= 1, fooled  # a rare true equivalence (e.g. 0.5 vs 1/2) may remain


def test_gsm8k_gold_answers_grade(grader):
    problems = load_problems(DataConfig(dataset="gsm8k"))
    sample = problems[::10]  # 132 of 1319
    for p in sample:
        assert grader.grade(f"So the total is \\boxed{{{p.answer}}}.", p.answer).correct, p.id
    big = [p for p in problems if float(p.answer) >= 1000][:20]
    assert len(big) == 20
    for p in big:  # thousands separators as models write them
        assert grader.grade(f"\\boxed{{{int(float(p.answer)):,}}}", p.answer).correct, p.answer
    for p in sample[:30]:
        assert not grader.grade(f"\\boxed{{{float(p.answer) + 1:g}}}", p.answer).correct, p.id


def test_grade_details_and_info(grader):
    g = grader.grade(r"We get \boxed{\dfrac12}", "0.5")
    assert (g.correct, g.pred, g.gold, g.timed_out) == (True, r"\dfrac12", "0.5", False)
    no_box = grader.grade("I think it is 0.5", "0.5")
    assert (no_box.correct, no_box.pred) == (False, None)
    assert grader_info() == {"name": "math-verify", "version": "0.9.0"}
    assert grader.info == grader_info()


def test_grading_from_threads(grader):
    # math-verify's own timeouts use signal.alarm (main thread only); the worker process makes threads safe
    cases = [
        ("18", r"\boxed{18.0}", True),
        (r"\frac{1}{3}", r"\boxed{0.25}", False),
        ("1800", r"\boxed{1,800}", True),
    ]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda c: grader.grade(c[1], c[0]).correct, cases))
    assert got == [c[2] for c in cases]


def test_a_pathological_comparison_times_out_and_the_grader_recovers():
    with Grader(timeout_s=1.5) as g:
        assert g.equal("7", "7") == (True, False)  # the worker start-up is not charged to the timeout
        t0 = time.monotonic()
        assert g.equal("2^{2^{2^{2^{2^{2^{2}}}}}}", "3") == (False, True)  # sympy would run for minutes
        assert time.monotonic() - t0 < 5.0
        assert g.grade(r"\boxed{4}", "4").correct  # a fresh worker serves the next call


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_closes_the_grading_pools_it_started(fails):
    """Every command (``entry_point``) shuts the grader pools down before it returns, on success and on a
    SpecsError: a pool left to the interpreter's exit hooks printed a traceback after a failed run's error line."""
    from specs_rl.cli import entry_point
    from specs_rl.errors import SpecsError

    grader = Grader(timeout_s=60)
    if grader.info["version"] == "missing":
        pytest.skip("math-verify not installed: no pool")

    threads = []

    @entry_point
    def command(argv):
        assert grader.equal("2", "2") == (True, False)  # the pool starts
        assert grader._pool is not None
        threads.append(grader._pool._executor_manager_thread)
        if fails:
            raise SpecsError("the server went away")
        return 0

    assert command([]) == (2 if fails else 0)
    assert grader._pool is None
    # its manager thread is done (killed workers included): the exit hook has no half-closed pool to wake
    assert threads[0] is not None and not threads[0].is_alive()
    assert grader.equal("3", "3") == (True, False)  # a closed grader starts a fresh pool when used again
    grader.close()
