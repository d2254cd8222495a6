"""The toy-math generator: well-formed solutions, exact labels (recomputed independently), wrong steps that are
really wrong, reproducible seeds, disjoint splits, and the ``dataset: toymath`` loader."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

import specs_rl.toymath as tm
from specs_rl.datasets import DataConfig, load_problems
from specs_rl.errors import SpecsError
from specs_rl.grading import extract_boxed
from specs_rl.toymath import (
    ERROR_KINDS,
    ToyMathConfig,
    ToyProblem,
    ToyState,
    check_step,
    corrupted_solution,
    generate,
    initial_state,
    is_correct_solution,
    label_steps,
    parse_problem,
    prm_rows,
    sft_rows,
    split_of,
    to_problem,
    wrong_step,
)

PROBE = "Compute ((((4*4)-3)+5)*4)."
PROBE_SOLUTION = "4*4=16\n\n16-3=13\n\n13+5=18\n\n18*4=72\n\nThe answer is \\boxed{72}."
STEP = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")


def _expr_value(text: str) -> int:
    """Independent of the module: Python evaluates the fully parenthesised expression."""
    expr = re.fullmatch(r"Compute (.*)\.", text).group(1)
    assert set(expr) <= set("0123456789+-*()")
    return eval(expr)  # noqa: S307 - digits, operators and parentheses only (checked above)


def _reference_labels(problem: ToyProblem, steps: list[str]) -> list[bool]:
    """Independent labels: a step is right when it and every earlier step equal the reference step."""
    ref = problem.steps()
    out, ok = [], True
    for i, s in enumerate(steps):
        ok = ok and i < len(ref) and s.strip() == ref[i]
        out.append(ok)
    return out


def test_probe_format_and_doctests():
    p = parse_problem(PROBE)
    assert p == ToyProblem(4, (("*", 4), ("-", 3), ("+", 5), ("*", 4)))
    assert p.text == PROBE and p.solution == PROBE_SOLUTION and p.answer == 72
    assert doctest.testmod(tm).failed == 0


def test_reference_solutions_are_well_formed_and_right():
    cfg = ToyMathConfig(problems=300, seed=3)
    for p in generate(cfg, "train"):
        steps = p.solution.split("\n\n")
        assert steps == p.steps() and len(steps) == len(p.ops) + 1
        assert cfg.min_ops <= len(p.ops) <= cfg.max_ops
        value = p.start
        for s, (op, b) in zip(steps[:-1], p.ops):
            a, o, bb, c = STEP.fullmatch(s).groups()
            assert (int(a), o, int(bb)) == (value, op, b)
            assert int(c) == eval(f"{a}{o}{bb}")  # noqa: S307
            value = int(c)
            assert 0 <= value <= cfg.max_value
        assert value == _expr_value(p.text) == p.answer
        assert extract_boxed(p.solution) == str(p.answer)
        assert label_steps(p, steps) == [True] * len(steps)
        assert is_correct_solution(p, p.solution)
        assert set(p.solution) <= set("0123456789+-*=\nThe answris\\boxd{}.")  # char-tokenizer friendly


def test_difficulty_knob():
    cfg = ToyMathConfig(problems=200, min_ops=6, max_ops=6, max_operand=20, max_value=500, ops="+*")
    ps = generate(cfg, "train")
    assert all(len(p.ops) == 6 for p in ps)
    assert all(op in "+*" and 1 <= b <= 20 for p in ps for op, b in p.ops)
    assert all(0 <= v <= 500 for p in ps for v in p.values)
    assert max(b for p in ps for _, b in p.ops) > 9  # big operands do occur


def test_seeds_reproduce_and_splits_are_disjoint():
    a = generate(ToyMathConfig(problems=50, seed=7), "test")
    assert a == generate(ToyMathConfig(problems=50, seed=7), "test")
    assert a[:20] == generate(ToyMathConfig(problems=20, seed=7), "test")  # problem i ignores the count
    assert a != generate(ToyMathConfig(problems=50, seed=8), "test")
    texts = {s: {p.text for p in generate(ToyMathConfig(problems=150, seed=7), s)} for s in tm.SPLITS}
    assert all(len(t) == 150 for t in texts.values())  # distinct within a split
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["tune"])
    assert not (texts["tune"] & texts["test"])
    assert all(split_of(parse_problem(t)) == s for s, ts in texts.items() for t in ts)


def test_wrong_steps_are_really_wrong():
    rng = np.random.default_rng(0)
    kinds_seen = set()
    for p in generate(ToyMathConfig(problems=150, seed=1), "train"):
        ref = p.steps()
        for i in range(len(ref)):
            state = ToyState(p, i)
            assert check_step(state, ref[i]) and check_step(state, ref[i] + "\n\n")
            for kind in ERROR_KINDS:
                w = wrong_step(state, rng, kinds=[kind])
                if w is None:
                    continue
                kinds_seen.add(kind)
                assert w.kind == kind and w.text != ref[i]
                assert not check_step(state, w.text)
                assert w.value != p.values[min(i + 1, len(p.ops))]  # it changes the value
                if i < len(p.ops):
                    a, o, b, c = STEP.fullmatch(w.text).groups()
                    arithmetic_ok = int(c) == eval(f"{a}{o}{b}")  # noqa: S307
                    copied_ok = (int(a), o, int(b)) == (p.values[i], *p.ops[i])
                    assert not (arithmetic_ok and copied_ok)  # independently wrong
                    if kind in ("carry", "off_by_one", "off_by_ten", "swapped_digits"):
                        assert copied_ok and not arithmetic_ok  # a slip in the result, not in the copy
                    if kind == "copied_wrong_number":
                        assert arithmetic_ok and not copied_ok
                else:
                    assert int(extract_boxed(w.text)) == w.value != p.answer
    assert kinds_seen == set(ERROR_KINDS)


def test_carry_errors_are_the_classic_slips():
    rng = np.random.default_rng(0)
    cases = {
        ("+", 18, 5): "18+5=13",  # carry dropped
        ("-", 23, 5): "23-5=22",  # smaller digit from larger
        ("*", 18, 4): "18*4=42",  # ones' carry dropped
    }
    for (op, a, b), want in cases.items():
        state = ToyState(ToyProblem(a, ((op, b),)), 0)
        assert wrong_step(state, rng, kinds=["carry"]).text == want
    assert wrong_step(ToyState(ToyProblem(12, (("+", 3),)), 0), rng, kinds=["carry"]) is None  # no carry


def test_labels_of_corrupted_solutions_and_prm_rows():
    rng = np.random.default_rng(2)
    problems = [to_problem(p, f"p{i}") for i, p in enumerate(generate(ToyMathConfig(problems=400), "train"))]
    rows = prm_rows(problems, rng, error_rate=0.5)
    assert len(rows) == 400 and all(
        set(r) == {"prompt", "completions", "labels", "error_chars"} for r in rows
    )
    with_error = 0
    for pb, r in zip(problems, rows):
        p = parse_problem(pb.prompt)
        assert r["prompt"] == pb.prompt
        assert all(isinstance(x, bool) for x in r["labels"]) and len(r["labels"]) == len(r["completions"])
        assert not any("\n\n" in s for s in r["completions"])
        assert r["labels"] == label_steps(pb, r["completions"]) == _reference_labels(p, r["completions"])
        if not all(r["labels"]):
            with_error += 1
            first = r["labels"].index(False)
            assert not any(r["labels"][first:])  # first-error convention
            assert r["completions"][-1].startswith("The answer is \\boxed{")  # still a whole solution
    assert 160 <= with_error <= 240  # error_rate 0.5 of 400
    cut = prm_rows(problems[:50], np.random.default_rng(2), error_rate=1.0, truncate_after_error=True)
    assert all(r["labels"][-1] is False and r["labels"].count(False) == 1 for r in cut)


def test_corrupted_solution_at_each_step():
    p = parse_problem(PROBE)
    rng = np.random.default_rng(5)
    for at in range(5):
        steps, labels, kind = corrupted_solution(p, rng, at=at)
        assert kind in ERROR_KINDS
        assert steps[:at] == p.steps()[:at] and labels == [True] * at + [False] * (len(steps) - at)
        assert not is_correct_solution(p, "\n\n".join(steps))
    with pytest.raises(SpecsError, match="at must be in 0..4"):
        corrupted_solution(p, rng, at=5)


def test_check_step_on_sampled_text():
    s = initial_state("Compute ((((4*4)-3)+5)*4).\n\n")
    assert check_step(s, " 4 * 4 = 16 \n\n")  # spaces and the delimiter are ignored
    assert not check_step(s, "4*4=16=16")
    assert not check_step(s, "16")
    assert not check_step(s, "The answer is \\boxed{72}.")  # too early
    done = s
    for _ in range(5):
        done = done.advance()
    assert done.answered and not check_step(done, "The answer is \\boxed{72}.")  # nothing after the answer
    assert label_steps(PROBE, [*PROBE_SOLUTION.split("\n\n"), "extra"]) == [True] * 5 + [False]
    assert label_steps(PROBE, ["4*4=16", "16-3=12", "12+5=17"]) == [True, False, False]
    with pytest.raises(SpecsError, match="not a toy-math problem"):
        parse_problem("What is 2+2?")


def test_sft_rows_and_loader():
    cfg = DataConfig(dataset="toymath", split="test", limit=6, prompt_template=tm.TOYMATH_PROMPT_TEMPLATE)
    problems = load_problems(cfg)
    assert [p.id for p in problems] == [f"toymath-test-{i}" for i in range(6)]
    gen = generate(ToyMathConfig(problems=6), "test")
    assert [p.meta["problem"] for p in problems] == [g.text for g in gen]
    assert [p.answer for p in problems] == [str(g.answer) for g in gen]
    assert problems[0].prompt == gen[0].text + "\n\n"
    rows = sft_rows(problems)
    assert [r["completion"] for r in rows] == [g.solution for g in gen]
    assert all(is_correct_solution(p, r["completion"]) for p, r in zip(problems, rows))
    shard = load_problems(DataConfig(dataset="toymath", limit=6, shard="1/2"))
    assert [p.id for p in shard] == ["toymath-test-1", "toymath-test-3", "toymath-test-5"]
    for bad, msg in (
        ({"split": "validation"}, "split must be one of"),
        ({"toymath": ToyMathConfig(min_ops=0)}, "min_ops"),
        ({"toymath": ToyMathConfig(ops="+/")}, "ops"),
    ):
        with pytest.raises(SpecsError, match=msg):
            load_problems(DataConfig(dataset="toymath", **bad))
    with pytest.raises(SpecsError, match="found only"):
        generate(ToyMathConfig(problems=50, min_ops=1, max_ops=1, max_operand=2, max_value=4), "test")
