"""``specs-rl theory real``: does SPECS approach the KL-regularized optimum over final answers with real parts?

    specs-rl theory real backend=tabular K=4 H=3 tree_seed=0 beta=2.0 n=1,4,16,64 samples=2000 \\
        variants=specs,specs_no_target,specs_paper_form problems=0,1,2 out=runs/theory/real
    specs-rl theory real backend=hf hf.target.name=PATH hf.draft.name=PATH hf.prm.name=PATH \\
        data.dataset=toymath problems=0,3 variants=specs,specs_no_target,specs_paper_form n=1,2,4,8,16 \\
        samples=400 \\
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
  (:data:`theory.real_sample.VARIANTS`, named by the method presets), all on the same problems against the same
  ``π*`` sample: ``specs`` (summed log ratio, ``T = 1``: converges to ``π*``), ``specs_no_target`` (no target:
  limit ``∝ π_d e^{βr}``), ``specs_paper_form`` (per-token mean of the log ratio at the authors' selection
  ``temperature``: a different tilt). Only the score form and temperature differ between variants; the other SPECS
  settings are the run's ``search:`` section (its keys may be given flat: ``beta=2 tau_reject=0.5``). The names
  used before (``exact``, ``reward_only``, ``mean``, ``mean_temperature``) are accepted with a notice.

Everything is mapped to final answers (``parts.answer_of``) and compared in total variation, with basic bootstrap
intervals (both samples resampled; see :func:`bootstrap_tv`, which also corrects the plug-in TV's upward bias to
first order). ``tv_target_opt`` = TV(π_target, π*): how much the tilt moves the answers (when it is small, no
method can be told apart from the target). ``tv_floor`` is the mean TV between two resamples of the optimum's own
sample: the level below which differences cannot be resolved at this sample size. The pooled summary is the mean
over the chosen problems, its interval by pooled resampling: each bootstrap replicate resamples every problem's
samples and averages their TVs (the uncertainty of sampling on THESE problems, not of picking problems). On the
tabular backend the exact TVs (:mod:`specs_rl.exact`) are reported beside the sampled ones.

Writes ``real.json``, ``real.png`` and the resolved ``config.yaml`` into ``out`` (``scan=K``: ``scan.json`` only).

This file is the recipe; the work is in three modules of one job each: :mod:`theory.real_sample` (drawing the
answers), :mod:`theory.real_stats` (TVs, intervals, pooling, the exact TVs) and :mod:`theory.real_report` (the plot
and the tables).
"""

from __future__ import annotations

import math
import sys
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
from specs_rl.run import BACKENDS, build_task, with_backends, write_json
from specs_rl.run.backends import backend, validate_backend
from specs_rl.settings import SearchConfig
from specs_rl.tabular import TabularTaskConfig
from specs_rl.types import Problem
from theory.names import renamed_argv, variant_names
from theory.real_report import plot_real, print_scan, print_table
from theory.real_sample import VARIANTS, sample_answers, sample_optimum, variant_config
from theory.real_stats import answer_tvs, exact_answer_tv, pool, scan_row


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
    ``SearchParts``, for one problem: the answers drawn (:func:`theory.real_sample.sample_answers`), then their
    TVs (:func:`theory.real_stats.answer_tvs`, whose docstring lists the returned keys).

    ``variants`` maps a name to SPECS settings (score form, temperature, thresholds, start mode, max_steps); their
    ``n`` and ``beta`` are replaced by each grid value and ``beta``. Default: ``{"specs": ...}``, the exact form (sum
    form, T = 1, no rejection, draft mode throughout). Every variant is compared with the same ``π*`` sample.
    """
    if not beta > 0:
        raise SpecsError(f"beta must be > 0, got {beta}")
    if samples < 2 or not n_grid or min(n_grid) < 1:
        raise SpecsError("samples must be >= 2 and n a non-empty list of integers >= 1")
    if variants is None:
        base = SearchConfig(start_mode="draft", tau_reject=-math.inf)
        variants = {"specs": variant_config(base, "specs")}
    if not variants:
        raise SpecsError("variants must name at least one SPECS variant")
    drawn = sample_answers(
        parts,
        problem,
        beta,
        n_grid,
        samples,
        generator,
        variants,
        r_max=r_max,
        batch=batch,
        max_draws=max_draws,
    )
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    return answer_tvs(drawn, problem.id, beta, n_grid, samples, rng, bootstrap)


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
        default_factory=lambda: ["specs"],
        metadata={
            "help": f"SPECS score forms compared, any of {', '.join(VARIANTS)}: specs (T = 1, converges to π*), "
            "specs_no_target (no target), specs_paper_form (per-token mean at temperature, authors' code)"
        },
    )
    search: SearchConfig = field(
        default_factory=lambda: SearchConfig(
            beta=2.0,
            temperature=0.3,
            tau_reject=-math.inf,
            tau_switch=0.7,
            start_mode="draft",
            target_select="argmax",
            max_steps=20,
        ),  # fmt: skip
        metadata={
            "help": "the SPECS settings every variant shares (its score form, and where its preset pins one its "
            "temperature, are the variant's; n is the grid's): beta, the tilt β of the optimum and of the SPECS "
            "score; temperature, the selection temperature of specs_paper_form (authors' recipes: 0.2-0.3); "
            "tau_reject (-inf: no rejection), tau_switch [code], start_mode, target_select, max_steps (authors: "
            "10-30)",
            "flat": True,
        },
    )
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

    def __post_init__(self) -> None:
        self.variants = variant_names(self.variants, "theory real")

    @property
    def beta(self) -> float:
        """The search's β (the run layer's tabular task builds its PRM at ``cfg.beta``)."""
        return self.search.beta

    def variant_configs(self) -> dict[str, SearchConfig]:
        """Each variant's SPECS settings: the search section with the variant's score form and temperature."""
        return {v: variant_config(self.search, v) for v in self.variants}

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
        temperature = self.search.temperature
        if not temperature > 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
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
    if cfg.backend == "tabular" and cfg.tabular.tree is None and cfg.search.max_steps < cfg.tabular.H:
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


def scan_problems(
    parts: SearchParts, problems: Sequence[Problem], cfg: RealConfig, generator: torch.Generator
) -> list[dict[str, Any]]:
    """For each problem, ``cfg.samples`` draws of π_target and π* (no SPECS): TV(π_target, π*) and the spreads."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    rows = []
    for i, problem in enumerate(problems):
        opt, tgt, draws = sample_optimum(
            parts, problem, cfg.search.beta, cfg.samples, generator, r_max=cfg.r_max, batch=cfg.batch,
            max_draws=cfg.max_draws,
        )  # fmt: skip
        rows.append(scan_row(i, problem.id, opt, tgt, draws, cfg.samples, rng, cfg.bootstrap))
    return rows


def parse(argv: Sequence[str]) -> RealConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(RealConfig, renamed_argv(argv, "theory real"), "specs-rl theory real")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
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
        "temperature": cfg.search.temperature,
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
            res["exact"] = exact_answer_tv(tree, cfg.beta, cfg.n, cfg.variant_configs(), cfg.tabular.prm)
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
