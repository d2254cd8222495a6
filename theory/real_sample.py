"""``theory real``, sampling: final answers of the target, of the optimum ``π*`` (by rejection from the target) and
of SPECS per variant and ``n``, on any :class:`~specs_rl.interfaces.SearchParts`. No statistics here
(:mod:`theory.real_stats`), no output (:mod:`theory.real_report`).

Variants are named by the method preset whose score form they run (:mod:`theory.names` lists the names used
before): ``specs`` (summed log ratio, ``T = 1``: converges to ``π*``), ``specs_no_target`` (reward only: limit
``∝ π_d e^{βr}``), ``specs_paper_form`` (the per-token mean of ``specs_paper`` at the run's selection temperature: a
different tilt). Only the score form and temperature differ between variants; the other SPECS settings are the run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from specs_rl.errors import SpecsError
from specs_rl.interfaces import SearchParts
from specs_rl.methods import METHOD_PRESETS
from specs_rl.progress import progress_bar
from specs_rl.search import specs
from specs_rl.settings import SearchConfig
from specs_rl.types import Problem, Trace

# Variant -> the method preset whose score form (and, where it pins one, selection temperature) it runs.
# ``specs_paper_form`` (specs_paper) leaves the temperature to the run. theory/README.md §2 lists why the last two do not
# converge to π*.
VARIANTS: dict[str, str] = {
    "specs": "specs",
    "specs_no_target": "specs_no_target",
    "specs_paper_form": "specs_paper",
}


def variant_config(base: SearchConfig, variant: str, temperature: float | None = None) -> SearchConfig:
    """``base`` with the score form and temperature of ``variant`` (:data:`VARIANTS`); everything else kept. A
    variant whose preset does not pin a temperature runs at ``temperature`` (default: ``base.temperature``)."""
    if variant not in VARIANTS:
        raise SpecsError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    preset = METHOD_PRESETS[VARIANTS[variant]]
    own = base.temperature if temperature is None else temperature
    return dataclasses.replace(
        base, score_form=preset["score_form"], temperature=preset.get("temperature", own)
    )


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


@dataclass
class SpecsSample:
    """SPECS' answers for one variant at one ``n``, its deferral rate per step and the seconds it took."""

    answers: list[str]
    defer_rate: float
    seconds: float


@dataclass
class AnswerSample:
    """Every sample of one problem: ``π*`` by rejection, the target (the first draws of the same stream), and SPECS
    per variant and ``n`` (``specs[name][n]``)."""

    optimum: list[str]
    target: list[str]
    target_draws: int
    optimum_seconds: float
    specs: dict[str, dict[int, SpecsSample]] = field(default_factory=dict)


def sample_answers(
    parts: SearchParts,
    problem: Problem,
    beta: float,
    n_grid: Sequence[int],
    samples: int,
    generator: torch.Generator,
    variants: Mapping[str, SearchConfig],
    *,
    r_max: float = 1.0,
    batch: int = 500,
    max_draws: int | None = None,
) -> AnswerSample:
    """``samples`` answers of ``π*`` and of the target (:func:`sample_optimum`), then of SPECS for each variant at
    each ``n`` (its settings with ``n`` and ``beta`` replaced), all from ``generator`` in that order."""
    t0 = time.perf_counter()
    opt_answers, target_answers, draws = sample_optimum(
        parts, problem, beta, samples, generator, r_max=r_max, batch=batch, max_draws=max_draws
    )
    out = AnswerSample(opt_answers, target_answers, draws, time.perf_counter() - t0)
    for name, search in variants.items():
        out.specs[name] = {}
        for n in n_grid:
            t0 = time.perf_counter()
            config = dataclasses.replace(search, strategy="specs", n=int(n), beta=beta)
            answers, defer = sample_specs(
                parts, problem, config, samples, generator, batch=batch, desc=f"SPECS {name}"
            )
            out.specs[name][int(n)] = SpecsSample(answers, defer, time.perf_counter() - t0)
    return out
