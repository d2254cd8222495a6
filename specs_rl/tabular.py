"""An exact step-level world: explicit next-step laws for the draft and the target, a reward per response.

A tree has an alphabet of ``K`` symbols and a horizon ``H``; one step is one symbol; a response is complete after
``H`` steps. Probabilities are stored per level as arrays: level ``h`` holds ``[K**h, K]`` rows, the prefix
``(a_1..a_h)`` at row ``sum a_i K**(h-i)`` (lexicographic order). JSON form (the project's tree schema)::

    {"alphabet": ["a", "b"], "horizon": 2,
     "target": {"": [0.5, 0.5], "a": [...], "b": [...]},   # every prefix of length < horizon, joined by "."
     "draft":  {...same keys...},
     "reward": {"a.a": 0.31, ...},                           # every complete sequence, in [0, 1]
     "prm":    {"a": 0.4, "a.a": 0.31, ...}}                 # optional: a PRM table over non-empty prefixes

The backend here implements the protocols of :mod:`specs_rl.interfaces` with exact probabilities and a simulated
clock, so the search code runs unchanged on it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specs_rl.errors import SpecsError
from specs_rl.interfaces import SearchParts, SimClock
from specs_rl.types import Candidate, Trace

ROW_TOL = 1e-6


class TreeError(SpecsError):
    """A tree file or spec that does not describe a valid tabular world."""


@dataclass
class TabularTree:
    alphabet: list[str]
    horizon: int
    target: list[np.ndarray]  # level h: [K**h, K]
    draft: list[np.ndarray]  # level h: [K**h, K]
    reward: np.ndarray  # [K**H]
    prm_table: list[np.ndarray] | None = None  # level h = 1..H at index h-1: [K**h]

    @property
    def K(self) -> int:  # noqa: N802 - the paper's symbol
        return len(self.alphabet)

    # -- keys and indices -------------------------------------------------------------------------------------
    def key(self, symbols: Sequence[int]) -> str:
        return ".".join(self.alphabet[a] for a in symbols)

    def index(self, symbols: Sequence[int]) -> int:
        i = 0
        for a in symbols:
            i = i * self.K + a
        return i

    def prefixes(self, h: int) -> list[tuple[int, ...]]:
        """All prefixes of length ``h`` in row order."""
        return list(itertools.product(range(self.K), repeat=h))

    def sequences(self) -> list[str]:
        """Keys of every complete response, in row order of ``reward``."""
        return [self.key(s) for s in self.prefixes(self.horizon)]

    # -- exact quantities -----------------------------------------------------------------------------------
    def soft_values(self, beta: float) -> list[np.ndarray]:
        """Soft values under the target, ``V[h]`` of shape ``[K**h]`` for h = 0..H (ALGORITHM.md §2).

        ``V_H = r`` and ``V_h(s) = (1/β) log Σ_a π_t(a|s) exp(β V_{h+1}(s∘a))``, computed in log space;
        ``β = 0`` gives the plain expectation (the limit).
        """
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        values = [np.zeros(0)] * (self.horizon + 1)
        values[self.horizon] = self.reward.astype(np.float64)
        for h in range(self.horizon - 1, -1, -1):
            nxt = values[h + 1].reshape(self.K**h, self.K)
            p = self.target[h]
            if beta == 0:
                values[h] = (p * nxt).sum(axis=1)
            else:
                with np.errstate(divide="ignore"):
                    logp = np.log(p)
                z = logp + beta * nxt
                m = z.max(axis=1, keepdims=True)
                values[h] = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1))) / beta
        return values

    def prm_levels(self, prm: str, beta: float) -> list[np.ndarray]:
        """Rewards of every non-empty prefix, index ``h-1`` for length ``h``: the idealized PRM (``V``) or the table."""
        if prm == "idealized":
            return self.soft_values(beta)[1:]
        if prm == "table":
            if self.prm_table is None:
                raise TreeError("prm=table needs a 'prm' table in the tree file")
            return self.prm_table
        if prm == "outcome":
            # Reward only complete responses; intermediate steps score the expected reward under the target.
            return self.soft_values(0.0)[1:]
        raise ValueError(f"prm must be one of idealized, table, outcome; got {prm!r}")

    # -- (de)serialization ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def rows(levels: list[np.ndarray]) -> dict[str, list[float]]:
            return {
                self.key(p): levels[h][i].tolist()
                for h in range(self.horizon)
                for i, p in enumerate(self.prefixes(h))
            }

        out: dict[str, Any] = {
            "alphabet": list(self.alphabet),
            "horizon": self.horizon,
            "target": rows(self.target),
            "draft": rows(self.draft),
            "reward": dict(zip(self.sequences(), self.reward.tolist())),
        }
        if self.prm_table is not None:
            out["prm"] = {
                self.key(p): float(self.prm_table[h - 1][i])
                for h in range(1, self.horizon + 1)
                for i, p in enumerate(self.prefixes(h))
            }
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))


def tree_from_json(obj: Mapping[str, Any], source: str = "tree") -> TabularTree:
    """Build and validate a tree from the JSON schema; every problem raises :class:`TreeError` with one line."""
    for k in ("alphabet", "horizon", "target", "draft", "reward"):
        if k not in obj:
            raise TreeError(f"{source}: missing key {k!r}")
    unknown = set(obj) - {"alphabet", "horizon", "target", "draft", "reward", "prm"}
    if unknown:
        raise TreeError(f"{source}: unknown key(s) {sorted(unknown)}")
    alphabet = obj["alphabet"]
    if not isinstance(alphabet, list) or not alphabet or not all(isinstance(a, str) and a for a in alphabet):
        raise TreeError(f"{source}: 'alphabet' must be a non-empty list of non-empty strings")
    if len(set(alphabet)) != len(alphabet) or any("." in a for a in alphabet):
        raise TreeError(f"{source}: alphabet symbols must be distinct and must not contain '.'")
    horizon = obj["horizon"]
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
        raise TreeError(f"{source}: 'horizon' must be an integer >= 1, got {horizon!r}")
    K = len(alphabet)  # noqa: N806
    shell = TabularTree(alphabet, horizon, [], [], np.zeros(0))

    def levels(name: str) -> list[np.ndarray]:
        table = obj[name]
        if not isinstance(table, dict):
            raise TreeError(f"{source}: {name!r} must be an object mapping prefixes to rows")
        out = []
        expected = set()
        for h in range(horizon):
            arr = np.zeros((K**h, K))
            for i, p in enumerate(shell.prefixes(h)):
                key = shell.key(p)
                expected.add(key)
                if key not in table:
                    raise TreeError(f"{source}: {name} misses prefix {key!r}")
                row = table[key]
                if not isinstance(row, list) or len(row) != K:
                    raise TreeError(f"{source}: {name}[{key!r}] must be a list of {K} probabilities")
                try:
                    r = np.asarray(row, dtype=np.float64)
                except (TypeError, ValueError):
                    raise TreeError(f"{source}: {name}[{key!r}] holds a non-number") from None
                if not np.all(np.isfinite(r)) or (r < 0).any():
                    raise TreeError(f"{source}: {name}[{key!r}] has a negative or non-finite probability")
                if abs(r.sum() - 1.0) > ROW_TOL:
                    raise TreeError(f"{source}: {name}[{key!r}] sums to {r.sum():.6g}, not 1")
                arr[i] = r / r.sum()
            out.append(arr)
        extra = set(table) - expected
        if extra:
            raise TreeError(
                f"{source}: {name} has key(s) that are not prefixes shorter than the horizon: {sorted(extra)[:3]}"
            )
        return out

    target, draft = levels("target"), levels("draft")
    # The draft must cover the target for the importance weights to exist.
    for h in range(horizon):
        bad = np.argwhere((draft[h] == 0) & (target[h] > 0))
        if len(bad):
            key = shell.key(shell.prefixes(h)[bad[0][0]])
            raise TreeError(
                f"{source}: draft gives probability 0 to symbol {alphabet[bad[0][1]]!r} after {key!r} where the target does not"
            )
    shell.target, shell.draft = target, draft

    def values(name: str, keys: list[str], table: Any) -> np.ndarray:
        if not isinstance(table, dict):
            raise TreeError(f"{source}: {name!r} must be an object")
        missing = [k for k in keys if k not in table]
        if missing:
            raise TreeError(f"{source}: {name} misses {missing[0]!r} ({len(missing)} missing)")
        vals = []
        for k in keys:
            v = table[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 <= v <= 1.0):
                raise TreeError(f"{source}: {name}[{k!r}] must be a number in [0, 1], got {v!r}")
            vals.append(float(v))
        extra = set(table) - set(keys)
        if extra:
            raise TreeError(f"{source}: {name} has unknown key(s) {sorted(extra)[:3]}")
        return np.asarray(vals)

    shell.reward = values("reward", shell.sequences(), obj["reward"])
    if "prm" in obj:
        prm = obj["prm"]
        levels_prm = []
        keys_all = [shell.key(p) for h in range(1, horizon + 1) for p in shell.prefixes(h)]
        flat = values("prm", keys_all, prm)
        start = 0
        for h in range(1, horizon + 1):
            levels_prm.append(flat[start : start + K**h])
            start += K**h
        shell.prm_table = levels_prm
    return shell


def load_tree(path: str | Path) -> TabularTree:
    p = Path(path)
    if not p.is_file():
        raise TreeError(f"tree file not found: {p}")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TreeError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise TreeError(f"{p}: the top level must be a JSON object")
    return tree_from_json(obj, source=str(p))


def random_tree(
    K: int = 3,  # noqa: N803
    H: int = 3,  # noqa: N803
    *,
    concentration: float = 1.0,
    coverage: float = 0.3,
    draft_noise: float = 1.0,
    seed: int = 0,
) -> TabularTree:
    """A seeded random world.

    Target rows ~ Dirichlet(concentration); rewards ~ U[0, 1]. The draft is ``(1 - coverage) · perturbed target +
    coverage · uniform``, the perturbation multiplying the target by ``exp(draft_noise · N(0, 1))`` and
    renormalizing; ``coverage > 0`` keeps every symbol reachable by the draft.
    """
    if K < 2 or H < 1:
        raise TreeError(f"a random tree needs K >= 2 and H >= 1, got K={K}, H={H}")
    if concentration <= 0:
        raise TreeError(f"concentration must be > 0, got {concentration}")
    if not 0.0 < coverage <= 1.0:
        raise TreeError(f"coverage must be in (0, 1], got {coverage}")
    rng = np.random.default_rng(seed)
    alphabet = [chr(ord("a") + i) for i in range(K)] if K <= 26 else [f"s{i}" for i in range(K)]
    target, draft = [], []
    for h in range(H):
        t = rng.dirichlet(np.full(K, concentration), size=K**h)
        t = np.maximum(t, 1e-12)
        t /= t.sum(axis=1, keepdims=True)
        pert = t * np.exp(draft_noise * rng.standard_normal(t.shape))
        pert /= pert.sum(axis=1, keepdims=True)
        d = (1.0 - coverage) * pert + coverage / K
        target.append(t)
        draft.append(d / d.sum(axis=1, keepdims=True))
    reward = rng.uniform(0.0, 1.0, size=K**H)
    return TabularTree(alphabet, H, target, draft, reward)


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
    tree). ``prm`` is ``idealized`` (the exact soft value V at ``beta``), ``table`` or ``outcome``.
    """

    trees: Mapping[str, TabularTree]
    beta: float = 1.0
    prm: str = "idealized"
    cost: CostModel = field(default_factory=CostModel)
    clock: SimClock = field(default_factory=SimClock)

    def __post_init__(self) -> None:
        if not self.trees:
            raise TreeError("a tabular backend needs at least one tree")
        self._prm = {name: t.prm_levels(self.prm, self.beta) for name, t in self.trees.items()}

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
        self, prefixes: Sequence[Trace], n: int, generator: torch.Generator, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        longest = 0
        for trace in prefixes:
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
                    lps.append(math.log(_row_probs(tree, "target", sym)[a]))
                    sym = (*sym, a)
                row.append(tuple(lps))
                longest = max(longest, c.num_tokens)
            batch += len(cands)
            out.append(row)
        self.backend.clock.advance(self.backend.cost.cost("score", longest, batch))
        return out


@dataclass
class _Prm:
    backend: TabularBackend

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        out, longest, batch = [], 0, 0
        for trace, cands in zip(prefixes, candidates):
            name = self.backend.tree_name(trace)
            tree, levels = self.backend.trees[name], self.backend._prm[name]
            row = []
            for c in cands:
                sym = (*trace.token_ids, *c.token_ids)
                row.append(float(levels[len(sym) - 1][tree.index(sym)]))
                longest = max(longest, c.num_tokens)
            batch += len(cands)
            out.append(row)
        self.backend.clock.advance(self.backend.cost.cost("reward", longest, batch))
        return out
