"""An exact step-level world: explicit next-step laws for the draft and the target, a reward per response.

A tree has an alphabet of ``K`` symbols and a horizon ``H``; one step is one symbol; a response is complete after
``H`` steps. Probabilities are stored per level as arrays: level ``h`` holds ``[K**h, K]`` rows, the prefix
``(a_1..a_h)`` at row ``sum a_i K**(h-i)`` (lexicographic order). JSON form (the project's tree schema)::

    {"alphabet": ["a", "b"], "horizon": 2,
     "target": {"": [0.5, 0.5], "a": [...], "b": [...]},   # every prefix of length < horizon, joined by "."
     "draft":  {...same keys...},
     "reward": {"a.a": 0.31, ...},                           # every complete sequence, in [0, 1]
     "prm":    {"a": 0.4, "a.a": 0.31, ...}}                 # optional: a PRM table over non-empty prefixes

Pure numpy: the exact laws (:mod:`specs_rl.exact`) read the level arrays directly, and the tabular backend
(:mod:`specs_rl.tabular`) samples from them. :class:`TreeConfig` is the one random-tree config of every recipe
(``specs-rl search``, ``compare``, ``theory converge``, ``theory real``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specs_rl.errors import SpecsError

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
        """Soft values under the target, ``V[h]`` of shape ``[K**h]`` for h = 0..H (docs/algorithm.md §2).

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

    def judge_levels(self) -> list[np.ndarray]:
        """The tabular target judge (SpecReason's ``judge: target``): the expected 0-9 score of every non-empty
        prefix, index ``h-1`` for length ``h`` (``[K**h]``), ``9 · E_{π_t}[R | s∘y]``: the target grades a step by
        the expected reward of its own continuation from it (chosen here: the judge a target that knows its world
        exactly would give). A deterministic expected score per (prefix, step), so the exact law keeps a draft
        step ``y`` with probability ``1[score(s∘y) >= threshold]`` (:func:`specs_rl.exact.specreason_log_law`)."""
        return [9.0 * v for v in self.soft_values(0.0)[1:]]

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
# The one random-tree config


PRMS = ("idealized", "table", "outcome")


@dataclass
class TreeConfig:
    """Which tree(s): a file in the schema above, or seeded random trees; and which PRM reads them.

    The ``tabular:`` section of every recipe. Its keys may also be given at the top level (``K=6 H=4 tree_seed=3``),
    as users type them. Problem ``i`` of a random world is ``random_tree(K, H, ..., seed=tree_seed + i)``.
    """

    tree: str | None = field(
        default=None, metadata={"help": "a tree JSON file (the schema of specs_rl.tree); null: random trees"}
    )
    K: int = field(default=4, metadata={"help": "random trees: alphabet size"})  # noqa: N815
    H: int = field(default=4, metadata={"help": "random trees: horizon (steps per response)"})  # noqa: N815
    concentration: float = field(
        default=0.5, metadata={"help": "random trees: Dirichlet concentration of target rows"}
    )
    coverage: float = field(
        default=0.3, metadata={"help": "random trees: weight of the uniform law in the draft"}
    )
    draft_noise: float = field(
        default=1.0, metadata={"help": "random trees: log-normal perturbation of the draft"}
    )
    tree_seed: int = field(default=0, metadata={"help": "random trees: tree i has seed tree_seed + i"})
    prm: str = field(
        default="idealized",
        metadata={"help": "idealized (exact soft value V at beta) | table (the file's) | outcome"},
    )

    def validate(self) -> None:
        if self.prm not in PRMS:
            raise ValueError(f"tabular.prm must be one of {', '.join(PRMS)}; got {self.prm!r}")
        if self.tree is None:
            if self.K < 2 or self.H < 1:
                raise ValueError(f"a random tree needs K >= 2 and H >= 1, got K={self.K}, H={self.H}")
            if not self.concentration > 0:
                raise ValueError(f"tabular.concentration must be > 0, got {self.concentration}")
            if not 0.0 < self.coverage <= 1.0:
                raise ValueError(f"tabular.coverage must be in (0, 1], got {self.coverage}")

    def build(self, i: int = 0) -> TabularTree:
        """The tree file, or random tree ``i``; a ``prm: table`` without a table is a :class:`TreeError`."""
        if self.tree is not None:
            tree = load_tree(self.tree)
        else:
            tree = random_tree(
                self.K,
                self.H,
                concentration=self.concentration,
                coverage=self.coverage,
                draft_noise=self.draft_noise,
                seed=self.tree_seed + i,
            )
        if self.prm == "table" and tree.prm_table is None:
            raise TreeError(f"prm=table needs a 'prm' table in the tree file {self.tree}")
        return tree
