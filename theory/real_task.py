"""``specs-rl theory real``: does SPECS approach the KL-regularized optimum over final answers with real parts?

    specs-rl theory real backend=tabular K=4 H=3 tree_seed=0 beta=2.0 n=1,4,16,64 samples=2000 out=runs/theory/real
    specs-rl theory real backend=hf hf.target.name=PATH hf.draft.name=PATH hf.prm.name=PATH \\
        data.dataset=toymath problem=0 beta=2.0 n=1,2,4,8 samples=400 out=runs/theory/real_toymath

With real models there is no exact law, so both sides are sampled:

- the optimum ``π*(y) ∝ π_t(y) e^{β r(y)}`` over complete responses, by rejection from the target: draw a whole
  response with ``parts.target.propose(..., to_end=True)``, score it with ``parts.prm``, accept it with probability
  ``exp(β (r - r_max))`` (``r_max = 1`` for a PRM in [0, 1]); the accepted responses are exact draws of ``π*``;
- SPECS (:func:`specs_rl.search.specs`, the real search function) at each ``n`` of a grid.

Both are mapped to final answers (``parts.answer_of``) and compared in total variation, with percentile bootstrap
intervals (both samples resampled; basic bootstrap, which also corrects the plug-in TV's upward bias to first
order). ``tv_floor`` is the mean TV between two resamples of the optimum's own sample: the level below which
differences cannot be resolved at this sample size. On the tabular backend the exact TV (:mod:`specs_rl.exact`) is reported beside it.

Writes ``real.json``, ``real.png`` and the resolved ``config.yaml`` into ``out``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, save_config
from specs_rl.datasets import DataConfig
from specs_rl.errors import SpecsError
from specs_rl.interfaces import SearchParts
from specs_rl.progress import progress_bar
from specs_rl.run import BACKENDS, build_task, with_backends, write_json
from specs_rl.run.backends import validate_backend
from specs_rl.search import SearchConfig, specs
from specs_rl.tabular import TabularTaskConfig
from specs_rl.types import Problem, Trace


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
) -> tuple[list[str], int]:
    """``samples`` final answers of responses drawn from ``π* ∝ π_t e^{β r}`` by rejection from the target.

    A complete response ``y ~ π_t`` (one ``to_end`` proposal) is accepted with probability ``exp(β (r(y) - r_max))``,
    ``r(y)`` the PRM score of the complete response; accepted ``y`` are distributed as ``π*`` exactly when
    ``r <= r_max``. Returns the answers and the number of target draws. Raises :class:`SpecsError` when
    ``max_draws`` (default ``1000 · samples``) draws do not give enough acceptances.
    """
    max_draws = 1000 * samples if max_draws is None else max_draws
    root = Trace(problem)
    answers: list[str] = []
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
            if ok:
                answers.append(parts.answer_of(root.extend(c)))
                bar.update(1)
                if len(answers) == samples:
                    break
    bar.close()
    return answers, draws


def sample_specs(
    parts: SearchParts,
    problem: Problem,
    config: SearchConfig,
    samples: int,
    generator: torch.Generator,
    *,
    batch: int = 500,
) -> tuple[list[str], float]:
    """``samples`` final answers of :func:`specs_rl.search.specs` on ``problem``; also the deferral rate per step."""
    answers: list[str] = []
    deferred = steps = 0
    with progress_bar(samples, desc=f"SPECS n={config.n}", unit="answer") as bar:
        for start in range(0, samples, batch):
            results = specs([problem] * min(batch, samples - start), config, parts, generator)
            answers += [r.answer for r in results]
            deferred += sum(r.deferrals for r in results)
            steps += sum(len(r.steps) for r in results)
            bar.update(len(results))
    return answers, deferred / max(steps, 1)


def _tv_counts(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def bootstrap_tv(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int = 200, level: float = 0.95
) -> tuple[float, float, float, float]:
    """TV of the laws behind two count vectors (same labels): ``(plug-in, bias-corrected, lo, hi)``.

    The plug-in TV of two samples is biased upwards (sampling noise never cancels in ``|p - q|``). With ``T*`` the
    TV of the two samples each resampled with replacement, the bias-corrected value is ``2 T - mean(T*)`` and the
    interval is the basic (reverse-percentile) bootstrap ``[2 T - q_hi(T*), 2 T - q_lo(T*)]``, both clipped at 0.
    """
    pa, pb = a / a.sum(), b / b.sum()
    boot = np.array(
        [
            _tv_counts(rng.multinomial(int(a.sum()), pa), rng.multinomial(int(b.sum()), pb))
            for _ in range(reps)
        ]
    )
    t = _tv_counts(a, b)
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return (
        t,
        max(2 * t - float(boot.mean()), 0.0),
        max(2 * t - float(q_hi), 0.0),
        max(2 * t - float(q_lo), 0.0),
    )


def real_task_check(
    parts: SearchParts,
    problem: Problem,
    beta: float,
    n_grid: Sequence[int],
    samples: int,
    generator: torch.Generator,
    *,
    search: SearchConfig | None = None,
    r_max: float = 1.0,
    bootstrap: int = 200,
    batch: int = 500,
    max_draws: int | None = None,
) -> dict[str, Any]:
    """TV between the final-answer laws of SPECS at each ``n`` and of the optimum ``π*``, on ANY ``SearchParts``.

    ``search`` holds the SPECS settings (score form, temperature, thresholds, start mode, max_steps); its ``n`` and
    ``beta`` are replaced by each grid value and ``beta``. Default: the exact variant (sum form, T = 1, no rejection,
    draft mode throughout). Returns ``{"beta", "n", "samples", "optimum": {...}, "specs": {n: {...}}, "tv",
    "tv_corrected", "tv_lo", "tv_hi", "tv_floor"}`` (TV: plug-in; interval: basic bootstrap, see
    :func:`bootstrap_tv`).
    """
    if not beta > 0:
        raise SpecsError(f"beta must be > 0, got {beta}")
    if samples < 2 or not n_grid or min(n_grid) < 1:
        raise SpecsError("samples must be >= 2 and n a non-empty list of integers >= 1")
    base = search or SearchConfig(
        start_mode="draft", tau_reject=-math.inf, temperature=1.0, score_form="exact"
    )
    t0 = time.perf_counter()
    opt_answers, draws = sample_optimum(
        parts, problem, beta, samples, generator, r_max=r_max, batch=batch, max_draws=max_draws
    )
    opt_s = time.perf_counter() - t0
    runs: dict[int, tuple[list[str], float, float]] = {}
    for n in n_grid:
        t0 = time.perf_counter()
        config = dataclasses.replace(base, method="specs", n=int(n), beta=beta)
        answers, defer = sample_specs(parts, problem, config, samples, generator, batch=batch)
        runs[int(n)] = (answers, defer, time.perf_counter() - t0)
    labels = sorted(set(opt_answers).union(*(set(a) for a, _, _ in runs.values())))
    index = {a: i for i, a in enumerate(labels)}

    def counts(answers: list[str]) -> np.ndarray:
        c = np.zeros(len(labels))
        for a, k in Counter(answers).items():
            c[index[a]] = k
        return c

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    opt = counts(opt_answers)
    floor = float(
        np.mean(
            [
                _tv_counts(rng.multinomial(samples, opt / samples), rng.multinomial(samples, opt / samples))
                for _ in range(bootstrap)
            ]
        )
    )
    out: dict[str, Any] = {
        "beta": beta,
        "n": [int(n) for n in n_grid],
        "samples": samples,
        "optimum": {
            "freq": {a: c / samples for a, c in zip(labels, opt) if c},
            "acceptance": samples / draws,
            "target_draws": draws,
            "seconds": round(opt_s, 2),
        },
        "specs": {},
        "tv": [],
        "tv_corrected": [],
        "tv_lo": [],
        "tv_hi": [],
        "tv_floor": floor,
        "distinct_answers": len(labels),
    }
    for n, (answers, defer, secs) in runs.items():
        tv, tv_bc, lo, hi = bootstrap_tv(counts(answers), opt, rng, reps=bootstrap)
        out["specs"][str(n)] = {
            "freq": {a: c / samples for a, c in zip(labels, counts(answers)) if c},
            "tv": tv,
            "tv_corrected": tv_bc,
            "tv_ci": [lo, hi],
            "defer_rate": defer,
            "seconds": round(secs, 2),
        }
        out["tv"].append(tv)
        out["tv_corrected"].append(tv_bc)
        out["tv_lo"].append(lo)
        out["tv_hi"].append(hi)
    return out


# ------------------------------------------------------------------------------------------------------------------
# the entry point


@with_backends(defaults={"tabular": lambda: TabularTaskConfig(H=3, concentration=1.0, problems=1)})
@dataclass
class RealConfig:
    """``specs-rl theory real``. Defaults chosen here unless a help text says otherwise. The task is built by the
    run layer (:func:`specs_rl.run.build_task`) like any run's: ``backend`` picks its section (``tabular:``, whose
    keys may be given flat, ``K=4 H=3``; ``hf:``; any registered backend) and ``problem`` one of its problems."""

    backend: str = field(default="tabular", metadata={"help": f"one of {', '.join(BACKENDS)}"})
    data: DataConfig = field(
        default_factory=lambda: DataConfig(dataset="toymath", prompt_template="{problem}\n\n"),
        metadata={
            "help": "backends that read data: where the problem comes from (default: toy-math test split)"
        },
    )
    problem: int = field(
        default=0, metadata={"help": "position of the problem in the task (tabular: tree i)"}
    )
    beta: float = field(default=2.0, metadata={"help": "tilt β of the optimum and of the SPECS score"})
    n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], metadata={"help": "grid of n"})
    samples: int = field(default=2000, metadata={"help": "answers per distribution (optimum and each n)"})
    bootstrap: int = field(default=200, metadata={"help": "bootstrap resamples for the TV intervals"})
    r_max: float = field(
        default=1.0, metadata={"help": "upper bound of the PRM score (1 for a PRM in [0, 1])"}
    )
    max_draws: int | None = field(
        default=None,
        metadata={"help": "cap on target draws for the rejection sampler (null: 1000 x samples)"},
    )
    batch: int = field(default=500, metadata={"help": "problems per search call / draws per target call"})
    score_form: str = field(default="exact", metadata={"help": "SPECS score: exact | mean | reward_only"})
    temperature: float = field(default=1.0, metadata={"help": "SPECS selection temperature (1: exact form)"})
    tau_reject: float = field(default=-math.inf, metadata={"help": "SPECS rejection threshold (-inf: none)"})
    tau_switch: float = field(default=0.7, metadata={"help": "SPECS switch back to the draft [code]"})
    start_mode: str = field(default="draft", metadata={"help": "SPECS start mode: draft | target"})
    target_select: str = field(default="argmax", metadata={"help": "SPECS target mode: argmax | soft"})
    max_steps: int = field(default=20, metadata={"help": "SPECS step limit (authors: 10-30)"})
    seed: int = field(default=0, metadata={"help": "seed of the torch.Generator"})
    plot: bool = field(default=True, metadata={"help": "write real.png"})
    out: str = field(default="runs/theory/real", metadata={"help": "output directory"})

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            method="specs",
            beta=self.beta,
            score_form=self.score_form,
            temperature=self.temperature,
            tau_reject=self.tau_reject,
            tau_switch=self.tau_switch,
            start_mode=self.start_mode,
            target_select=self.target_select,
            max_steps=self.max_steps,
        )

    def validate(self) -> None:
        if not self.beta > 0 or math.isinf(self.beta):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if not self.n or min(self.n) < 1:
            raise ValueError(f"n must be a non-empty list of integers >= 1, got {self.n}")
        if self.samples < 2 or self.bootstrap < 1 or self.batch < 1:
            raise ValueError("samples must be >= 2, bootstrap and batch >= 1")
        if self.problem < 0:
            raise ValueError(f"problem must be >= 0, got {self.problem}")
        self.search_config().validate()
        validate_backend(self)
        if self.backend == "tabular" and self.problem >= self.tabular.problems:
            raise ValueError(f"problem={self.problem} but tabular.problems={self.tabular.problems}")


def build_parts(cfg: RealConfig) -> tuple[SearchParts, Problem, dict[str, Any]]:
    """The parts and the problem, built by the run layer; for the tabular backend also the tree (``extra``), whose
    exact answer laws are reported beside the sampled ones."""
    if cfg.backend == "tabular" and cfg.tabular.tree is None and cfg.max_steps < cfg.tabular.H:
        raise SpecsError(f"max_steps must be >= the tree's horizon {cfg.tabular.H} on the tabular backend")
    task = build_task(cfg)  # data and tree errors surface here, before any model loads or a file is written
    if cfg.problem >= len(task.problems):
        raise SpecsError(f"problem={cfg.problem} but the task has {len(task.problems)} problems")
    extra = {"tree": cfg.tabular.build(cfg.problem)} if cfg.backend == "tabular" else {}
    return task.parts, task.problems[cfg.problem], extra


def exact_answer_tv(tree: Any, cfg: RealConfig) -> list[float]:
    """Tabular backend: the exact TV between SPECS's law and π* at each n (answers are the responses)."""
    from specs_rl.exact import optimal_log_law, specs_log_law, tv

    star = optimal_log_law(tree, cfg.beta)
    out = []
    for n in cfg.n:
        config = dataclasses.replace(cfg.search_config(), n=n)
        out.append(tv(star, specs_log_law(tree, config, prm=cfg.tabular.prm, prm_beta=cfg.beta).log_q))
    return out


def plot_real(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array(result["n"], dtype=np.float64)
    raw, tv, lo, hi = (np.array(result[k]) for k in ("tv", "tv_corrected", "tv_lo", "tv_hi"))
    positive = [x for x in (*raw, *hi, result["tv_floor"], *result.get("exact_tv", [])) if x > 0]
    bottom = 0.3 * min(positive) if positive else 1e-4
    fig, ax = plt.subplots(figsize=(5.5, 4))
    shown = np.maximum(tv, bottom)  # a bias-corrected 0 is drawn at the bottom edge
    ax.errorbar(ns, shown, yerr=[shown - np.maximum(lo, bottom), np.maximum(hi - shown, 0)], marker="o", ms=3,
                capsize=3, label="SPECS vs π*: bias-corrected TV, 95% CI")  # fmt: skip
    ax.plot(ns, raw, "x", color="C0", alpha=0.5, label="plug-in TV")
    if "exact_tv" in result:
        ax.plot(ns, result["exact_tv"], "s--", ms=3, color="C1", label="exact TV (tabular)")
    ax.axhline(result["tv_floor"], color="gray", ls=":", label="sampling floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.set_xlabel("n (drafts per step)")
    ax.set_ylabel("TV of final-answer laws")
    ax.set_title(f"SPECS vs rejection-sampled π*, β = {result['beta']}, {result['samples']} samples")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_argv(RealConfig, sys.argv[1:] if argv is None else argv, "specs-rl theory real")
    parts, problem, extra = build_parts(cfg)  # input errors surface here, before a file is written
    generator = torch.Generator().manual_seed(cfg.seed)
    result = real_task_check(
        parts,
        problem,
        cfg.beta,
        cfg.n,
        cfg.samples,
        generator,
        search=cfg.search_config(),
        r_max=cfg.r_max,
        bootstrap=cfg.bootstrap,
        batch=cfg.batch,
        max_draws=cfg.max_draws,
    )
    result["backend"] = cfg.backend
    result["problem"] = problem.id
    if "tree" in extra:
        result["exact_tv"] = exact_answer_tv(extra["tree"], cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "real.json", result, indent=1)
    if cfg.plot:
        plot_real(result, out / "real.png")
    head = f"{'n':>6} {'TV':>8} {'TV corr.':>8} {'95% CI':>17}"
    print(head + (f" {'exact TV':>9}" if "exact_tv" in result else ""))
    for i, n in enumerate(result["n"]):
        row = (
            f"{n:>6} {result['tv'][i]:>8.4f} {result['tv_corrected'][i]:>8.4f}"
            f" [{result['tv_lo'][i]:.4f}, {result['tv_hi'][i]:.4f}]"
        )
        if "exact_tv" in result:
            row += f" {result['exact_tv'][i]:>9.4f}"
        print(row)
    print(f"sampling floor (TV of two optimum resamples): {result['tv_floor']:.4f}")
    if result["distinct_answers"] < 2:
        print("warning: every sampled response has the same final answer; the TV says nothing here")
    print(f"wrote {out / 'real.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
