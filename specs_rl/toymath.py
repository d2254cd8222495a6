"""Toy math: multi-step arithmetic problems written like real solutions, with exact step labels.

A problem applies ``k`` operations left to right to a start value; the solution writes one operation per step,
steps separated by ``"\\n\\n"``, and ends with a ``\\boxed{}`` answer (docs/algorithm.md §1, TOY-WORLD-NOTES.md)::

    Compute ((((4*4)-3)+5)*4).
    4*4=16\\n\\n16-3=13\\n\\n13+5=18\\n\\n18*4=72\\n\\nThe answer is \\boxed{72}.

Difficulty: the number of operations (``min_ops..max_ops``), the operand size (``1..max_operand``) and the range the
intermediate values stay in (``0..max_value``). Randomness is a ``numpy.random.Generator`` passed in (or the
``seed`` of a :class:`ToyMathConfig`). Splits (``train`` / ``tune`` / ``test``) are disjoint by construction: a
problem belongs to the split its text hashes to (CRC32, stable across runs), so no held-out problem is ever in
the training data.

What it gives:

- problems (``load_problems`` with ``dataset: toymath``; :func:`generate`), each with its gold answer;
- reference solutions for SFT (:func:`sft_rows`);
- PRM rows in TRL's stepwise format ``{"prompt", "completions": [steps], "labels": [bool]}`` (:func:`prm_rows`),
  wrong steps being plausible mistakes (:data:`ERROR_KINDS`: dropped carry, wrong operation, a number copied from
  the wrong place, off by one or ten, swapped digits);
- :func:`check_step` / :func:`label_steps`, which recompute a step's correctness, so ANY model's sampled steps
  are labelled exactly.

A step is correct when it is exactly the next step of a correct solution (same numbers, same operation, right
result); the labels follow the first error: once a step is wrong, every later step of that response is wrong
(it cannot lead to the right answer, Math-Shepherd's convention).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import strip_step
from specs_rl.types import Problem

SEPARATOR = "\n\n"
TOYMATH_PROMPT_TEMPLATE = "{problem}\n\n"  # the toy models' prompt: the problem alone, no instruction text
SPLITS = ("train", "tune", "test")
ERROR_KINDS = (
    "carry",
    "wrong_operation",
    "copied_wrong_number",
    "off_by_one",
    "off_by_ten",
    "swapped_digits",
)
_BUCKETS = 20  # crc32(text) % 20: 0-1 test (10%), 2-3 tune (10%), 4-19 train (80%)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operation {op!r}")


@dataclass
class ToyMathConfig:
    """Generator settings of ``dataset: toymath`` (defaults: the feasibility probe's task)."""

    problems: int = field(default=1000, metadata={"help": "problems in the split (the slice is taken after)"})
    seed: int = field(default=0, metadata={"help": "seed of the problem stream (all splits share it)"})
    min_ops: int = field(default=2, metadata={"help": "fewest operations (= steps before the answer)"})
    max_ops: int = field(default=4, metadata={"help": "most operations"})
    max_operand: int = field(
        default=9, metadata={"help": "operands are 1..max_operand (probe: single digits)"}
    )
    max_value: int = field(
        default=99, metadata={"help": "start and intermediate values stay in 0..max_value (probe: 99)"}
    )
    ops: str = field(default="+-*", metadata={"help": "operations to draw from, a subset of '+-*'"})

    def validate(self) -> None:
        if self.problems < 1:
            raise ValueError(f"toymath.problems must be >= 1, got {self.problems}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(
                f"toymath needs 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, max_ops={self.max_ops}"
            )
        if self.max_operand < 1:
            raise ValueError(f"toymath.max_operand must be >= 1, got {self.max_operand}")
        if self.max_value < self.max_operand:
            raise ValueError(
                f"toymath.max_value must be >= max_operand ({self.max_operand}), got {self.max_value}"
            )
        if not self.ops or set(self.ops) - set("+-*") or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"toymath.ops must be distinct characters of '+-*', got {self.ops!r}")


# ------------------------------------------------------------------------------------------------------------------
# Problems and their solutions


@dataclass(frozen=True)
class ToyProblem:
    """``start`` then each ``(op, operand)`` of ``ops`` applied left to right."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        """``[start, v_1, ..., v_k]``: the value after each operation."""
        vals = [self.start]
        for op, b in self.ops:
            vals.append(_apply(vals[-1], op, b))
        return vals

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def text(self) -> str:
        """``Compute ((4*4)-3).``"""
        body = "(" * len(self.ops) + str(self.start) + "".join(f"{op}{b})" for op, b in self.ops)
        return f"Compute {body}."

    def steps(self) -> list[str]:
        """The reference steps (without separators); the last one states the boxed answer."""
        vals = self.values
        out = [f"{vals[i]}{op}{b}={vals[i + 1]}" for i, (op, b) in enumerate(self.ops)]
        return [*out, answer_step(self.answer)]

    @property
    def solution(self) -> str:
        return SEPARATOR.join(self.steps())


def answer_step(value: int) -> str:
    return f"The answer is \\boxed{{{value}}}."


_PROBLEM_RE = re.compile(r"Compute (\(*)(\d+)((?:[+\-*]\d+\))*)\.")
_OP_RE = re.compile(r"([+\-*])(\d+)\)")


def parse_problem(text: str) -> ToyProblem:
    """The :class:`ToyProblem` written in ``text`` (a problem text, or a prompt that contains one)."""
    m = _PROBLEM_RE.search(text)
    if not m:
        raise SpecsError(f"not a toy-math problem: {text[:60]!r}")
    ops = tuple((op, int(b)) for op, b in _OP_RE.findall(m.group(3)))
    if not ops or len(m.group(1)) != len(ops):
        raise SpecsError(f"not a toy-math problem (unbalanced parentheses): {m.group(0)!r}")
    return ToyProblem(int(m.group(2)), ops)


def sample_problem(
    rng: np.random.Generator,
    *,
    min_ops: int = 2,
    max_ops: int = 4,
    max_operand: int = 9,
    max_value: int = 99,
    ops: str = "+-*",
) -> ToyProblem:
    """One problem: ``k ~ U{min_ops..max_ops}`` operations; each step draws an operation uniformly among those
    with a legal operand, then the operand uniformly among the legal ones (result in ``0..max_value``)."""
    for _ in range(1000):
        k = int(rng.integers(min_ops, max_ops + 1))
        value = int(rng.integers(1, max_operand + 1))
        start, chosen = value, []
        for _ in range(k):
            legal = {
                op: [b for b in range(1, max_operand + 1) if 0 <= _apply(value, op, b) <= max_value]
                for op in ops
            }
            usable = [op for op in ops if legal[op]]
            if not usable:
                break
            op = usable[int(rng.integers(len(usable)))]
            b = legal[op][int(rng.integers(len(legal[op])))]
            chosen.append((op, b))
            value = _apply(value, op, b)
        else:
            return ToyProblem(start, tuple(chosen))
    raise SpecsError(f"toymath: no legal problem with ops={ops!r}, max_value={max_value}")


def split_of(problem: ToyProblem) -> str:
    """The split a problem belongs to (from a stable hash of its text)."""
    bucket = zlib.crc32(problem.text.encode()) % _BUCKETS
    return "test" if bucket < 2 else "tune" if bucket < 4 else "train"


def generate(cfg: ToyMathConfig, split: str = "test") -> list[ToyProblem]:
    """The first ``cfg.problems`` distinct problems of ``split`` in the stream seeded by ``cfg.seed``.

    Problem ``i`` does not depend on ``cfg.problems`` (a longer list extends a shorter one)."""
    cfg.validate()
    if split not in SPLITS:
        raise SpecsError(f"toymath split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(cfg.seed)
    seen: set[ToyProblem] = set()
    out: list[ToyProblem] = []
    budget = 200 * cfg.problems + 20_000
    for _ in range(budget):
        p = sample_problem(
            rng,
            min_ops=cfg.min_ops,
            max_ops=cfg.max_ops,
            max_operand=cfg.max_operand,
            max_value=cfg.max_value,
            ops=cfg.ops,
        )
        if p in seen or split_of(p) != split:
            continue
        seen.add(p)
        out.append(p)
        if len(out) == cfg.problems:
            return out
    raise SpecsError(
        f"toymath: found only {len(out)} distinct {split} problems with these settings, asked for {cfg.problems}"
    )


def to_problem(p: ToyProblem, pid: str, template: str = TOYMATH_PROMPT_TEMPLATE) -> Problem:
    return Problem(
        id=pid,
        prompt=template.replace("{problem}", p.text),
        answer=str(p.answer),
        meta={"problem": p.text, "source": "toymath"},
    )


def _toy(problem: Problem | ToyProblem | str) -> ToyProblem:
    if isinstance(problem, ToyProblem):
        return problem
    if isinstance(problem, Problem):
        return parse_problem(problem.meta.get("problem") or problem.prompt)
    return parse_problem(problem)


# ------------------------------------------------------------------------------------------------------------------
# Exact step labels


@dataclass(frozen=True)
class ToyState:
    """A correct partial solution: ``index`` steps of ``problem`` done (``index == len(ops) + 1``: answered)."""

    problem: ToyProblem
    index: int = 0

    @property
    def value(self) -> int:
        """The current value (after ``index`` operations)."""
        return self.problem.values[min(self.index, len(self.problem.ops))]

    @property
    def answered(self) -> bool:
        return self.index > len(self.problem.ops)

    def advance(self) -> ToyState:
        """The state after the correct next step."""
        return ToyState(self.problem, self.index + 1)


def initial_state(problem: Problem | ToyProblem | str) -> ToyState:
    return ToyState(_toy(problem), 0)


_STEP_RE = re.compile(r"(-?\d+)([+\-*])(-?\d+)=(-?\d+)")
_ANSWER_RE = re.compile(r"The answer is \\boxed\{(-?\d+)\}\.?")


def _squash(step: str) -> str:
    return " ".join(step.split())


def check_step(prev_state: ToyState, step_text: str) -> bool:
    """Whether ``step_text`` is the correct next step after ``prev_state``.

    An operation step ``a op b = c`` is correct when ``a`` is the current value, ``op b`` the problem's next
    operation and ``c = a op b``; once every operation is done, the only correct step is the boxed answer with the
    final value. Surrounding whitespace (the ``"\\n\\n"`` delimiter) and spaces inside an operation are ignored.

    >>> s = initial_state("Compute ((4*4)-3).")
    >>> check_step(s, "4*4=16\\n\\n"), check_step(s, "4*4=61"), check_step(s, "4+4=8")
    (True, False, False)
    >>> check_step(s.advance().advance(), "The answer is \\\\boxed{13}.")
    True
    """
    if prev_state.answered:
        return False
    text = _squash(step_text)
    p = prev_state.problem
    if prev_state.index < len(p.ops):
        m = _STEP_RE.fullmatch(text.replace(" ", ""))
        if not m:
            return False
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        want_op, want_b = p.ops[prev_state.index]
        return a == prev_state.value and (op, b) == (want_op, want_b) and c == _apply(a, op, b)
    m = _ANSWER_RE.fullmatch(text)
    return bool(m) and int(m.group(1)) == prev_state.value


def label_steps(problem: Problem | ToyProblem | str, steps: Sequence[str]) -> list[bool]:
    """Exact labels of a response's steps: correct while every step so far is (the first error makes the rest
    wrong). A response with extra steps after the answer gets them labelled wrong."""
    state, ok, labels = initial_state(problem), True, []
    for step in steps:
        ok = ok and check_step(state, step)
        labels.append(ok)
        if ok:
            state = state.advance()
    return labels


def error_chars(problem: Problem | ToyProblem | str, steps: Sequence[str]) -> list[int | None]:
    """Per step, the offset of its first wrong character for the first wrong step (where its text leaves the
    reference step), None elsewhere: the ``error_chars`` of a stepwise row (``specs_rl.models.prm_format.token_labels``).

    >>> error_chars("Compute ((5-2)-3).", ["5-2=3", "3-3=1", "The answer is \\\\boxed{1}."])
    [None, 4, None]
    >>> error_chars("Compute ((5-2)-3).", ["5-2=", "3-3=0"])
    [4, None]
    """
    state, out = initial_state(problem), []
    reference = state.problem.steps()
    wrong = False
    for step in steps:
        if wrong:
            out.append(None)
        elif check_step(state, step):
            out.append(None)
            state = state.advance()
        else:
            wrong = True
            ref = reference[state.index] if state.index < len(reference) else ""
            out.append(len(os.path.commonprefix([strip_step(step, SEPARATOR), ref])))
    return out


def stepwise_row(problem: Problem | ToyProblem | str, prompt: str, steps: Sequence[str]) -> dict[str, Any]:
    """A PRM training row of a response: ``{prompt, completions, labels, error_chars}``, labelled exactly."""
    return {
        "prompt": prompt,
        "completions": list(steps),
        "labels": label_steps(problem, steps),
        "error_chars": error_chars(problem, steps),
    }


def split_steps(text: str) -> list[str]:
    """The steps of a response text (split on the delimiter; empty pieces dropped)."""
    return [s for s in text.split(SEPARATOR) if s.strip()]


def is_correct_solution(problem: Problem | ToyProblem | str, text: str) -> bool:
    """Every step right and the answer given."""
    steps = split_steps(text)
    p = _toy(problem)
    return len(steps) == len(p.ops) + 1 and all(label_steps(p, steps))


# ------------------------------------------------------------------------------------------------------------------
# Plausible wrong steps


@dataclass(frozen=True)
class WrongStep:
    text: str
    kind: str
    value: int  # the (wrong) value the step ends with; a solution continues from it


def _swap(v: int) -> int | None:
    s = str(abs(v))
    if len(s) < 2 or s[::-1] == s:
        return None
    return int(s[::-1]) * (1 if v >= 0 else -1)


def _carry_error(a: int, op: str, b: int) -> int | None:
    """The classic slip of each operation (operands assumed nonnegative)."""
    if a < 0 or b < 0:
        return None
    if op == "+" and (a % 10 + b % 10) >= 10:
        return a + b - 10  # the carry into the tens is dropped
    if op == "-" and a >= 10 and a % 10 < b % 10:
        return (a // 10 - b // 10) * 10 + (b % 10 - a % 10)  # smaller digit from larger, no borrow
    if op == "*":
        big, small = (a, b) if a >= b else (b, a)
        if big >= 10 and small < 10 and (big % 10) * small >= 10:
            return (big // 10) * small * 10 + (big % 10) * small % 10  # the ones' carry is dropped
    return None


def _wrong_candidates(state: ToyState) -> dict[str, list[tuple[str, int]]]:
    p, i = state.problem, state.index
    vals = p.values
    cands: dict[str, list[tuple[str, int]]] = {k: [] for k in ERROR_KINDS}
    if i < len(p.ops):
        a, (op, b) = vals[i], p.ops[i]
        c = vals[i + 1]

        def step(x: int, o: str, y: int, z: int) -> str:
            return f"{x}{o}{y}={z}"

        if (v := _carry_error(a, op, b)) is not None:
            cands["carry"].append((step(a, op, b, v), v))
        for o in "+-*":
            if o != op and (v := _apply(a, o, b)) >= 0:
                cands["wrong_operation"].append((step(a, o, b, v), v))  # wrote the wrong operation
                cands["wrong_operation"].append((step(a, op, b, v), v))  # right sign, wrong operation done
        others = {x for x in vals[:i] if x != a} | {x for _, x in p.ops} | {p.start}
        for x in sorted(others - {a}):
            if (v := _apply(x, op, b)) >= 0:
                cands["copied_wrong_number"].append((step(x, op, b, v), v))
        for y in sorted(({x for _, x in p.ops} | {p.start}) - {b}):
            if (v := _apply(a, op, y)) >= 0:
                cands["copied_wrong_number"].append((step(a, op, y, v), v))
        cands["off_by_one"] += [(step(a, op, b, c + d), c + d) for d in (-1, 1) if c + d >= 0]
        cands["off_by_ten"] += [(step(a, op, b, c + d), c + d) for d in (-10, 10) if c + d >= 0]
        if (v := _swap(c)) is not None:
            cands["swapped_digits"].append((step(a, op, b, v), v))
    elif i == len(p.ops):
        c = vals[-1]
        for x in sorted(set(vals[:-1]) - {c}):
            cands["copied_wrong_number"].append((answer_step(x), x))
        cands["off_by_one"] += [(answer_step(c + d), c + d) for d in (-1, 1) if c + d >= 0]
        cands["off_by_ten"] += [(answer_step(c + d), c + d) for d in (-10, 10) if c + d >= 0]
        if (v := _swap(c)) is not None:
            cands["swapped_digits"].append((answer_step(v), v))
    # a wrong step must be wrong and change the value (so it cannot be a harmless rewording)
    right = vals[min(i + 1, len(p.ops))]
    return {
        k: [(t, v) for t, v in vs if v != right and not check_step(state, t)] for k, vs in cands.items() if vs
    }


def wrong_step(
    state: ToyState, rng: np.random.Generator, kinds: Sequence[str] = ERROR_KINDS
) -> WrongStep | None:
    """A plausible wrong next step: a kind drawn uniformly among those that apply here, then one of its forms.
    None when no kind applies (or the state is already answered)."""
    unknown = set(kinds) - set(ERROR_KINDS)
    if unknown:
        raise SpecsError(f"unknown error kinds {sorted(unknown)}; known: {', '.join(ERROR_KINDS)}")
    if state.answered:
        return None
    cands = {k: v for k, v in _wrong_candidates(state).items() if k in kinds and v}
    if not cands:
        return None
    kind = sorted(cands)[int(rng.integers(len(cands)))]
    text, value = cands[kind][int(rng.integers(len(cands[kind])))]
    return WrongStep(text, kind, value)


def corrupted_solution(
    problem: Problem | ToyProblem | str,
    rng: np.random.Generator,
    *,
    at: int | None = None,
    kinds: Sequence[str] = ERROR_KINDS,
) -> tuple[list[str], list[bool], str]:
    """A solution with one plausible error at step ``at`` (uniform over every step, the answer included, when
    None), continued correctly from the wrong value: ``(steps, labels, kind)``; labels are False from ``at`` on."""
    p = _toy(problem)
    n_steps = len(p.ops) + 1
    order = [at] if at is not None else list(rng.permutation(n_steps))
    for k in order:
        if not 0 <= k < n_steps:
            raise SpecsError(f"at must be in 0..{n_steps - 1}, got {k}")
        state = ToyState(p, int(k))
        w = wrong_step(state, rng, kinds)
        if w is None:
            continue
        steps = p.steps()[: int(k)] + [w.text]
        value = w.value
        for op, b in p.ops[int(k) + 1 :] if k < len(p.ops) else ():
            nxt = _apply(value, op, b)
            steps.append(f"{value}{op}{b}={nxt}")
            value = nxt
        if k < len(p.ops):
            steps.append(answer_step(value))
        labels = [True] * int(k) + [False] * (len(steps) - int(k))
        return steps, labels, w.kind
    raise SpecsError(f"no error of kinds {list(kinds)} applies to {p.text!r}")


# ------------------------------------------------------------------------------------------------------------------
# Training rows


def sft_rows(problems: Sequence[Problem]) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` rows (TRL's prompt-completion format): the reference solution of each problem."""
    return [{"prompt": pb.prompt, "completion": _toy(pb).solution} for pb in problems]


def prm_rows(
    problems: Sequence[Problem],
    rng: np.random.Generator,
    *,
    error_rate: float = 0.5,
    kinds: Sequence[str] = ERROR_KINDS,
    truncate_after_error: bool = False,
) -> list[dict[str, Any]]:
    """One TRL stepwise row per problem, ``{"prompt", "completions": [steps], "labels": [bool], "error_chars"}``:
    with probability ``error_rate`` a solution with one plausible error (labels False from it on; with
    ``truncate_after_error`` the row stops at the wrong step), otherwise the reference solution (all True).
    ``error_chars`` (:func:`error_chars`) places the error inside its step for token labels. Steps carry no
    separator (``specs_rl.models.prm_format`` adds it)."""
    if not 0.0 <= error_rate <= 1.0:
        raise SpecsError(f"error_rate must be in [0, 1], got {error_rate}")
    rows = []
    for pb in problems:
        p = _toy(pb)
        if rng.random() < error_rate:
            steps, labels, _ = corrupted_solution(p, rng, kinds=kinds)
            if truncate_after_error:
                cut = labels.index(False) + 1
                steps, labels = steps[:cut], labels[:cut]
        else:
            steps = p.steps()
            labels = [True] * len(steps)
        rows.append(
            {
                "prompt": pb.prompt,
                "completions": steps,
                "labels": labels,
                "error_chars": error_chars(p, steps),
            }
        )
    return rows


__all__ = [
    "ERROR_KINDS",
    "SEPARATOR",
    "SPLITS",
    "TOYMATH_PROMPT_TEMPLATE",
    "ToyMathConfig",
    "ToyProblem",
    "ToyState",
    "WrongStep",
    "answer_step",
    "check_step",
    "corrupted_solution",
    "error_chars",
    "generate",
    "initial_state",
    "is_correct_solution",
    "label_steps",
    "parse_problem",
    "prm_rows",
    "sample_problem",
    "sft_rows",
    "split_of",
    "split_steps",
    "stepwise_row",
    "to_problem",
    "wrong_step",
]
