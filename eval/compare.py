"""``specs-rl compare``: several methods over one task, an n grid and several seeds, in one resumable run.

    specs-rl compare --config configs/eval/tiny.yaml out=runs/tiny
    specs-rl compare --config configs/eval/math500_qwen25.yaml data.shard=0/4 out=runs/math500-0of4

The task (data and models) is built once; then every method x n x seed searches every problem of the slice.
Writes into ``out``:

- ``results.jsonl``: one record per (method, n, seed, problem), appended and fsynced as each problem finishes, so
  a kill loses at most the problem in flight; rerunning the same command skips what is there (a corrupt last line
  is dropped with a warning); a directory holding a run of another config is refused;
- ``summary.json``: ``{"rows": [one per method, n, seed], "aggregate": [one per method, n, over seeds],
  "grader": {"name", "version"}, "plot": {...}, ...}``, and the same table printed;
- ``accuracy_latency.png``: accuracy against mean latency per problem, one point per method and n (averaged over
  seeds), the Pareto front drawn;
- ``config.yaml`` / ``config.json`` (the resolved config), and a W&B run (offline unless the user logged in):
  config, per-problem table, summary metrics, the plot.

With ``batch_size`` > 1, problems advance in lockstep and each is charged the whole time of every batched call;
a batch's generator is seeded from its first problem, so a resumed run may batch (and sample) differently.

Methods whose strategy draws one sample per step (``target_only``, ``draft_only``, ``rsd``) do not depend on n:
they run once per seed and their rows have ``"n": null``. Each problem's search gets its own generator, seeded from
(seed, problem id), so a resumed or sharded run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import specs_rl
from specs_rl.cli import entry_point
from specs_rl.config import ConfigError, config_from_argv, to_dict
from specs_rl.errors import SpecsError
from specs_rl.methods import METHOD_PRESETS, preset, uses_n
from specs_rl.runner import (
    ResultsWriter,
    RunConfig,
    Task,
    build_task,
    check_run_dir,
    prepare_run_dir,
    search_task,
    summarize,
    write_json,
)
from specs_rl.search import SearchConfig
from specs_rl.types import STAGES

# Keys that change how a run is shown (or warmed up), not what it computes: they may differ when a run is resumed
# or merged.
PRESENTATION_KEYS = ("out", "progress", "wandb", "project", "wandb_dir", "plot", "warmup", "order")


ORDERS = ("method", "problem")
# latency statistic -> its ratio to beam search with the target at the same n, in the aggregate rows
LATENCY_RATIOS = {
    "latency_mean_s": "latency_vs_beam_search_target",
    "latency_p50_s": "latency_p50_vs_beam_search_target",
}


@dataclass
class CompareConfig(RunConfig):
    """``specs-rl compare``: the task and algorithm settings of ``specs-rl search`` plus the grid to run.

    ``method``, ``n`` and ``seed`` are set per run from ``methods``, ``n_grid`` and ``seeds``."""

    # set per run from methods / n_grid / seeds (declared again only to say so in --help)
    method: str = field(default="specs", metadata={"help": "not used by compare: see methods"})
    n: int = field(default=4, metadata={"help": "not used by compare: see n_grid"})
    seed: int = field(default=0, metadata={"help": "not used by compare: see seeds"})
    methods: list[str] = field(
        default_factory=lambda: [
            "specs",
            "beam_search_target",
            "beam_search_draft",
            "target_only",
            "draft_only",
        ],
        metadata={"help": f"method presets to run, from: {', '.join(METHOD_PRESETS)}"},
    )
    n_grid: list[int] = field(
        default_factory=lambda: [4, 8, 16], metadata={"help": "values of n (paper: 4, 8, 16)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [42, 43, 45], metadata={"help": "seeds (authors: 42, 43, 45)"}
    )
    out: str = field(default="runs/compare", metadata={"help": "output directory"})
    wandb: bool = field(default=True, metadata={"help": "log to W&B (offline unless logged in)"})
    project: str = field(default="specs-rl", metadata={"help": "W&B project"})
    wandb_dir: str | None = field(default=None, metadata={"help": "where W&B writes its files (null: out)"})
    progress: bool = field(default=True, metadata={"help": "progress bar with ETA on stderr"})
    plot: bool = field(default=True, metadata={"help": "write accuracy_latency.png"})
    warmup: int = field(
        default=1,
        metadata={
            "help": "problems each method searches, unrecorded, before the timed grid, so the first method does "
            "not pay the models' warm-up (not on the tabular backend, whose clock is simulated)"
        },
    )

    order: str = field(
        default="method",
        metadata={
            "help": "method: each run searches all its problems in turn; problem: every run searches a batch of "
            "problems before the next batch, so a slow spell of a shared machine hits every method alike "
            "(results are the same either way: seeds are per problem)"
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name, values in (("methods", self.methods), ("n_grid", self.n_grid), ("seeds", self.seeds)):
            if not values:
                raise ValueError(f"{name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        unknown = [m for m in self.methods if m not in METHOD_PRESETS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} in methods; known: {', '.join(METHOD_PRESETS)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        bad = [n for n in self.n_grid if n < 1]
        if bad:
            raise ValueError(f"n_grid values must be >= 1, got {bad[0]}")


@dataclass(frozen=True)
class PlannedRun:
    """One (method, n, seed) of the grid with its resolved search settings; ``n`` is None for n-free methods."""

    method: str
    n: int | None
    seed: int
    config: SearchConfig

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, str(self.n), str(self.seed))  # as runner's ResultsWriter.done spells it

    @property
    def label(self) -> str:
        return f"{self.method}" + (f" n={self.n}" if self.n is not None else "") + f" seed={self.seed}"


def plan_runs(cfg: CompareConfig) -> list[PlannedRun]:
    """Every (method, n, seed) with its validated settings, before anything is loaded (a bad combination, such as
    a beam width that does not divide n, is a ConfigError here)."""
    runs = []
    for name in cfg.methods:
        grid: list[int | None] = list(cfg.n_grid) if uses_n(name) else [None]
        for n in grid:
            for seed in cfg.seeds:
                # n goes into the base first: presets derive settings (beam_width = n) from the base's n
                base = dataclasses.replace(cfg, n=n if n is not None else min(cfg.n_grid), seed=seed)
                try:
                    run_cfg = preset(base, name)
                except SpecsError as e:
                    raise ConfigError(str(e)) from None
                search_cfg = SearchConfig(
                    **{f.name: getattr(run_cfg, f.name) for f in dataclasses.fields(SearchConfig)}
                )
                runs.append(PlannedRun(name, n, seed, search_cfg))
    return runs


def grader_of(task: Task) -> dict[str, str]:
    """Name and version of what decides ``correct`` in this task's records."""
    info = getattr(task, "grader_info", None)
    if isinstance(info, dict):
        return {"name": str(info.get("name")), "version": str(info.get("version"))}
    if task.name == "tabular":
        return {"name": "tabular-true-reward>=0.5", "version": specs_rl.__version__}
    from specs_rl.grading import grader_info

    return grader_info()


def check_extras(cfg: CompareConfig) -> None:
    """The optional packages this run will need are installed (checked before any work, not at the end)."""
    import importlib.util

    needed = [("plot", "matplotlib", "eval"), ("wandb", "wandb", "track")]
    for key, module, extra in needed:
        if getattr(cfg, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{key}=true needs the {module} package (pip install specs-rl[{extra}]) or set {key}=false"
            )


# ------------------------------------------------------------------------------------------------------------------
# The run directory


# ------------------------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A one-line progress bar with rate and ETA on stderr (redrawn in place on a terminal, a line every
    ``log_every_s`` seconds otherwise)."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        log_every_s: float = 10.0,
    ) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.t0 = time.monotonic()
        self._last = -math.inf
        self.label = ""

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        elapsed = time.monotonic() - self.t0
        new = self.done - self.start_done
        if new > 0:
            rate = elapsed / new
            eta = _duration(rate * (self.total - self.done))
            speed = f"{rate:.2f} s/problem, ETA {eta}"
        else:
            speed = "ETA --"
        return f"[{bar:<24}] {self.done}/{self.total} {frac:4.0%} {self.label} | {speed}"

    def advance(self, k: int = 1, label: str | None = None) -> None:
        self.done += k
        if label is not None:
            self.label = label
        self._draw(force=self.done >= self.total)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.1:
                self.stream.write("\r" + self.line().ljust(100)[:160])
                self.stream.flush()
                self._last = now
        elif force or now - self._last >= self.log_every_s:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


# ------------------------------------------------------------------------------------------------------------------
# Running the grid


def warm_up(task: Task, runs: Sequence[PlannedRun], problems: int) -> None:
    """Search the first ``problems`` problems once with each method (its first planned n and seed) and drop the
    results: first calls pay one-off costs (kernel selection, allocator growth, lazy imports, the grader's
    worker start) that would otherwise be charged to whichever method runs first."""
    if problems < 1:
        return
    first: dict[str, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.method, run)
    sub = dataclasses.replace(task, problems=task.problems[:problems])
    for run in first.values():
        search_task(sub, run.config, run.seed)


def run_grid(
    task: Task,
    runs: Sequence[PlannedRun],
    results_path: Path,
    *,
    batch_size: int = 1,
    grader: dict[str, str] | None = None,
    progress: bool = True,
    warmup: int = 0,
    order: str = "method",
) -> list[dict[str, Any]]:
    """Search every problem of every planned run not yet in ``results_path``; returns every record of the file.
    ``order``: ``method`` runs each planned run over all its problems in turn; ``problem`` takes the problems
    ``batch_size`` at a time through every run before the next batch (the same records, interleaved in time)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    with ResultsWriter(results_path) as writer:
        done = writer.done
        pending = {run.key: [p for p in task.problems if (*run.key, p.id) not in done] for run in runs}
        if any(pending.values()):
            warm_up(task, runs, warmup)
        total = len(runs) * len(task.problems)
        bar = Progress(total, total - sum(len(v) for v in pending.values()), enabled=progress)

        def write(record: dict[str, Any]) -> None:
            if grader is not None and "grader" not in record:  # the hf task's grade names its grader itself
                record["grader"] = dict(grader)
            writer.write(record)

        def search(run: PlannedRun, batch: list[Any]) -> None:
            extra = {"method": run.method, "strategy": run.config.method, "n": run.n, "seed": run.seed}
            sub = dataclasses.replace(task, problems=batch)
            search_task(sub, run.config, run.seed, batch_size=len(batch), on_result=write, extra=extra)
            bar.advance(len(batch), run.label)

        try:
            if order == "method":
                for run in runs:
                    todo = pending[run.key]
                    for start in range(0, len(todo), batch_size):
                        search(run, todo[start : start + batch_size])
            else:
                for start in range(0, len(task.problems), batch_size):
                    ids = {p.id for p in task.problems[start : start + batch_size]}
                    for run in runs:
                        batch = [p for p in pending[run.key] if p.id in ids]
                        if batch:
                            search(run, batch)
        finally:
            bar.close()
        return list(writer.records)


# ------------------------------------------------------------------------------------------------------------------
# Summaries, table, plot, W&B


def _run_key(r: dict[str, Any]) -> tuple[str, Any, Any]:
    return (str(r.get("method")), r.get("n"), r.get("seed"))


def summary_rows(records: Sequence[dict[str, Any]], order: Sequence[tuple[str, Any, Any]] = ()) -> list[dict]:
    """One row per (method, n, seed): ``runner.summarize`` of its records, in ``order`` first."""
    groups: dict[tuple[str, Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[_run_key(r)].append(r)
    keys = [k for k in order if k in groups] + sorted(
        (k for k in groups if k not in set(order)), key=lambda k: (k[0], str(k[1]), str(k[2]))
    )
    return [{"method": k[0], "n": k[1], "seed": k[2], **summarize(groups[k])} for k in keys]


def aggregate_rows(records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, n) over its seeds: the pooled summary, the spread of accuracy over seeds
    (``accuracy_seed_std``, the paper's ±), and the mean latency relative to beam search with the target at the
    same n (``latency_vs_beam_search_target``, < 1 is faster)."""
    pooled: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        pooled[(str(r.get("method")), r.get("n"))].append(r)
    seeds: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    order: list[tuple[str, Any]] = []
    for row in rows:
        key = (row["method"], row["n"])
        if key not in seeds:
            order.append(key)
        seeds[key].append(row)
    out = []
    for key in order:
        accs = [r["accuracy"] for r in seeds[key] if r["accuracy"] is not None]
        agg = {
            "method": key[0],
            "n": key[1],
            "seeds": [r["seed"] for r in seeds[key]],
            **summarize(pooled[key]),
            "accuracy_seed_std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None),
        }
        out.append(agg)
    for stat, ratio in LATENCY_RATIOS.items():
        ref = {a["n"]: a[stat] for a in out if a["method"] == "beam_search_target"}
        for a in out:
            base = ref.get(a["n"])
            ok = base and a["n"] is not None and base > 0 and a[stat] is not None
            a[ratio] = a[stat] / base if ok else None
    return out


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _acc(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        return "-"
    lo, hi = row["accuracy_ci"]
    return f"{row['accuracy']:.3f} [{lo:.2f},{hi:.2f}]"


def format_table(rows: Sequence[dict[str, Any]], aggregate: bool = False) -> str:
    """The summary as an aligned text table (one line per row)."""
    head = ["method", "n", "seeds" if aggregate else "seed", "problems", "accuracy [95% CI]"]
    if aggregate:
        head += ["acc std"]
    head += ["lat mean s", "p50", "p90"]
    head += [f"{s} s" for s in STAGES] + ["draft frac", "defer/pb", "tok draft", "tok target"]
    if aggregate:
        head += ["vs BS(target)"]
    lines = []
    for r in rows:
        cells = [
            r["method"],
            "-" if r["n"] is None else str(r["n"]),
            ",".join(map(str, r["seeds"])) if aggregate else str(r["seed"]),
            str(r["problems"]),
            _acc(r),
        ]
        if aggregate:
            cells.append(_fmt(r.get("accuracy_seed_std"), ".3f"))
        cells += [_fmt(r["latency_mean_s"]), _fmt(r["latency_p50_s"]), _fmt(r["latency_p90_s"])]
        cells += [_fmt(r["latency_stage_mean_s"][s]) for s in STAGES]
        cells += [
            _fmt(r["draft_step_fraction"], ".2f"),
            _fmt(r["deferrals_per_problem"], ".2f"),
            _fmt(r["tokens_mean"]["draft"], ".1f"),
            _fmt(r["tokens_mean"]["target"], ".1f"),
        ]
        if aggregate:
            ratio = r.get("latency_vs_beam_search_target")
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower latency and higher accuracy), by increasing latency.

    >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.2)])
    [3, 0, 2]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _point_label(row: dict[str, Any]) -> str:
    return row["method"] + ("" if row["n"] is None else f" n={row['n']}")


def plot_accuracy_latency(aggregate: Sequence[dict[str, Any]], path: Path, title: str = "") -> dict[str, Any]:
    """Accuracy against mean latency per problem, one point per (method, n) with its 95% interval, one line per
    method through its n grid, the Pareto front dashed. Returns ``{"path", "points", "pareto"}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [a for a in aggregate if a.get("accuracy") is not None and a["latency_mean_s"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    methods = list(dict.fromkeys(a["method"] for a in pts))
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    drawn = 0
    for m_i, m in enumerate(methods):
        mine = sorted((a for a in pts if a["method"] == m), key=lambda a: (a["n"] is None, a["n"] or 0))
        xs = [a["latency_mean_s"] for a in mine]
        ys = [a["accuracy"] for a in mine]
        lo = [max(0.0, a["accuracy"] - a["accuracy_ci"][0]) for a in mine]  # Wilson bounds may round past it
        hi = [max(0.0, a["accuracy_ci"][1] - a["accuracy"]) for a in mine]
        color = cmap(m_i % cmap.N)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=color, alpha=0.3, capsize=2)
        ax.plot(xs, ys, "-", color=color, alpha=0.5, lw=1)
        marker = "osD^vPX*h<>p"[m_i % 12]  # shapes too, so methods that coincide stay visible
        ax.scatter(
            xs, ys, color=color, marker=marker, s=40, zorder=3, label=m, alpha=0.85, edgecolors="white"
        )
        drawn += len(xs)
        for a in mine:
            if a["n"] is not None:
                ax.annotate(
                    f"n={a['n']}", (a["latency_mean_s"], a["accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points",
                )  # fmt: skip
    front = pareto_front([(a["latency_mean_s"], a["accuracy"]) for a in pts])
    if front:
        fx = [pts[i]["latency_mean_s"] for i in front]
        fy = [pts[i]["accuracy"] for i in front]
        ax.step(fx, fy, where="post", ls="--", color="black", lw=1, label="Pareto front", zorder=2)
    lats = [a["latency_mean_s"] for a in pts if a["latency_mean_s"] > 0]
    if lats and max(lats) / min(lats) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean latency per problem (s)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs latency")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"path": path.name, "points": drawn, "pareto": [_point_label(pts[i]) for i in front]}


def _wandb_metrics(rows: Sequence[dict[str, Any]], aggregate: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flat summary metrics: ``{method}/n{n}/{metric}`` over seeds and ``{method}/n{n}/seed{s}/{metric}``."""
    keys = ("accuracy", "latency_mean_s", "latency_p50_s", "latency_p90_s", "draft_step_fraction")
    out: dict[str, Any] = {}
    for a in aggregate:
        base = f"{a['method']}/n{a['n'] if a['n'] is not None else '-'}"
        for k in (*keys, "accuracy_seed_std", *LATENCY_RATIOS.values(), "problems"):
            out[f"{base}/{k}"] = a.get(k)
        if a.get("accuracy_ci"):
            out[f"{base}/accuracy_ci_lo"], out[f"{base}/accuracy_ci_hi"] = a["accuracy_ci"]
        for s in STAGES:
            out[f"{base}/latency_{s}_s"] = a["latency_stage_mean_s"][s]
    for r in rows:
        base = f"{r['method']}/n{r['n'] if r['n'] is not None else '-'}/seed{r['seed']}"
        for k in keys:
            out[f"{base}/{k}"] = r.get(k)
    return {k: v for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


PROBLEM_COLUMNS = (
    "method", "n", "seed", "id", "correct", "answer", "latency_s", "draft_step_fraction", "deferrals",
    "tokens_draft", "tokens_target", "final_score",
)  # fmt: skip


def log_wandb(
    cfg: CompareConfig,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    aggregate: Sequence[dict[str, Any]],
    plot: Path | None,
    *,
    job_type: str = "compare",
) -> dict[str, Any]:
    """One W&B run: the config, a per-problem table, the summary table and metrics, the plot."""
    from specs_rl.tracking import finish_run, init_run

    run = init_run(
        cfg.project,
        to_dict(cfg),
        name=Path(cfg.out).name,
        directory=cfg.wandb_dir or cfg.out,
        job_type=job_type,
    )
    import wandb

    table = [
        [
            r.get("method"), r.get("n"), r.get("seed"), r["id"], r.get("correct"), str(r.get("answer")),
            r["latency_s"]["total"], r.get("draft_step_fraction"), r.get("deferrals"), r["tokens"]["draft"],
            r["tokens"]["target"], r.get("final_score"),
        ]
        for r in records
    ]  # fmt: skip
    summary_cols = ["method", "n", "seeds", "problems", "accuracy", "accuracy_seed_std", "latency_mean_s"]
    summary_cols += ["latency_p50_s", "latency_p90_s", "draft_step_fraction", *LATENCY_RATIOS.values()]
    logged: dict[str, Any] = {
        "problems_table": wandb.Table(columns=list(PROBLEM_COLUMNS), data=table),
        "summary_table": wandb.Table(
            columns=summary_cols,
            data=[[json.dumps(a[c]) if c == "seeds" else a[c] for c in summary_cols] for a in aggregate],
        ),
    }
    if plot is not None and plot.exists():
        logged["accuracy_latency"] = wandb.Image(str(plot))
    run.log(logged)
    metrics = _wandb_metrics(rows, aggregate)
    for k, v in metrics.items():
        run.summary[k] = v
    run_dir = (
        None if getattr(run, "disabled", False) or not getattr(run, "dir", None) else Path(run.dir).parent
    )
    finish_run(run)
    return {"project": cfg.project, "run_dir": str(run_dir) if run_dir else None, "metrics": len(metrics)}


def report(
    out: Path,
    cfg: CompareConfig,
    records: Sequence[dict[str, Any]],
    grader: dict[str, str],
    *,
    order: Sequence[tuple[str, Any, Any]] = (),
    extra: dict[str, Any] | None = None,
    job_type: str = "compare",
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` (then the plot, then W&B, updating it after each), print the tables."""
    stream = stream if stream is not None else sys.stdout
    rows = summary_rows(records, order)
    agg = aggregate_rows(records, rows)
    summary: dict[str, Any] = {"rows": rows, "aggregate": agg, "grader": grader, **(extra or {})}
    write_json(out / "summary.json", summary)
    print(format_table(rows), file=stream)
    if len(cfg.seeds) > 1:
        print("\nover seeds:", file=stream)
        print(format_table(agg, aggregate=True), file=stream)
    if cfg.plot:
        summary["plot"] = plot_accuracy_latency(agg, out / "accuracy_latency.png", title=_title(cfg))
        write_json(out / "summary.json", summary)
        print(f"\nplot: {out / 'accuracy_latency.png'} ({summary['plot']['points']} points)", file=stream)
    if cfg.wandb:
        summary["wandb"] = log_wandb(
            cfg, records, rows, agg, out / "accuracy_latency.png" if cfg.plot else None, job_type=job_type
        )
        write_json(out / "summary.json", summary)
        if summary["wandb"]["run_dir"]:
            print(f"W&B run: {summary['wandb']['run_dir']}", file=stream)
    print(f"summary: {out / 'summary.json'}", file=stream)
    return summary


def _title(cfg: CompareConfig) -> str:
    if cfg.backend == "tabular":
        return f"tabular ({cfg.tabular.problems} problems)"
    data = cfg.data
    part = (
        f" {data.start}:{'' if data.limit is None else data.start + data.limit}"
        if data.start or data.limit
        else ""
    )
    return f"{data.dataset}{part}" + (f" shard {data.shard}" if data.shard else "")


# ------------------------------------------------------------------------------------------------------------------


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_argv(CompareConfig, sys.argv[1:] if argv is None else argv, "specs-rl compare")
    runs = plan_runs(cfg)  # every (method, n, seed) validated before anything is loaded or written
    check_extras(cfg)
    out = Path(cfg.out)
    check_run_dir(
        out, cfg, ignore=PRESENTATION_KEYS
    )  # another config's directory is refused before any model loads
    task = build_task(cfg)  # data and models, once (sharded by data.shard)
    out = prepare_run_dir(out, cfg, ignore=PRESENTATION_KEYS)
    grader = grader_of(task)
    records = run_grid(
        task,
        runs,
        out / "results.jsonl",
        batch_size=cfg.batch_size,
        grader=grader,
        progress=cfg.progress,
        warmup=0 if cfg.backend == "tabular" else cfg.warmup,
        order=cfg.order,
    )
    expected = len(runs) * len(task.problems)
    report(
        out,
        cfg,
        records,
        grader,
        order=[(r.method, r.n, r.seed) for r in runs],
        extra={
            "task": task.name,
            "problems_in_slice": len(task.problems),
            "records": len(records),
            "expected_records": expected,
            "complete": len(records) >= expected,
            "shard": cfg.data.shard,
        },
    )
    return 0


__all__ = [
    "CompareConfig",
    "PlannedRun",
    "Progress",
    "aggregate_rows",
    "format_table",
    "main",
    "pareto_front",
    "plan_runs",
    "plot_accuracy_latency",
    "warm_up",
    "report",
    "run_grid",
    "summary_rows",
]

if __name__ == "__main__":
    sys.exit(main())
