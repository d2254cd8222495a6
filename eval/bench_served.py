"""``specs-rl bench backend=vllm``: SPECS through vLLM servers against the in-process Hugging Face backend, on the
toy-math world, measured in one run through the run path ``specs-rl compare`` / ``demo`` take.

    specs-rl bench backend=vllm out=runs/bench-vllm                  # starts a draft and a target server (CPU venv)
    specs-rl bench backend=vllm vllm.draft.url=http://... vllm.target.url=http://...   # servers already running

Both backends are built from the same run config (``configs/demo/toymath_short.yaml``, as ``specs-rl demo`` reads
it) by the run layer's task builder, with compare's defaults: the core layout of a served run (the servers pinned where
:mod:`specs_rl.vllm.layout` puts them, the in-process PRM at the layout's torch threads, ``vllm.client_threads``
overrides it), torch's own thread count for the in-process backend, SPECS at ``n`` with the config's settings, one
problem at a time, the world's own PRM in-process in both (vLLM cannot serve a token-label Llama PRM). So its
served per-problem figure is the SPECS ``lat mean s`` that ``specs-rl demo backend=vllm data.limit=<problems>``
prints (SPECS at the demo's n = 8; ``n=4 config=configs/demo/toymath.yaml`` is the full demo's SPECS at n = 4). The
figures:

- **latency**: SPECS per problem (the search's own ledger total, as compare records it) of each backend, the
  backends taking turns problem by problem (the order rotating) so a change of the machine's load hits both; per
  repeat (seed ``seed + r``, as the demo's seeds) the mean over ``problems`` problems; reported as the median and
  range over ``repeats``, with the per-stage split (draft, target scoring, target generation, PRM, judge, and the
  rest: the client and the search itself) beside it;
- **throughput**: problems per second through vLLM with 1, 8 and 32 problems in flight (``batch_size``: the problems
  of a batch search in lockstep and every call issues one request per problem, all on the wire together), each over
  ``throughput_problems`` problems per repeat;
- **client share**: the share of a run's wall time that is neither waiting on a server nor running the in-process
  PRM (request building, JSON parsing, thread hand-offs, the search itself), ``1 - busy / wall``, where ``busy`` is
  the union of the intervals in which a request is in flight or the PRM runs (:class:`specs_rl.vllm.client.
  BusyMeter`). Goal: at most 0.05. On a loaded machine this also holds the time the OS takes to run a thread that a
  reply woke; beside it, the **client CPU share**: the client process's CPU seconds outside the in-process PRM over
  the wall time.

The two backends share this process: before each in-process problem torch gets its own thread count back, and the
served PRM sets the layout's at its first call of the problem (one change of count, well under a millisecond).
Writes ``bench.json`` (figures, every raw timing, the settings, the layout, the machine) into ``out`` and prints a
table.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, load_config, to_dict
from specs_rl.interfaces import Task
from specs_rl.methods import own_settings
from specs_rl.run import CompareConfig, PlannedRun, build_task, search_task, summarize, warm_up
from specs_rl.run.backends import threads_restored
from specs_rl.run.grid import plan_run
from specs_rl.types import STAGES
from specs_rl.vllm.config import VLLMConfig

REPO = Path(__file__).resolve().parents[1]
SPLIT = (
    *[s for s in STAGES if s != "verify"],
    "other",
)  # the per-stage split; verify = target_score + reward


@dataclass
class BenchServedConfig:
    backend: Literal["vllm"] = field(
        default="vllm", metadata={"help": "vllm: this benchmark; hf: eval/bench_loop.py (its own keys)"}
    )
    out: str = field(default="runs/bench-vllm", metadata={"help": "directory for bench.json"})
    config: str = field(
        default=str(REPO / "configs" / "demo" / "toymath_short.yaml"),
        metadata={
            "help": "the run config whose world, models and SPECS settings are measured (specs-rl demo's; the demo "
            "configs are read as specs-rl demo reads them)"
        },
    )
    n: int = field(
        default=0,
        metadata={
            "help": "candidates per step; 0 = SPECS' n in the config (method_n.specs, else n_grid's first)"
        },
    )
    repeats: int = field(
        default=3,
        metadata={"help": "repeats (seeds seed, seed+1, ...) of every measurement; figures are medians"},
    )
    problems: int = field(default=20, metadata={"help": "latency: problems per repeat and backend"})
    throughput_problems: int = field(
        default=32,
        metadata={"help": "throughput: problems per repeat and level (a multiple of each level helps)"},
    )
    in_flight: list[int] = field(
        default_factory=lambda: [1, 8, 32],
        metadata={"help": "throughput: problems in flight (issue: 1, 8, 32)"},
    )
    warmup: int = field(
        default=1, metadata={"help": "problems each backend searches, unrecorded, first (compare's warmup)"}
    )
    seed: int = field(
        default=0,
        metadata={"help": "seed of the first repeat (per problem, as compare seeds them; the demo's 0)"},
    )
    vllm: VLLMConfig = field(
        default_factory=VLLMConfig,
        metadata={
            "help": "the servers (url null: started for the bench from the vLLM venv and stopped after) and the "
            "core layout (cpu_threads_bind, client_threads), as a run's vllm: section"
        },
    )

    def validate(self) -> None:
        for name in ("repeats", "problems", "throughput_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.in_flight or min(self.in_flight) < 1:
            raise ValueError(f"in_flight must be a non-empty list of integers >= 1, got {self.in_flight}")
        if self.warmup < 0 or self.n < 0:
            raise ValueError(f"warmup and n must be >= 0, got {self.warmup} and {self.n}")
        self.vllm.validate()


def world(cfg: BenchServedConfig) -> tuple[Any, Any, list[PlannedRun]]:
    """The run configs of both backends (the config's run, for the demo config as ``specs-rl demo`` reads it, with
    enough of its problems; the served one with this bench's ``vllm:`` section) and the planned SPECS runs at ``n``,
    one per repeat, as compare plans them."""
    from eval.demo import SHORT_CONFIG, TOYMATH_CONFIG, demo_config

    path = Path(cfg.config).resolve()
    if path == SHORT_CONFIG.resolve():
        compare = demo_config([])
    elif path == TOYMATH_CONFIG.resolve():
        compare = demo_config(["full"])
    else:
        compare = load_config(CompareConfig, cfg.config)
    run = compare.run
    need = max(cfg.problems, cfg.warmup, cfg.throughput_problems)
    toy = dataclasses.replace(run.data.toymath, problems=max(need, run.data.toymath.problems))
    data = dataclasses.replace(run.data, start=run.data.start, limit=need, toymath=toy, shard=None)
    hf_run = dataclasses.replace(run, backend="hf", data=data)
    served_run = dataclasses.replace(run, backend="vllm", data=data, vllm=cfg.vllm)
    own = own_settings("specs", compare.grid.method_settings)
    n = cfg.n or compare.grid.n_values("specs")[0]
    planned = [plan_run(run.search, "specs", n, cfg.seed + r, own, n_free=n) for r in range(cfg.repeats)]
    return hf_run, served_run, planned


def split(summary: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per problem in each stage of :data:`SPLIT`; ``other`` is the rest of the problem's wall time
    (the client, the search itself, thread hand-offs). The stages add up when target scoring and the PRM run in
    turn (``concurrent_scoring`` false, the default); run concurrently they overlap and ``other`` is 0."""
    stages = summary["latency_stage_mean_s"]
    out = {s: stages[s] for s in SPLIT if s != "other"}
    out["other"] = max(0.0, summary["latency_mean_s"] - sum(out.values()))
    return out


def bench_latency(tasks: dict[str, Task], planned: list[PlannedRun], cfg: BenchServedConfig) -> dict:
    """Per-problem SPECS latency of each backend through :func:`specs_rl.run.search_task`, taking turns problem by
    problem; one repeat per planned run (seed)."""
    default_threads = torch.get_num_threads()  # the in-process backend's, as compare leaves it
    records: dict[tuple[str, int], list[dict]] = {(b, r.seed): [] for b in tasks for r in planned}
    problems = tasks["hf"].problems[: cfg.problems]
    for i, p in enumerate(problems):
        for k, run in enumerate(planned):
            order = list(tasks) if (i + k) % 2 == 0 else list(reversed(tasks))
            for name in order:
                if name == "hf":
                    torch.set_num_threads(default_threads)
                sub = dataclasses.replace(tasks[name], problems=[p])
                records[(name, run.seed)] += search_task(sub, run.config, run.seed)
    runs = []
    for run in planned:
        sums = {b: summarize(records[(b, run.seed)]) for b in tasks}
        runs.append(
            {
                "seed": run.seed,
                "mean_s": {b: s["latency_mean_s"] for b, s in sums.items()},
                "median_s": {b: s["latency_p50_s"] for b, s in sums.items()},
                "split_s": {b: split(s) for b, s in sums.items()},
                "accuracy": {b: s["accuracy"] for b, s in sums.items()},
                "per_problem_s": {
                    b: [r["latency_s"]["total"] for r in records[(b, run.seed)]] for b in tasks
                },
            }
        )
    ratio = [x["mean_s"]["vllm"] / x["mean_s"]["hf"] for x in runs]
    return {"runs": runs, "vllm_over_hf": ratio, "problems": len(problems)}


def bench_throughput(task: Task, planned: list[PlannedRun], cfg: BenchServedConfig) -> dict:
    """Problems per second through vLLM with ``k`` problems in flight, and the client's share of the wall time."""
    meter, prm = task.served.client.meter, task.parts.prm
    problems = task.problems[: cfg.throughput_problems]
    levels = []
    for k in cfg.in_flight:
        runs = []
        for run in planned:
            meter.reset()
            prm_cpu0 = prm.stats.get("cpu_s", 0.0)
            t0, c0 = time.perf_counter(), time.process_time()
            search_task(dataclasses.replace(task, problems=problems), run.config, run.seed, batch_size=k)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            busy = meter.busy_s
            prm_cpu = prm.stats.get("cpu_s", 0.0) - prm_cpu0
            runs.append(
                {
                    "wall_s": wall,
                    "busy_s": busy,
                    "problems_per_s": len(problems) / wall,
                    "client_share": max(0.0, 1.0 - busy / wall),
                    "client_cpu_s": cpu - prm_cpu,
                    "client_cpu_share": (cpu - prm_cpu) / wall,
                    "peak_requests_in_flight": meter.peak,
                }
            )
        levels.append({"in_flight": k, "runs": runs})
    return {"levels": levels, "problems": len(problems)}


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    from eval.bench_loop import machine as hf_machine

    return hf_machine()


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    fig = report["figures"]
    k = report["settings"]["repeats"]
    lines = [
        f"machine: {m['cpu']} | {m['cores']} cores | load {m.get('load_avg_1m', float('nan')):.1f} -> "
        f"{report['load_avg_1m_end']:.1f} | vLLM servers: {report['servers']}",
        f"layout: {report['layout']}",
        f"SPECS on the toy-math world, n={report['settings']['search']['n']}, the world's PRM in-process in both; "
        f"medians over {k} repeats [range]",
        "",
        f"{'figure':<44}{'median':>10}  range",
    ]

    def row(name: str, s: dict[str, float], fmt: str = "{:.3f}") -> None:
        lines.append(
            f"{name:<44}{fmt.format(s['median']):>10}  [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"
        )

    row("latency per problem, HF backend (s)", fig["latency_s"]["hf"])
    row("latency per problem, vLLM backend (s)", fig["latency_s"]["vllm"])
    row("vLLM / HF latency", fig["vllm_over_hf"], "{:.2f}")
    for level in fig["throughput"]:
        row(f"throughput, {level['in_flight']:>2} in flight (problems/s)", level["problems_per_s"], "{:.2f}")
    for level in fig["throughput"]:
        row(
            f"client share, {level['in_flight']:>2} in flight (goal <= 0.05)", level["client_share"], "{:.3f}"
        )
    for level in fig["throughput"]:
        row(f"client CPU share, {level['in_flight']:>2} in flight", level["client_cpu_share"], "{:.3f}")
    lines += ["", "per-stage split, seconds per problem (median over repeats [range]):"]
    lines.append(f"{'stage':<18}{'HF backend':>26}{'vLLM backend':>26}")
    for stage in SPLIT:
        cells = []
        for b in ("hf", "vllm"):
            s = fig["split_s"][b][stage]
            cells.append(f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]")
        lines.append(f"{stage:<18}{cells[0]:>26}{cells[1]:>26}")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> BenchServedConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(BenchServedConfig, argv, "specs-rl bench backend=vllm")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    hf_run, served_run, planned = world(cfg)
    with threads_restored():
        return run(cfg, hf_run, served_run, planned, argv)


def run(cfg: BenchServedConfig, hf_run: Any, served_run: Any, planned: list[PlannedRun], argv: Any) -> int:
    load0 = machine()
    served = build_task(served_run)  # what compare builds: servers where the core layout puts them
    try:
        tasks = {"hf": build_task(hf_run), "vllm": served}
        for task in tasks.values():
            warm_up(task, planned[:1], cfg.warmup)
        latency = bench_latency(tasks, planned, cfg)
        throughput = bench_throughput(served, planned, cfg)
    finally:
        served.served.stop()
    runs = latency["runs"]
    figures = {
        "latency_s": {b: summary([r["mean_s"][b] for r in runs]) for b in ("hf", "vllm")},
        "vllm_over_hf": summary(latency["vllm_over_hf"]),
        "split_s": {
            b: {s: summary([r["split_s"][b][s] for r in runs]) for s in SPLIT} for b in ("hf", "vllm")
        },
        "throughput": [
            {
                "in_flight": lv["in_flight"],
                "problems_per_s": summary([r["problems_per_s"] for r in lv["runs"]]),
                "client_share": summary([r["client_share"] for r in lv["runs"]]),
                "client_cpu_share": summary([r["client_cpu_share"] for r in lv["runs"]]),
            }
            for lv in throughput["levels"]
        ],
    }
    layout = served.served.layout
    report = {
        "figures": figures,
        "latency": latency,
        "throughput": throughput,
        "servers": "started by the bench" if served.served.servers else "given by url",
        "layout": layout.describe(),
        "layout_detail": dataclasses.asdict(layout),
        "settings": to_dict(cfg) | {"search": to_dict(planned[0].config)},
        "machine": load0,
        "load_avg_1m_end": machine().get("load_avg_1m", float("nan")),
        "command": "specs-rl bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
