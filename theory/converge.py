"""``specs-rl theory converge``: how fast SPECS's output law approaches the KL-regularized optimum ``π*``.

    specs-rl theory converge --beta 2.0 --n 1,2,4,8,16,32,64,128,256,512,1024 --out runs/theory/converge
    specs-rl theory converge --tree tree.json --beta 2.0 --n 1,2,4,8 --variants specs,specs_no_target --out DIR
    python -m theory.converge K=6 H=4 tree_seed=3 variants=specs,threshold tau_reject=0.5 samples=0 out=DIR

The tree is the ``tabular:`` section every recipe shares (:class:`specs_rl.tree.TreeConfig`; its keys may be given
at the top level: ``K``, ``H``, ``concentration``, ``coverage``, ``draft_noise``, ``tree_seed``, ``tree``, ``prm``);
the search settings are the ``search:`` section every recipe shares (:class:`specs_rl.settings.SearchConfig`; its
keys too may be given at the top level: ``beta``, ``temperature``, ``tau_reject``, ``tau_switch``, ``start_mode``,
``target_select``, ``rsd_delta``); ``seed`` is the seed of the searches, as in every recipe.

On a tabular tree (a file in the project's tree schema, or a seeded random tree) it computes, for every variant and
every ``n`` on the grid, the exact law ``q_n`` of the response SPECS returns (:func:`specs_rl.exact.specs_log_law`)
and its distance to ``π* ∝ π_t e^{β r}``: ``KL(π*||q)``, ``KL(q||π*)``, TV, and the expected-reward gap
``E_{π*}[r] - E_q[r]``. Then it runs the real search function :func:`specs_rl.search.specs` on the tabular backend
and tests its answer frequencies against the exact law (chi-square).

Writes into ``out``: ``converge.json`` (curves, slopes, the exact laws, the empirical check), ``converge.png``
(KL and TV against n on log-log axes, one line per variant, 1/n reference) and the resolved ``config.yaml``.

Variants (theory/README.md §2), named by the method presets (:mod:`specs_rl.methods`) where one exists; the names used
before (``exact``, ``code``, ``no_target``, ``gsi_threshold``, ``code_temperature``) are accepted with a notice
(:mod:`theory.names`). At the theorem's settings (draft mode throughout, no rejection, fixed n):

- ``specs``: this project's exact form (sum of the log ratio + β r, T = 1): the process of the convergence theorem;
- ``specs_no_target``: the reward-only score of the ``specs_no_target`` ablation;
- ``specs_paper_form``: the per-token mean score of ``specs_paper`` at selection temperature ``temperature``.

Theory-only variants: ``poisson`` (``specs`` with Poisson(n) drafts), ``argmax`` (``specs`` at T = 0), ``threshold``
(``specs`` with ``tau_reject``, deferral to target mode and the ``tau_switch`` mode switch, ``start_mode``,
``target_select``). The other method presets (pinned values as they are, own settings from this config):

- ``specs_paper``: the authors' whole method at ``temperature``, ``tau_reject``, ``tau_switch`` (start in target
  mode, argmax target step);
- ``gsi``: GSI at threshold ``tau_reject`` (select-then-test, soft best-of-n fallback, no switching);
  ``tau_reject=-inf`` is SIR of the tilted target, the law of ``specs``;
- ``gsi_filter``: GSI's fallback and threshold with this project's filter-then-select instead (the ``specs``
  preset, start in draft mode, soft target step, ``tau_switch = -inf``): isolates the acceptance rule;
- ``rsd_bon``: GSI's "RSD adapted to best-of-n" at ``rsd_delta``.

For every variant it also computes the n -> ∞ law ``q_∞`` (:func:`specs_rl.exact.limit_log_law`), its distance to
``π*`` and ``TV(q_n, q_∞)``: what each variant converges to, measured.
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

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, save_config
from specs_rl.errors import SpecsError
from specs_rl.exact import (
    asymptotic_law,
    expected,
    kl,
    limit_log_law,
    optimal_log_law,
    specs_log_law,
    stays_in_draft,
    tv,
)
from specs_rl.methods import preset
from specs_rl.progress import progress_bar
from specs_rl.run.records import write_json
from specs_rl.settings import SearchConfig
from specs_rl.tree import TabularTree, TreeConfig
from theory.names import renamed_argv, variant_names

DEFAULT_VARIANTS = ("specs", "poisson", "specs_paper_form", "specs_no_target", "argmax", "threshold")
PRESET_VARIANTS = ("specs_paper", "gsi", "gsi_filter", "rsd_bon")
VARIANTS = (*DEFAULT_VARIANTS, *PRESET_VARIANTS)
DEFAULT_N = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
MAX_SEQUENCES = 100_000  # K**H above this makes the written laws unreasonably large


@dataclass
class ConvergeConfig:
    """``specs-rl theory converge``. Defaults chosen here unless a help text says otherwise."""

    tabular: TreeConfig = field(
        default_factory=lambda: TreeConfig(H=3, concentration=1.0),
        metadata={"help": "the tree: a file or a seeded random tree, and its PRM", "flat": True},
    )
    search: SearchConfig = field(
        default_factory=lambda: SearchConfig(
            beta=2.0,
            temperature=0.3,
            tau_reject=0.5,
            tau_switch=0.7,
            start_mode="draft",
            target_select="argmax",
            rsd_delta=0.7,
        ),
        metadata={
            "help": "the search settings the variants draw on (each variant pins its own, see the module's "
            "docstring; n is the grid's, max_steps the tree's horizon): beta, the tilt β of the objective and of "
            "the score; temperature, 'specs_paper_form' and 'specs_paper' selection temperature (authors' code: "
            "0.2-0.3); tau_reject, 'threshold', 'specs_paper', 'gsi', 'gsi_filter' threshold (chosen here for "
            "β=2; gsi: the chosen draft is kept iff its score > tau_reject, -inf is SIR, the law of 'specs'); "
            "tau_switch, 'threshold', 'specs_paper' back to the draft above this reward [code]; start_mode and "
            "target_select, 'threshold' variant; rsd_delta, 'rsd_bon' variant (GSI's code: 0.7)",
            "flat": True,
        },
    )
    n: list[int] = field(default_factory=lambda: list(DEFAULT_N), metadata={"help": "grid of n"})
    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS), metadata={"help": f"of {VARIANTS}"}
    )
    empirical_variant: str = field(
        default="specs", metadata={"help": "variant run through specs_rl.search.specs (not poisson)"}
    )
    empirical_n: int = field(default=8, metadata={"help": "n of the empirical check"})
    samples: int = field(default=20000, metadata={"help": "searches in the empirical check (0: skip it)"})
    batch: int = field(default=2000, metadata={"help": "problems per call of the search"})
    seed: int = field(default=0, metadata={"help": "seed of the search's torch.Generator"})
    plot: bool = field(default=True, metadata={"help": "write converge.png"})
    out: str = field(default="runs/theory/converge", metadata={"help": "output directory"})

    def __post_init__(self) -> None:
        self.variants = variant_names(self.variants, "theory converge")
        (self.empirical_variant,) = variant_names([self.empirical_variant], "theory converge")

    def validate(self) -> None:
        if not self.n or any(k < 1 for k in self.n):
            raise ValueError(f"n must be a non-empty list of integers >= 1, got {self.n}")
        if not self.variants:
            raise ValueError("variants must name at least one variant")
        twice = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if twice:
            raise ValueError(f"variants names {twice[0]!r} twice (an old name counts as its new one)")
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        s = self.search
        if not s.beta > 0 or math.isinf(s.beta):
            raise ValueError(f"beta must be a finite number > 0, got {s.beta}")
        self.tabular.validate()
        if not s.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {s.temperature}")
        if s.target_select not in ("argmax", "soft"):
            raise ValueError(f"target_select must be argmax or soft, got {s.target_select!r}")
        if s.start_mode not in ("draft", "target"):
            raise ValueError(f"start_mode must be draft or target, got {s.start_mode!r}")
        for name in ("tau_reject", "tau_switch", "rsd_delta"):
            if math.isnan(getattr(s, name)):
                raise ValueError(f"{name} must be a number, not nan")
        if self.empirical_variant not in VARIANTS:
            raise ValueError(
                f"unknown empirical_variant {self.empirical_variant!r}; known: {', '.join(VARIANTS)}"
            )
        if self.empirical_variant == "poisson" and self.samples > 0:
            raise ValueError(
                "empirical_variant=poisson: the search draws a fixed n; pick another or samples=0"
            )
        if self.empirical_n < 1 or self.samples < 0 or self.batch < 1:
            raise ValueError("empirical_n and batch must be >= 1 and samples >= 0")


def variant_config(name: str, n: int, cfg: ConvergeConfig, horizon: int) -> tuple[SearchConfig, str]:
    """The :class:`SearchConfig` of a variant at ``n`` and its draw law (``fixed`` | ``poisson``). Each variant
    takes from ``cfg.search`` only the settings it names (the module's docstring), so the others stay at the
    values that define it."""
    s = cfg.search
    if name in PRESET_VARIANTS:
        own: dict[str, Any] = {
            "specs_paper": {
                "temperature": s.temperature,
                "tau_reject": s.tau_reject,
                "tau_switch": s.tau_switch,
            },
            "gsi": {"tau_reject": s.tau_reject},
            "gsi_filter": {
                "start_mode": "draft",
                "tau_reject": s.tau_reject,
                "target_select": "soft",
                "tau_switch": -math.inf,
            },
            "rsd_bon": {"rsd_delta": s.rsd_delta},
        }[name]
        base = SearchConfig(n=n, beta=s.beta, max_steps=horizon)
        return preset(base, "specs" if name == "gsi_filter" else name, own), "fixed"
    # the theorem's settings: the specs strategy (SearchConfig's default) in draft mode throughout, no rejection
    base = SearchConfig(
        n=n,
        beta=s.beta,
        temperature=1.0,
        score_form="exact",
        tau_reject=-math.inf,
        tau_switch=s.tau_switch,
        start_mode="draft",
        target_select=s.target_select,
        max_steps=horizon,
    )
    changes: dict[str, Any] = {
        "specs": {},
        "poisson": {},
        "specs_paper_form": {"score_form": "mean", "temperature": s.temperature},
        "specs_no_target": {"score_form": "reward_only"},
        "argmax": {"temperature": 0.0},
        "threshold": {"tau_reject": s.tau_reject, "start_mode": s.start_mode},
    }[name]
    return dataclasses.replace(base, **changes), "poisson" if name == "poisson" else "fixed"


def fit_slope(ns: Sequence[int], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` on ``log n`` over the larger half of the grid (``ceil(len/2)`` points);
    ``None`` with fewer than 2 usable (finite, positive) points."""
    pairs = sorted(zip(ns, ys))
    half = pairs[len(pairs) // 2 :] if len(pairs) > 1 else pairs
    pts = [(math.log(a), math.log(b)) for a, b in half if b is not None and math.isfinite(b) and b > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def build_tree(cfg: ConvergeConfig) -> TabularTree:
    """The tree of ``cfg.tabular`` (random tree ``tree_seed``, or the file), if its laws are small enough to write."""
    tree = cfg.tabular.build()
    if tree.K**tree.horizon > MAX_SEQUENCES:
        raise SpecsError(f"K**H = {tree.K**tree.horizon} responses is too many (at most {MAX_SEQUENCES})")
    return tree


def asymptotics(
    tree: TabularTree, cfg: ConvergeConfig, name: str, star: np.ndarray
) -> dict[str, float] | None:
    """For the variants that never leave draft mode, with T > 0: the n -> ∞ limit ``q_∞`` and the predicted
    constants of ``TV(q_n, q_∞) ≈ tv_coef / n`` and ``KL(q_∞ || q_n) ≈ kl_coef / n²``
    (:func:`specs_rl.exact.asymptotic_law`); ``limit_tv`` / ``limit_kl_star`` are ``q_∞``'s distance to π* (0 when
    the variant converges to π*)."""
    config, _ = variant_config(name, 1, cfg, tree.horizon)
    if not stays_in_draft(config) or config.temperature == 0:
        return None
    log_lim, c = asymptotic_law(tree, config, prm=cfg.tabular.prm, prm_beta=cfg.search.beta)
    lim = np.exp(log_lim)
    return {
        "tv_coef": 0.5 * float(lim @ np.abs(c)),
        "kl_coef": 0.5 * float(lim @ c**2),
        "limit_tv": tv(star, log_lim),
        "limit_kl_star": kl(star, log_lim),
    }


def limit_summary(tree: TabularTree, cfg: ConvergeConfig, name: str, star: np.ndarray) -> dict[str, Any]:
    """What a variant converges to: the n -> ∞ law ``q_∞`` (:func:`specs_rl.exact.limit_log_law`) and its distance
    to π* (TV, KL both ways), with its deferral rate and target-step fraction. ``log_q`` is ``q_∞`` itself."""
    config, _ = variant_config(name, 1, cfg, tree.horizon)
    law = limit_log_law(tree, config, prm=cfg.tabular.prm, prm_beta=cfg.search.beta)
    return {
        "tv": tv(star, law.log_q),
        "kl_star_q": kl(star, law.log_q),
        "kl_q_star": kl(law.log_q, star),
        "defer_rate": law.defer_rate,
        "target_fraction": law.target_fraction,
        "log_q": law.log_q,
    }


def convergence_curves(tree: TabularTree, cfg: ConvergeConfig) -> dict[str, Any]:
    """Exact curves for every variant and n: ``{"variants": {...}, "law": {...}, "optimum": {...}}``."""
    star = optimal_log_law(tree, cfg.search.beta)  # [K**H]
    keys = tree.sequences()
    r_star = expected(star, tree.reward)
    variants: dict[str, Any] = {}
    laws: dict[str, Any] = {}
    for name in cfg.variants:
        curve: dict[str, list[float]] = {
            k: []
            for k in (
                "kl_star_q",
                "kl_q_star",
                "tv",
                "reward_gap",
                "defer_rate",
                "target_fraction",
                "tv_to_limit",
            )
        }
        limit = limit_summary(tree, cfg, name, star)
        laws[name] = {}
        for n in cfg.n:
            config, draws = variant_config(name, n, cfg, tree.horizon)
            law = specs_log_law(tree, config, prm=cfg.tabular.prm, prm_beta=cfg.search.beta, draws=draws)
            curve["kl_star_q"].append(kl(star, law.log_q))
            curve["kl_q_star"].append(kl(law.log_q, star))
            curve["tv"].append(tv(star, law.log_q))
            curve["reward_gap"].append(r_star - expected(law.log_q, tree.reward))
            curve["defer_rate"].append(law.defer_rate)
            curve["target_fraction"].append(law.target_fraction)
            curve["tv_to_limit"].append(tv(law.log_q, limit["log_q"]))
            laws[name][str(n)] = dict(zip(keys, np.exp(law.log_q).tolist()))
        variants[name] = {
            **curve,
            "slope": fit_slope(cfg.n, curve["kl_star_q"]),
            "tv_slope": fit_slope(cfg.n, curve["tv"]),
            "asymptotics": asymptotics(tree, cfg, name, star),
            "limit": {k: v for k, v in limit.items() if k != "log_q"},
        }
    return {"variants": variants, "law": laws, "optimum": dict(zip(keys, np.exp(star).tolist()))}


def chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson chi-square p-value of ``counts`` against ``probs``, cells with expected count < ``min_expected``
    merged (smallest first) into one pooled cell; returns ``(p_value, cells)``."""
    from scipy.stats import chisquare

    total = counts.sum()
    exp = probs / probs.sum() * total
    order = np.argsort(exp)
    small: list[int] = []
    acc = 0.0
    for i in order:
        if exp[i] >= min_expected and (not small or acc >= min_expected):
            break
        small.append(int(i))
        acc += exp[i]
    big = np.setdiff1d(np.arange(len(exp)), small)
    obs_cells = [counts[big]]
    exp_cells = [exp[big]]
    if small:
        obs_cells.append([counts[small].sum()])
        exp_cells.append([exp[small].sum()])
    f_obs, f_exp = np.concatenate(obs_cells), np.concatenate(exp_cells)
    keep = f_exp > 0
    if keep.sum() < 2:
        return 1.0, int(keep.sum())
    f_exp = f_exp[keep] * f_obs[keep].sum() / f_exp[keep].sum()
    return float(chisquare(f_obs[keep], f_exp).pvalue), int(keep.sum())


def empirical_check(tree: TabularTree, cfg: ConvergeConfig) -> dict[str, Any]:
    """Run :func:`specs_rl.search.specs` ``samples`` times on the tabular backend and test it against the law."""
    import torch

    from specs_rl.search import specs
    from specs_rl.tabular import TabularBackend
    from specs_rl.types import Problem

    config, draws = variant_config(cfg.empirical_variant, cfg.empirical_n, cfg, tree.horizon)
    law = specs_log_law(tree, config, prm=cfg.tabular.prm, prm_beta=cfg.search.beta, draws=draws)
    backend = TabularBackend({"t": tree}, beta=cfg.search.beta, prm=cfg.tabular.prm)
    parts = backend.parts()
    generator = torch.Generator().manual_seed(cfg.seed)
    counts: Counter[str] = Counter()
    deferrals = 0
    t0 = time.perf_counter()
    with progress_bar(cfg.samples, desc="empirical check", unit="search") as bar:
        for start in range(0, cfg.samples, cfg.batch):
            size = min(cfg.batch, cfg.samples - start)
            problems = [Problem(id=str(start + i), prompt="", meta={"tree": "t"}) for i in range(size)]
            for res in specs(problems, config, parts, generator):
                counts[res.answer] += 1
                deferrals += res.deferrals
            bar.update(size)
    keys = tree.sequences()
    obs = np.array([counts.get(k, 0) for k in keys], dtype=np.float64)
    if sum(counts.values()) != obs.sum():
        raise RuntimeError("the search returned answers that are not complete responses of the tree")
    p_value, cells = chi_square(obs, np.exp(law.log_q))
    return {
        "variant": cfg.empirical_variant,
        "n": cfg.empirical_n,
        "samples": cfg.samples,
        "freq": {k: c / cfg.samples for k, c in sorted(counts.items())},
        "chi2_p": p_value,
        "chi2_cells": cells,
        "tv_to_law": 0.5 * float(np.abs(obs / cfg.samples - np.exp(law.log_q)).sum()),
        "defer_rate": deferrals / (cfg.samples * tree.horizon),
        "defer_rate_exact": law.defer_rate,
        "search_s": round(time.perf_counter() - t0, 2),
    }


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """KL(π*||q_n), TV(π*, q_n) and TV(q_n, q_∞) against n, log-log, one line per variant; 1/n (and 1/n² for KL)
    through ``specs`` (or the first variant). The third panel shows each variant approaching its own limit q_∞ (values
    below 1e-12, rounding, are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array(result["n"], dtype=np.float64)
    variants = result["variants"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        (axes[0], "kl_star_q", "KL(π* || q_n)"),
        (axes[1], "tv", "TV(π*, q_n)"),
        (axes[2], "tv_to_limit", "TV(q_n, q_∞): to its own limit"),
    )
    for ax, key, label in panels:
        for name, curve in variants.items():
            ys = np.array([np.nan if y is None else y for y in curve[key]], dtype=np.float64)
            ok = np.isfinite(ys) & (ys > 1e-12)
            if ok.any():
                ax.plot(ns[ok], ys[ok], marker="o", ms=3, label=name)
        ref = variants.get("specs", next(iter(variants.values())))[key]
        ref = np.array([np.nan if y is None else y for y in ref], dtype=np.float64)
        good = np.flatnonzero(np.isfinite(ref) & (ref > 1e-12))
        if len(good):
            i = good[len(good) // 2]
            ax.plot(ns, ref[i] * ns[i] / ns, "k--", lw=0.8, label="1/n")
            if key == "kl_star_q":
                ax.plot(ns, ref[i] * (ns[i] / ns) ** 2, "k:", lw=0.8, label="1/n²")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (drafts per step)")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SPECS law vs the tilted optimum π*, β = {result['beta']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"{'variant':<16} {'n':>6} {'KL(π*||q)':>11} {'KL(q||π*)':>11} {'TV':>9} {'gap E[r]':>9} {'defer':>6}"
    ]
    for name, c in result["variants"].items():
        for i, n in enumerate(result["n"]):
            lines.append(
                f"{name:<16} {n:>6} {c['kl_star_q'][i]:>11.3e} {c['kl_q_star'][i]:>11.3e} {c['tv'][i]:>9.2e}"
                f" {c['reward_gap'][i]:>9.2e} {c['defer_rate'][i]:>6.3f}"
            )
        lines.append(f"{name:<16} slope(KL) {c['slope']}  slope(TV) {c['tv_slope']}")
        if c.get("asymptotics"):
            a = c["asymptotics"]
            lines.append(
                f"{name:<16} n->inf: TV(q_n, q_inf) ~ {a['tv_coef']:.4g}/n, KL ~ {a['kl_coef']:.4g}/n^2;"
                f" TV(q_inf, pi*) = {a['limit_tv']:.4g}"
            )
        lim = c["limit"]
        lines.append(
            f"{name:<16} limit q_inf: TV(pi*, q_inf) = {lim['tv']:.4g}, KL(pi*||q_inf) = {lim['kl_star_q']:.4g},"
            f" KL(q_inf||pi*) = {lim['kl_q_star']:.4g}, defer {lim['defer_rate']:.3f};"
            f" TV(q_n, q_inf) at n={result['n'][-1]}: {c['tv_to_limit'][-1]:.3g}"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> ConvergeConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(ConvergeConfig, renamed_argv(argv, "theory converge"), "specs-rl theory converge")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    tree = build_tree(cfg)  # every input error (TreeError) surfaces here, before a file is written
    t0 = time.perf_counter()
    curves = convergence_curves(tree, cfg)
    result: dict[str, Any] = {
        "beta": cfg.search.beta,
        "n": list(cfg.n),
        "variants": curves["variants"],
        "law": curves["law"],
        "optimum": curves["optimum"],
        "exact_s": round(time.perf_counter() - t0, 3),
    }
    if cfg.samples > 0:
        result["empirical"] = empirical_check(tree, cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "converge.json", result, indent=1)
    if cfg.plot:
        plot_curves(result, out / "converge.png")
    print(_table(result))
    if "empirical" in result:
        e = result["empirical"]
        print(f"empirical: {e['variant']} n={e['n']} samples={e['samples']} chi2_p={e['chi2_p']:.3g}")
    print(f"wrote {out / 'converge.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
