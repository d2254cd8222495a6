"""``specs-rl theory real``: does SPECS approach the KL-regularized optimum over final answers with real parts?

    specs-rl theory real backend=tabular K=4 H=3 tree_seed=0 beta=2.0 n=1,4,16,64 samples=2000 \\
        variants=exact,reward_only,mean problems=0,1,2 out=runs/theory/real
    specs-rl theory real backend=hf hf.target.name=PATH hf.draft.name=PATH hf.prm.name=PATH \\
        data.dataset=toymath problems=0,3 variants=exact,reward_only,mean n=1,2,4,8,16 samples=400 \\
        out=runs/theory/real_toymath
    specs-rl theory real backend=hf ... scan=20 samples=50     # which problems spread? (no SPECS run)

With real models there is no exact law, so every side is sampled, per problem:

- the target ``π_t`` and the optimum ``π*(y) ∝ π_t(y) e^{β r(y)}`` over complete responses, from ONE stream of
  target draws: a whole response ``y ~ π_t`` (``parts.target.propose(..., to_end=True)``), scored by ``parts.prm``,
  is accepted with probability ``exp(β (r - r_max))`` (``r_max = 1`` for a PRM in [0, 1]). The accepted responses
  are exact draws of ``π*``; the FIRST ``samples`` draws, accepted or not, are the ``π_target`` sample (the stream
  has at least ``samples`` draws, and a fixed-length prefix of an i.i.d. stream is i.i.d. whatever the stopping
  rule, so it costs nothing extra and carries no stopping-time bias);
- SPECS (:func:`specs_rl.search.specs`, the real search function) at each ``n`` of a grid, for each **variant**
  (:data:`VARIANTS`), all on the same problems against the same ``π*`` sample: ``exact`` (summed log ratio,
  ``T = 1``: converges to ``π*``), ``reward_only`` (no target: limit ``∝ π_d e^{βr}``), ``mean`` (per-token mean of
  the log ratio at the authors' selection temperature ``mean_temperature``: a different tilt). Only the score
  form and temperature differ between variants; the other SPECS settings are the run's.

Everything is mapped to final answers (``parts.answer_of``) and compared in total variation, with basic bootstrap
intervals (both samples resampled; see :func:`bootstrap_tv`, which also corrects the plug-in TV's upward bias to
first order). ``tv_target_opt`` = TV(π_target, π*): how much the tilt moves the answers (when it is small, no
method can be told apart from the target). ``tv_floor`` is the mean TV between two resamples of the optimum's own
sample: the level below which differences cannot be resolved at this sample size. The pooled summary is the mean
over the chosen problems, its interval by pooled resampling: each bootstrap replicate resamples every problem's
samples and averages their TVs (the uncertainty of sampling on THESE problems, not of picking problems). On the
tabular backend the exact TVs (:mod:`specs_rl.exact`) are reported beside the sampled ones.

Writes ``real.json``, ``real.png`` and the resolved ``config.yaml`` into ``out`` (``scan=K``: ``scan.json`` only).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, save_config
from specs_rl.datasets import DataConfig, load_problems
from specs_rl.errors import SpecsError
from specs_rl.interfaces import SearchParts
from specs_rl.methods import METHOD_PRESETS
from specs_rl.progress import progress_bar
from specs_rl.run import BACKENDS, build_task, with_backends, write_json
from specs_rl.run.backends import backend, validate_backend
from specs_rl.search import SearchConfig, specs
from specs_rl.tabular import TabularTaskConfig
from specs_rl.types import Problem, Trace

# Variant -> the method preset whose score form (and, where it pins one, selection temperature) it runs. ``mean``
# (specs_paper) leaves the temperature to the run: ``mean_temperature``. ALGORITHM.md §5 lists why the last two do
# not converge to π*.
VARIANTS: dict[str, str] = {"exact": "specs", "reward_only": "specs_no_target", "mean": "specs_paper"}


def variant_config(base: SearchConfig, variant: str, mean_temperature: float) -> SearchConfig:
    """``base`` with the score form and temperature of ``variant`` (:data:`VARIANTS`); everything else kept."""
    if variant not in VARIANTS:
        raise SpecsError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    preset = METHOD_PRESETS[VARIANTS[variant]]
    temperature = preset.get("temperature", mean_temperature)
    return dataclasses.replace(base, score_form=preset["score_form"], temperature=temperature)


def sample_optimum(
    parts: SearchParts,
    problem: Problem,
    beta: float,
    samples: int,
    generator: torch.Generator,
    *,
    r_max: float = 1.0,
    batch: int = 256,
    max_draws: int | None = None,
) -> tuple[list[str], list[str], int]:
    """``samples`` final answers of ``π* ∝ π_t e^{β r}`` by rejection from the target, and ``samples`` of ``π_t``.

    A complete response ``y ~ π_t`` (one ``to_end`` proposal) is accepted with probability ``exp(β (r(y) - r_max))``,
    ``r(y)`` the PRM score of the complete response; accepted ``y`` are distributed as ``π*`` exactly when
    ``r <= r_max``. The first ``samples`` draws (accepted or not) are the target's sample. Returns
    ``(optimum answers, target answers, number of target draws)``. Raises :class:`SpecsError` when ``max_draws``
    (default ``1000 · samples``) draws do not give enough acceptances.
    """
    max_draws = 1000 * samples if max_draws is None else max_draws
    root = Trace(problem)
    answers: list[str] = []
    target: list[str] = []
    draws = 0
    bar = progress_bar(samples, desc="optimum (rejection)", unit="answer")
    while len(answers) < samples:
        if draws >= max_draws:
            bar.close()
            raise SpecsError(
                f"rejection sampling of the optimum accepted {len(answers)} of {draws} target draws; "
                f"lower beta (acceptance ~ E[exp(beta (r - r_max))]) or raise max_draws"
            )
        k = min(batch, max_draws - draws)
        cands = parts.target.propose([root], k, generator, to_end=True)[0]
        rewards = torch.tensor(parts.prm.score([root], [cands])[0], dtype=torch.float64)  # [k]
        if bool((rewards > r_max + 1e-9).any()):
            raise SpecsError(f"a PRM score {float(rewards.max()):.4g} exceeds r_max={r_max}; set r_max")
        u = torch.rand(k, generator=generator, dtype=torch.float64)  # [k]
        accept = torch.log(u) < beta * (rewards - r_max)  # [k]
        for c, ok in zip(cands, accept.tolist()):
            draws += 1  # draws after the last needed acceptance are not counted (acceptance stays unbiased)
            if ok or len(target) < samples:
                answer = parts.answer_of(root.extend(c))
                if len(target) < samples:
                    target.append(answer)
                if ok:
                    answers.append(answer)
                    bar.update(1)
                    if len(answers) == samples:
                        break
    bar.close()
    return answers, target, draws


def sample_specs(
    parts: SearchParts,
    problem: Problem,
    config: SearchConfig,
    samples: int,
    generator: torch.Generator,
    *,
    batch: int = 500,
    desc: str = "SPECS",
) -> tuple[list[str], float]:
    """``samples`` final answers of :func:`specs_rl.search.specs` on ``problem``; also the deferral rate per step."""
    answers: list[str] = []
    deferred = steps = 0
    with progress_bar(samples, desc=f"{desc} n={config.n}", unit="answer") as bar:
        for start in range(0, samples, batch):
            results = specs([problem] * min(batch, samples - start), config, parts, generator)
            answers += [r.answer for r in results]
            deferred += sum(r.deferrals for r in results)
            steps += sum(len(r.steps) for r in results)
            bar.update(len(results))
    return answers, deferred / max(steps, 1)


def _tv_counts(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def _resampled_tv(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``[reps]`` TVs of the two count vectors, each resampled with replacement (multinomial at its own size)."""
    pa, pb = a / a.sum(), b / b.sum()
    return np.array(
        [
            _tv_counts(rng.multinomial(int(a.sum()), pa), rng.multinomial(int(b.sum()), pb))
            for _ in range(reps)
        ]
    )


def _basic_interval(t: float, boot: np.ndarray, level: float) -> tuple[float, float, float]:
    """``(2 t - mean(T*), 2 t - q_hi(T*), 2 t - q_lo(T*))``, clipped at 0: bias-corrected value and basic interval."""
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return max(2 * t - float(boot.mean()), 0.0), max(2 * t - float(q_hi), 0.0), max(2 * t - float(q_lo), 0.0)


def bootstrap_tv(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int = 200, level: float = 0.95
) -> tuple[float, float, float, float]:
    """TV of the laws behind two count vectors (same labels): ``(plug-in, bias-corrected, lo, hi)``.

    The plug-in TV of two samples is biased upwards (sampling noise never cancels in ``|p - q|``). With ``T*`` the
    TV of the two samples each resampled with replacement, the bias-corrected value is ``2 T - mean(T*)`` and the
    interval is the basic (reverse-percentile) bootstrap ``[2 T - q_hi(T*), 2 T - q_lo(T*)]``, both clipped at 0.
    """
    t = _tv_counts(a, b)
    return (t, *_basic_interval(t, _resampled_tv(a, b, rng, reps), level))


def _tv_record(t: float, t_bc: float, lo: float, hi: float) -> dict[str, Any]:
    return {"tv": t, "tv_corrected": t_bc, "tv_ci": [lo, hi]}


def _majority(freq: Mapping[str, float]) -> dict[str, Any]:
    answer = max(freq, key=lambda a: (freq[a], a))
    return {"answer": answer, "share": freq[answer]}


def real_task_check(
    parts: SearchParts,
    problem: Problem,
    beta: float,
    n_grid: Sequence[int],
    samples: int,
    generator: torch.Generator,
    *,
    variants: Mapping[str, SearchConfig] | None = None,
    r_max: float = 1.0,
    bootstrap: int = 200,
    batch: int = 500,
    max_draws: int | None = None,
) -> dict[str, Any]:
    """TV between the final-answer laws of SPECS at each ``n`` (per variant), of the target, and of ``π*``, on ANY
    ``SearchParts``, for one problem.

    ``variants`` maps a name to SPECS settings (score form, temperature, thresholds, start mode, max_steps); their
    ``n`` and ``beta`` are replaced by each grid value and ``beta``. Default: ``{"exact": ...}``, the exact form (sum
    form, T = 1, no rejection, draft mode throughout). Every variant is compared with the same ``π*`` sample.
    Returns ``{"id", "beta", "n", "samples", "target": {"freq", "majority"}, "optimum": {"freq", "majority",
    "acceptance", "target_draws", "seconds"}, "tv_target_opt": {"tv", "tv_corrected", "tv_ci"}, "tv_floor",
    "distinct_answers", "specs": {variant: {str(n): {"freq", "majority", "tv", "tv_corrected", "tv_ci",
    "defer_rate", "seconds"}}}}`` (TV: plug-in; corrected value and interval: basic bootstrap, :func:`bootstrap_tv`).
    """
    if not beta > 0:
        raise SpecsError(f"beta must be > 0, got {beta}")
    if samples < 2 or not n_grid or min(n_grid) < 1:
        raise SpecsError("samples must be >= 2 and n a non-empty list of integers >= 1")
    if variants is None:
        base = SearchConfig(start_mode="draft", tau_reject=-math.inf)
        variants = {"exact": variant_config(base, "exact", 1.0)}
    if not variants:
        raise SpecsError("variants must name at least one SPECS variant")
    t0 = time.perf_counter()
    opt_answers, target_answers, draws = sample_optimum(
        parts, problem, beta, samples, generator, r_max=r_max, batch=batch, max_draws=max_draws
    )
    opt_s = time.perf_counter() - t0
    runs: dict[str, dict[int, tuple[list[str], float, float]]] = {}
    for name, search in variants.items():
        runs[name] = {}
        for n in n_grid:
            t0 = time.perf_counter()
            config = dataclasses.replace(search, strategy="specs", n=int(n), beta=beta)
            answers, defer = sample_specs(
                parts, problem, config, samples, generator, batch=batch, desc=f"SPECS {name}"
            )
            runs[name][int(n)] = (answers, defer, time.perf_counter() - t0)
    every = [set(opt_answers), set(target_answers)] + [
        set(a) for r in runs.values() for a, _, _ in r.values()
    ]
    labels = sorted(set().union(*every))
    index = {a: i for i, a in enumerate(labels)}

    def counts(answers: list[str]) -> np.ndarray:
        c = np.zeros(len(labels))
        for a, k in Counter(answers).items():
            c[index[a]] = k
        return c

    def freq(c: np.ndarray) -> dict[str, float]:
        return {a: k / c.sum() for a, k in zip(labels, c) if k}

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    opt, tgt = counts(opt_answers), counts(target_answers)
    floor = float(
        np.mean(
            [
                _tv_counts(rng.multinomial(samples, opt / samples), rng.multinomial(samples, opt / samples))
                for _ in range(bootstrap)
            ]
        )
    )
    out: dict[str, Any] = {
        "id": problem.id,
        "beta": beta,
        "n": [int(n) for n in n_grid],
        "samples": samples,
        "target": {"freq": freq(tgt), "majority": _majority(freq(tgt))},
        "optimum": {
            "freq": freq(opt),
            "majority": _majority(freq(opt)),
            "acceptance": samples / draws,
            "target_draws": draws,
            "seconds": round(opt_s, 2),
        },
        "tv_target_opt": {},  # drawn after the variants' resamples, so the exact variant's match earlier versions
        "tv_floor": floor,
        "distinct_answers": len(labels),
        "specs": {},
    }
    for name, by_n in runs.items():
        out["specs"][name] = {}
        for n, (answers, defer, secs) in by_n.items():
            c = counts(answers)
            out["specs"][name][str(n)] = {
                "freq": freq(c),
                "majority": _majority(freq(c)),
                **_tv_record(*bootstrap_tv(c, opt, rng, reps=bootstrap)),
                "defer_rate": defer,
                "seconds": round(secs, 2),
            }
    out["tv_target_opt"] = _tv_record(*bootstrap_tv(tgt, opt, rng, reps=bootstrap))
    return out


def _counts_of(freqs: Sequence[Mapping[str, float]], samples: int) -> list[np.ndarray]:
    """Count vectors over the union of labels, from frequencies of ``samples`` answers each."""
    labels = sorted(set().union(*freqs))
    return [np.array([round(f.get(a, 0.0) * samples) for a in labels], dtype=np.float64) for f in freqs]


def pool(problems: Sequence[Mapping[str, Any]], rng: np.random.Generator, reps: int = 200) -> dict[str, Any]:
    """Mean over problems of each TV (``tv_target_opt``, each variant at each ``n``), with a basic bootstrap interval
    by pooled resampling: replicate ``j`` resamples every problem's two samples and averages their TVs, so the
    interval is the sampling uncertainty on these problems (:func:`bootstrap_tv` applied to the mean). Also the mean
    ``tv_floor`` and, where every problem has them, the mean exact TVs. Reads only what :func:`real_task_check`
    wrote (frequencies of ``samples`` answers), so it can be rerun from ``real.json``."""

    def pooled(pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float], int]]) -> dict[str, Any]:
        ts, boots = [], []
        for fa, fb, samples in pairs:
            a, b = _counts_of([fa, fb], samples)
            ts.append(_tv_counts(a, b))
            boots.append(_resampled_tv(a, b, rng, reps))
        t = float(np.mean(ts))
        return _tv_record(t, *_basic_interval(t, np.mean(boots, axis=0), 0.95))

    first = problems[0]
    out: dict[str, Any] = {
        "problems": len(problems),
        "tv_target_opt": pooled(
            [(p["target"]["freq"], p["optimum"]["freq"], p["samples"]) for p in problems]
        ),
        "tv_floor": float(np.mean([p["tv_floor"] for p in problems])),
        "specs": {
            name: {
                key: pooled(
                    [(p["specs"][name][key]["freq"], p["optimum"]["freq"], p["samples"]) for p in problems]
                )
                for key in first["specs"][name]
            }
            for name in first["specs"]
        },
    }
    if all("exact" in p for p in problems):
        out["exact"] = {
            "tv_target_opt": float(np.mean([p["exact"]["tv_target_opt"] for p in problems])),
            "specs": {
                name: np.mean([p["exact"]["specs"][name] for p in problems], axis=0).tolist()
                for name in first["exact"]["specs"]
            },
        }
    return out


# ------------------------------------------------------------------------------------------------------------------
# the entry point


@with_backends(defaults={"tabular": lambda: TabularTaskConfig(H=3, concentration=1.0)})
@dataclass
class RealConfig:
    """``specs-rl theory real``. Defaults chosen here unless a help text says otherwise. The task is built by the
    run layer (:func:`specs_rl.run.build_task`) like any run's: ``backend`` picks its section (``tabular:``, whose
    keys may be given flat, ``K=4 H=3``; ``hf:``; any registered backend) and ``problems`` some of its problems
    (on the tabular backend the flat ``problems`` is this list; the number of trees is ``tabular.problems``)."""

    backend: str = field(default="tabular", metadata={"help": f"one of {', '.join(BACKENDS)}"})
    data: DataConfig = field(
        default_factory=lambda: DataConfig(dataset="toymath", prompt_template="{problem}\n\n"),
        metadata={
            "help": "backends that read data: where the problem comes from (default: toy-math test split)"
        },
    )
    problems: list[int] = field(
        default_factory=lambda: [0],
        metadata={
            "help": "positions of the problems in the task (tabular: tree i); results per problem, pooled"
        },
    )
    variants: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={
            "help": f"SPECS score forms compared, any of {', '.join(VARIANTS)}: exact (T = 1, converges to π*), "
            "reward_only (no target), mean (per-token mean at mean_temperature, authors' code)"
        },
    )
    mean_temperature: float = field(
        default=0.3,
        metadata={"help": "selection temperature of the mean variant (authors' recipes: 0.2-0.3)"},
    )
    beta: float = field(default=2.0, metadata={"help": "tilt β of the optimum and of the SPECS score"})
    n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], metadata={"help": "grid of n"})
    samples: int = field(
        default=2000, metadata={"help": "answers per distribution (target, optimum and each n)"}
    )
    bootstrap: int = field(default=200, metadata={"help": "bootstrap resamples for the TV intervals"})
    r_max: float = field(
        default=1.0, metadata={"help": "upper bound of the PRM score (1 for a PRM in [0, 1])"}
    )
    max_draws: int | None = field(
        default=None,
        metadata={"help": "cap on target draws for the rejection sampler (null: 1000 x samples)"},
    )
    batch: int = field(default=500, metadata={"help": "problems per search call / draws per target call"})
    tau_reject: float = field(default=-math.inf, metadata={"help": "SPECS rejection threshold (-inf: none)"})
    tau_switch: float = field(default=0.7, metadata={"help": "SPECS switch back to the draft [code]"})
    start_mode: str = field(default="draft", metadata={"help": "SPECS start mode: draft | target"})
    target_select: str = field(default="argmax", metadata={"help": "SPECS target mode: argmax | soft"})
    max_steps: int = field(default=20, metadata={"help": "SPECS step limit (authors: 10-30)"})
    scan: int = field(
        default=0,
        metadata={
            "help": "K > 0: only sample π_target and π* on the first K problems and print TV(π_target, π*) per "
            "problem (to choose problems=); no SPECS run, writes scan.json"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the torch.Generator"})
    plot: bool = field(default=True, metadata={"help": "write real.png"})
    out: str = field(default="runs/theory/real", metadata={"help": "output directory"})

    def search_config(self) -> SearchConfig:
        """The SPECS settings every variant shares (its score form and temperature are the variant's)."""
        return SearchConfig(
            strategy="specs",
            beta=self.beta,
            tau_reject=self.tau_reject,
            tau_switch=self.tau_switch,
            start_mode=self.start_mode,
            target_select=self.target_select,
            max_steps=self.max_steps,
        )

    @property
    def search(self) -> SearchConfig:
        """The run layer's view of the settings (the tabular backend's PRM reads ``search.beta``)."""
        return self.search_config()

    def variant_configs(self) -> dict[str, SearchConfig]:
        return {v: variant_config(self.search_config(), v, self.mean_temperature) for v in self.variants}

    def validate(self) -> None:
        if not self.beta > 0 or math.isinf(self.beta):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if not self.n or min(self.n) < 1:
            raise ValueError(f"n must be a non-empty list of integers >= 1, got {self.n}")
        if self.samples < 2 or self.bootstrap < 1 or self.batch < 1:
            raise ValueError("samples must be >= 2, bootstrap and batch >= 1")
        if not self.problems or min(self.problems) < 0 or len(set(self.problems)) < len(self.problems):
            raise ValueError(
                f"problems must be a non-empty list of distinct positions >= 0, got {self.problems}"
            )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or unknown or len(set(self.variants)) < len(self.variants):
            raise ValueError(
                f"variants must be a non-empty list of distinct names from {', '.join(VARIANTS)}, "
                f"got {','.join(self.variants) or '[]'}"
            )
        if not self.mean_temperature > 0 or math.isinf(self.mean_temperature):
            raise ValueError(f"mean_temperature must be a finite number > 0, got {self.mean_temperature}")
        if self.scan < 0:
            raise ValueError(f"scan must be >= 0 (0: no scan), got {self.scan}")
        for config in self.variant_configs().values():
            config.validate()
        validate_backend(self)
        if self.backend == "tabular" and max(self.problems) >= self.tabular.problems:
            raise ValueError(
                f"problems: position {max(self.problems)} is out of range, the tabular task has "
                f"{self.tabular.problems} problems (set tabular.problems)"
            )


def _check_positions(positions: Sequence[int], count: int, where: str) -> None:
    bad = [i for i in positions if i >= count]
    if bad:
        raise SpecsError(f"problems: position {bad[0]} is out of range, {where} has {count} problems")


def build_parts(cfg: RealConfig) -> tuple[SearchParts, list[Problem], list[Any]]:
    """The parts and the chosen problems (the first ``scan`` ones when scanning), built by the run layer; for the
    tabular backend also each problem's tree, whose exact answer laws are reported beside the sampled ones (None
    otherwise). A data backend's problems are read, and the positions checked, before any model loads."""
    if cfg.backend == "tabular" and cfg.tabular.tree is None and cfg.max_steps < cfg.tabular.H:
        raise SpecsError(f"max_steps must be >= the tree's horizon {cfg.tabular.H} on the tabular backend")
    positions = list(range(cfg.scan)) if cfg.scan else cfg.problems
    if backend(cfg.backend).uses_data:
        count = len(load_problems(cfg.data))  # data errors and bad positions surface before any model loads
        positions = positions[:count] if cfg.scan else positions
        _check_positions(positions, count, f"the {cfg.data.dataset} slice")
    task = build_task(cfg)
    positions = positions[: len(task.problems)] if cfg.scan else positions
    _check_positions(positions, len(task.problems), "the task")
    problems = [task.problems[i] for i in positions]
    if cfg.backend != "tabular":
        return task.parts, problems, [None] * len(problems)
    tab = cfg.tabular
    trees = [tab.build() if tab.tree is not None else tab.build(int(p.meta["tree"])) for p in problems]
    return task.parts, problems, trees


def exact_answer_tv(tree: Any, cfg: RealConfig) -> dict[str, Any]:
    """Tabular backend (answers are the responses): the exact TV(π_target, π*) and the exact TV between each
    variant's law and π* at each n."""
    from specs_rl.exact import optimal_log_law, sequence_log_law, specs_log_law, tv

    star = optimal_log_law(tree, cfg.beta)
    out: dict[str, Any] = {"tv_target_opt": tv(sequence_log_law(tree, tree.target), star), "specs": {}}
    for name, search in cfg.variant_configs().items():
        laws = [specs_log_law(tree, dataclasses.replace(search, n=n), prm=cfg.tabular.prm) for n in cfg.n]
        out["specs"][name] = [tv(star, law.log_q) for law in laws]
    return out


def _panel(ax: Any, res: Mapping[str, Any], ns: np.ndarray, title: str) -> None:
    """One panel: each variant's bias-corrected TV to π* with its 95% interval, the exact TV where known,
    TV(π_target, π*) as a reference line (its interval a band) and the sampling floor as a band down to 0."""
    keys = [str(int(n)) for n in ns]
    ref = res["tv_target_opt"]
    values = [ref["tv_corrected"], res["tv_floor"], *res.get("exact", {}).get("specs", {}).get("exact", [])]
    for rows in res["specs"].values():
        values += [v for k in keys for v in (rows[k]["tv"], rows[k]["tv_ci"][1])]
    positive = [v for v in values if v > 0]
    bottom = 0.3 * min(positive) if positive else 1e-4
    ax.axhspan(
        bottom, max(res["tv_floor"], bottom), color="gray", alpha=0.15, label="below the sampling floor"
    )
    ax.axhline(max(ref["tv_corrected"], bottom), color="k", ls="--", lw=1, label="TV(π_target, π*)")
    ax.axhspan(max(ref["tv_ci"][0], bottom), max(ref["tv_ci"][1], bottom), color="k", alpha=0.07)
    for j, (name, rows) in enumerate(res["specs"].items()):
        tv = np.array([rows[k]["tv_corrected"] for k in keys])
        lo, hi = (np.array([rows[k]["tv_ci"][i] for k in keys]) for i in (0, 1))
        shown = np.maximum(tv, bottom)  # a bias-corrected 0 is drawn at the bottom edge
        ax.errorbar(ns * 1.04**j, shown, yerr=[shown - np.maximum(lo, bottom), np.maximum(hi - shown, 0)],
                    marker="o", ms=3, capsize=3, color=f"C{j}", label=f"{name} (95% CI)")  # fmt: skip
        if "exact" in res:
            label = "exact TV (dashed)" if j == len(res["specs"]) - 1 else None
            ax.plot(ns, np.maximum(res["exact"]["specs"][name], bottom), "--", lw=1, color=f"C{j}", alpha=0.6,
                    label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.set_xlabel("n (drafts per step)")
    ax.set_ylabel("TV to π* over final answers (0 at the bottom edge)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_real(result: Mapping[str, Any], path: Path) -> None:
    """``real.png``: one panel per problem, and the pooled mean first when there are several (dashed, per
    variant: the exact TV on the tabular backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array(result["n"], dtype=np.float64)
    panels = [(p, f"problem {p['index']} (id {p['id']})") for p in result["problems"]]
    if len(panels) > 1:
        panels.insert(0, (result["pooled"], f"mean over {len(result['problems'])} problems"))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (res, title) in zip(axes.flat, panels):
        _panel(ax, res, ns, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"SPECS vs rejection-sampled π*, β = {result['beta']}, {result['samples']} samples", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(rec: Mapping[str, Any]) -> str:
    return f"{rec['tv_corrected']:.3f} [{rec['tv_ci'][0]:.3f},{rec['tv_ci'][1]:.3f}]"


def print_table(res: Mapping[str, Any], ns: Sequence[int], title: str) -> None:
    """Bias-corrected TV to π* [95% interval] per n (rows) and variant (columns); ``(ex ...)`` the exact TV."""
    ref = res["tv_target_opt"]
    line = f"{title}: TV(π_target, π*) {_cell(ref)}"
    if "exact" in res:
        line += f" (exact {res['exact']['tv_target_opt']:.3f})"
    print(f"{line}, sampling floor {res['tv_floor']:.3f}")
    names = list(res["specs"])
    width = 31 if "exact" in res else 19
    print(f"{'n':>5} " + " ".join(f"{name:>{width}}" for name in names))
    for i, n in enumerate(ns):
        cells = []
        for name in names:
            cell = _cell(res["specs"][name][str(n)])
            if "exact" in res:
                cell += f" (ex {res['exact']['specs'][name][i]:.3f})"
            cells.append(f"{cell:>{width}}")
        print(f"{n:>5} " + " ".join(cells))


def scan_problems(
    parts: SearchParts, problems: Sequence[Problem], cfg: RealConfig, generator: torch.Generator
) -> list[dict[str, Any]]:
    """For each problem, ``cfg.samples`` draws of π_target and π* (no SPECS): TV(π_target, π*) and the spreads."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    rows = []
    for i, problem in enumerate(problems):
        opt, tgt, draws = sample_optimum(
            parts, problem, cfg.beta, cfg.samples, generator, r_max=cfg.r_max, batch=cfg.batch,
            max_draws=cfg.max_draws,
        )  # fmt: skip
        f_tgt, f_opt = ({a: k / cfg.samples for a, k in Counter(x).items()} for x in (tgt, opt))
        a, b = _counts_of([f_tgt, f_opt], cfg.samples)
        rows.append(
            {
                "index": i,
                "id": problem.id,
                "target_answers": len(f_tgt),
                "target_majority": _majority(f_tgt),
                "optimum_majority": _majority(f_opt),
                "acceptance": cfg.samples / draws,
                "tv_target_opt": _tv_record(*bootstrap_tv(a, b, rng, reps=cfg.bootstrap)),
            }
        )
    return rows


def print_scan(rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per scanned problem, then the positions whose TV(π_target, π*) interval lies above 0.2."""
    print(f"{'problem':>7} {'answers':>7} {'target top':>16} {'π* top':>16} {'TV(π_t, π*) [95%]':>21}  id")
    for r in rows:
        tops = [f"{m['answer'][:10]} {m['share']:.2f}" for m in (r["target_majority"], r["optimum_majority"])]
        cells = f"{r['index']:>7} {r['target_answers']:>7} {tops[0]:>16} {tops[1]:>16}"
        print(f"{cells} {_cell(r['tv_target_opt']):>21}  {r['id']}")
    chosen = ",".join(str(r["index"]) for r in rows if r["tv_target_opt"]["tv_ci"][0] >= 0.2) or "none"
    print(f"problems whose TV(π_target, π*) interval lies above 0.2: {chosen}")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_argv(RealConfig, sys.argv[1:] if argv is None else argv, "specs-rl theory real")
    parts, problems, trees = build_parts(cfg)  # input errors surface here, before a file is written
    generator = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.scan:
        rows = scan_problems(parts, problems, cfg, generator)
        write_json(out / "scan.json", {"beta": cfg.beta, "samples": cfg.samples, "problems": rows}, indent=1)
        print_scan(rows)
        print(f"wrote {out / 'scan.json'}")
        return 0
    rng = np.random.default_rng(
        [cfg.seed, 1]
    )  # the pooled bootstrap: a stream apart from the search's generator
    result: dict[str, Any] = {
        "backend": cfg.backend,
        "beta": cfg.beta,
        "n": list(cfg.n),
        "samples": cfg.samples,
        "variants": list(cfg.variants),
        "mean_temperature": cfg.mean_temperature,
        "problems": [],
    }
    for index, problem, tree in zip(cfg.problems, problems, trees):
        res = real_task_check(
            parts,
            problem,
            cfg.beta,
            cfg.n,
            cfg.samples,
            generator,
            variants=cfg.variant_configs(),
            r_max=cfg.r_max,
            bootstrap=cfg.bootstrap,
            batch=cfg.batch,
            max_draws=cfg.max_draws,
        )
        res = {"index": index, **res}
        if tree is not None:
            res["exact"] = exact_answer_tv(tree, cfg)
        result["problems"].append(res)
        result["pooled"] = pool(result["problems"], rng, cfg.bootstrap)
        write_json(out / "real.json", result, indent=1)  # after every problem: a long run keeps what it has
    if cfg.plot:
        plot_real(result, out / "real.png")
    for res in result["problems"]:
        print_table(res, cfg.n, f"problem {res['index']} (id {res['id']})")
        if res["distinct_answers"] < 2:
            print("warning: every sampled response has the same final answer; the TV says nothing here")
    if len(result["problems"]) > 1:
        print_table(result["pooled"], cfg.n, f"mean over {len(result['problems'])} problems")
    print(f"wrote {out / 'real.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
