"""The tabular backend: the draft, target, scorer and PRM protocols over exact trees (:mod:`specs_rl.tree`), with a
simulated clock and a per-call cost model, so the search code runs unchanged on worlds whose laws are known exactly.

``backend: tabular`` registers here (:func:`build_task`, :class:`TabularTaskConfig`): problems are random trees
(or samples of one tree file), and a response is correct when its true reward is at least 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

import specs_rl
from specs_rl.interfaces import Generators, SearchParts, SimClock, Task, generator_list
from specs_rl.tree import TabularTree, TreeConfig, TreeError, load_tree, random_tree
from specs_rl.types import Candidate, Problem, SearchResult, Trace

__all__ = [
    "CostModel",
    "TabularBackend",
    "TabularTaskConfig",
    "TabularTree",
    "TreeConfig",
    "TreeError",
    "build_task",
    "load_tree",
    "random_tree",
]

# ------------------------------------------------------------------------------------------------------------------
# The backend


@dataclass
class CostModel:
    """Simulated seconds per backend call, so the tabular comparison shows the latency trade-off.

    A call costs ``call_s + token_s · tokens · (1 + batch_slowdown · (batch - 1))``, ``tokens`` the longest step in the
    call and ``batch`` the number of sequences. Defaults (chosen here) make a target token 8x a draft token and a
    scoring pass (parallel over tokens) cheaper per token than generation.
    """

    draft_call_s: float = 0.002
    draft_token_s: float = 0.002
    target_call_s: float = 0.004
    target_token_s: float = 0.016
    score_call_s: float = 0.004
    score_token_s: float = 0.004
    reward_call_s: float = 0.004
    reward_token_s: float = 0.004
    batch_slowdown: float = 0.02

    def validate(self) -> None:
        """Every per-call and per-token cost must be a positive number of seconds (a zero or negative cost would
        make a stage free or give time back); ``batch_slowdown`` must be >= 0."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "batch_slowdown":
                if not (value >= 0 and math.isfinite(value)):
                    raise ValueError(f"tabular.cost.batch_slowdown must be a finite number >= 0, got {value}")
            elif not (value > 0 and math.isfinite(value)):
                raise ValueError(f"tabular.cost.{f.name} must be a finite number > 0 (seconds), got {value}")

    def cost(self, kind: str, tokens: int, batch: int) -> float:
        call = getattr(self, f"{kind}_call_s")
        tok = getattr(self, f"{kind}_token_s")
        return call + tok * tokens * (1.0 + self.batch_slowdown * max(batch - 1, 0))


def _row_probs(tree: TabularTree, which: str, symbols: tuple[int, ...]) -> np.ndarray:
    levels = tree.target if which == "target" else tree.draft
    return levels[len(symbols)][tree.index(symbols)]


@dataclass
class TabularBackend:
    """Draft, target, scorer and PRM over one or more tabular trees, with a simulated clock.

    ``trees`` maps a tree name to a tree; a problem uses ``problem.meta["tree"]`` (default: its id, then the only
    tree). ``prm`` is ``idealized`` (the exact soft value V at ``beta``), ``table`` or ``outcome``. ``judge_levels``
    is the target judge's table (SpecReason): per tree, the expected 0-9 score of every non-empty prefix, index
    ``h-1`` for length ``h``; by default :meth:`TabularTree.judge_levels` (9 x the expected reward under the target).
    """

    trees: Mapping[str, TabularTree]
    beta: float = 1.0
    prm: str = "idealized"
    cost: CostModel = field(default_factory=CostModel)
    clock: SimClock = field(default_factory=SimClock)
    judge_levels: Mapping[str, list[np.ndarray]] | None = None

    def __post_init__(self) -> None:
        if not self.trees:
            raise TreeError("a tabular backend needs at least one tree")
        self._prm = {name: t.prm_levels(self.prm, self.beta) for name, t in self.trees.items()}
        given = dict(self.judge_levels or {})
        self._judge = {name: given.get(name) or t.judge_levels() for name, t in self.trees.items()}

    def tree_name(self, trace: Trace) -> str:
        name = trace.problem.meta.get("tree", trace.problem.id)
        if name in self.trees:
            return name
        if len(self.trees) == 1:
            return next(iter(self.trees))
        raise KeyError(f"no tabular tree for problem {trace.problem.id!r}")

    def tree(self, trace: Trace) -> TabularTree:
        return self.trees[self.tree_name(trace)]

    def parts(self) -> SearchParts:
        def answer_of(trace: Trace) -> str:
            return ".".join(s.text for s in trace.steps)

        return SearchParts(
            drafter=_Sampler(self, "draft"),
            target=_Sampler(self, "target"),
            scorer=_Scorer(self),
            prm=_Prm(self),
            clock=self.clock,
            answer_of=answer_of,
            judge=_Judge(self),
        )

    def true_reward(self, problem_tree: str, answer: str) -> float:
        tree = self.trees[problem_tree]
        symbols = tuple(tree.alphabet.index(a) for a in answer.split("."))
        if len(symbols) != tree.horizon:
            raise ValueError(f"{answer!r} is not a complete response of horizon {tree.horizon}")
        return float(tree.reward[tree.index(symbols)])


@dataclass
class _Sampler:
    backend: TabularBackend
    which: str  # "draft" | "target"

    def propose(
        self, prefixes: Sequence[Trace], n: int, generators: Generators, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        longest = 0
        # each prefix draws from its own generator (its problem's), so its draws are its problem's alone
        for trace, generator in zip(prefixes, generator_list(generators, len(prefixes))):
            tree = self.backend.tree(trace)
            start = trace.token_ids
            if len(start) >= tree.horizon:
                raise ValueError(f"cannot extend a complete response {tree.key(start)!r}")
            length = tree.horizon - len(start) if to_end else 1
            longest = max(longest, length)
            seqs: list[list[int]] = [list() for _ in range(n)]
            lps: list[list[float]] = [list() for _ in range(n)]
            if length == 1:  # one draw of n symbols from the same row
                p = _row_probs(tree, self.which, start)
                for j, a in enumerate(
                    torch.multinomial(torch.from_numpy(p), n, replacement=True, generator=generator).tolist()
                ):
                    seqs[j].append(a)
                    lps[j].append(math.log(p[a]))
            else:
                for j in range(n):
                    sym = start
                    for _ in range(length):
                        p = _row_probs(tree, self.which, sym)
                        a = int(torch.multinomial(torch.from_numpy(p), 1, generator=generator))
                        seqs[j].append(a)
                        lps[j].append(math.log(p[a]))
                        sym = (*sym, a)
            out.append(
                [
                    Candidate(
                        token_ids=tuple(s),
                        text=".".join(tree.alphabet[a] for a in s),
                        logprobs=tuple(lp),
                        finished=len(start) + len(s) == tree.horizon,
                    )
                    for s, lp in zip(seqs, lps)
                ]
            )
        kind = "draft" if self.which == "draft" else "target"
        self.backend.clock.advance(self.backend.cost.cost(kind, longest, len(prefixes) * n))
        return out


@dataclass
class _Scorer:
    backend: TabularBackend

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[tuple[float, ...]]]:
        out, longest, batch = [], 0, 0
        for trace, cands in zip(prefixes, candidates):
            tree = self.backend.tree(trace)
            row = []
            for c in cands:
                sym, lps = trace.token_ids, []
                for a in c.token_ids:
                    p = _row_probs(tree, "target", sym)[a]
                    lps.append(
                        math.log(p) if p > 0 else -math.inf
                    )  # a draft the target never writes: weight 0
                    sym = (*sym, a)
                row.append(tuple(lps))
                longest = max(longest, c.num_tokens)
            batch += len(cands)
            out.append(row)
        self.backend.clock.advance(self.backend.cost.cost("score", longest, batch))
        return out


def _table_lookup(
    backend: TabularBackend,
    tables: dict[str, Any],
    prefixes: Sequence[Trace],
    candidates: Sequence[Sequence[Candidate]],
    cost_kind: str,
) -> list[list[float]]:
    """Each candidate's value in its tree's per-depth table (``tables[tree][depth][index]``), the call charged to
    the clock as ``cost_kind`` over the longest candidate and the batch."""
    out, longest, batch = [], 0, 0
    for trace, cands in zip(prefixes, candidates):
        name = backend.tree_name(trace)
        tree, levels = backend.trees[name], tables[name]
        row = []
        for c in cands:
            sym = (*trace.token_ids, *c.token_ids)
            row.append(float(levels[len(sym) - 1][tree.index(sym)]))
            longest = max(longest, c.num_tokens)
        batch += len(cands)
        out.append(row)
    backend.clock.advance(backend.cost.cost(cost_kind, longest, batch))
    return out


@dataclass
class _Prm:
    backend: TabularBackend

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        return _table_lookup(self.backend, self.backend._prm, prefixes, candidates, "reward")


@dataclass
class _Judge:
    """The target judge: a table lookup, charged as one target scoring pass over the judged steps."""

    backend: TabularBackend

    def judge(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        return _table_lookup(self.backend, self.backend._judge, prefixes, candidates, "score")


# ------------------------------------------------------------------------------------------------------------------
# The task (``backend: tabular``)


@dataclass
class TabularTaskConfig(TreeConfig):
    """``tabular:`` section: the trees (:class:`specs_rl.tree.TreeConfig`), how many problems, the cost model."""

    problems: int = field(
        default=100, metadata={"help": "number of problems (random trees, or samples of the given tree)"}
    )
    cost: CostModel = field(default_factory=CostModel)

    def validate(self) -> None:
        super().validate()
        if self.problems < 1:
            raise ValueError(f"tabular.problems must be >= 1, got {self.problems}")
        self.cost.validate()


TABULAR_GRADER = {"name": "tabular-true-reward>=0.5", "version": specs_rl.__version__}


def build_task(cfg: Any) -> Task:
    """Problems over random trees (or one tree file) from ``cfg.tabular``, the PRM at ``cfg.search.beta``; correct
    means the true reward is at least 0.5. ``cfg`` is a run config (:class:`specs_rl.run.RunConfig` or any config
    with the backend sections and a ``search``)."""
    tab: TabularTaskConfig = cfg.tabular
    tab.validate()
    if tab.tree is not None:
        trees: dict[str, TabularTree] = {"tree": tab.build()}
        problems = [Problem(id=str(i), prompt="", meta={"tree": "tree"}) for i in range(tab.problems)]
    else:
        trees = {str(i): tab.build(i) for i in range(tab.problems)}
        problems = [Problem(id=str(i), prompt="", meta={"tree": str(i)}) for i in range(tab.problems)]
    backend = TabularBackend(trees, beta=cfg.search.beta, prm=tab.prm, cost=tab.cost)

    def grade(result: SearchResult) -> dict[str, Any]:
        reward = backend.true_reward(result.problem.meta["tree"], result.answer)
        return {"correct": reward >= 0.5, "reward": reward}

    return Task("tabular", problems, backend.parts(), grade, dict(TABULAR_GRADER))
