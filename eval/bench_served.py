"""``specs-rl bench backend=vllm``: SPECS through vLLM servers against the in-process Hugging Face backend, on the
toy-math world at n = 4, measured in one run.

    specs-rl bench backend=vllm out=runs/bench-vllm                  # starts a draft and a target server (CPU venv)
    specs-rl bench backend=vllm vllm.draft.url=http://... vllm.target.url=http://...   # servers already running

Both backends run the same search (the settings and models of ``configs/demo/toymath.yaml``: SPECS, n = 4, the
world's own PRM in-process in both, since vLLM cannot serve a token-label Llama PRM), so the figures isolate the
generators:

- **latency**: SPECS per problem, one problem at a time (the paper's setting), HF and vLLM taking turns problem by
  problem so a change of the machine's load hits both; per repeat the median over ``problems`` problems; reported as
  the median and range over ``repeats``;
- **throughput**: problems per second through vLLM with 1, 8 and 32 problems in flight (``batch_size``: the problems
  of a batch search in lockstep and every call issues one request per problem, all on the wire together), each over
  ``throughput_problems`` problems per repeat;
- **client share**: the share of a run's wall time that is neither waiting on a server nor running the in-process
  PRM (request building, JSON parsing, thread hand-offs, the search itself), ``1 - busy / wall``, where ``busy`` is
  the union of the intervals in which a request is in flight or the PRM runs (:class:`specs_rl.vllm.client.
  BusyMeter`). Goal: at most 0.05. On a loaded machine this also holds the time the OS takes to run a thread that a
  reply woke; beside it, the **client CPU share**: the client process's CPU seconds outside the in-process PRM over
  the wall time.

Writes ``bench.json`` (figures, every raw timing, the settings, the machine) into ``out`` and prints a table.
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
from specs_rl.models.config import ModelsConfig
from specs_rl.run.records import problem_seed
from specs_rl.vllm.config import VLLMConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchServedConfig:
    backend: Literal["vllm"] = field(
        default="vllm", metadata={"help": "vllm: this benchmark; hf: eval/bench_loop.py (its own keys)"}
    )
    out: str = field(default="runs/bench-vllm", metadata={"help": "directory for bench.json"})
    config: str = field(
        default=str(REPO / "configs" / "demo" / "toymath.yaml"),
        metadata={"help": "the run config whose world, models and SPECS settings are measured (the demo's)"},
    )
    n: int = field(default=4, metadata={"help": "candidates per step (issue: 4)"})
    repeats: int = field(default=3, metadata={"help": "repeats of every measurement; figures are medians"})
    problems: int = field(default=20, metadata={"help": "latency: problems per repeat and backend"})
    throughput_problems: int = field(
        default=32,
        metadata={"help": "throughput: problems per repeat and level (a multiple of each level helps)"},
    )
    in_flight: list[int] = field(
        default_factory=lambda: [1, 8, 32],
        metadata={"help": "throughput: problems in flight (issue: 1, 8, 32)"},
    )
    warmup: int = field(default=2, metadata={"help": "problems each backend searches, unrecorded, first"})
    threads: int = field(
        default=1, metadata={"help": "torch intra-op threads of the HF backend and PRM (as specs-rl bench)"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the searches (per problem, as compare seeds them)"}
    )
    vllm: VLLMConfig = field(
        default_factory=VLLMConfig,
        metadata={
            "help": "the servers (url null: started for the bench from the vLLM venv and stopped after)"
        },
    )

    def validate(self) -> None:
        for name in ("n", "repeats", "problems", "throughput_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.in_flight or min(self.in_flight) < 1:
            raise ValueError(f"in_flight must be a non-empty list of integers >= 1, got {self.in_flight}")
        if self.warmup < 0 or self.threads < 0:
            raise ValueError("warmup and threads must be >= 0")
        self.vllm.validate()


def world(cfg: BenchServedConfig) -> tuple[Any, ModelsConfig, list[Any]]:
    """The measured search settings (the config's SPECS settings at ``n``), its ``hf:`` section (for the demo config:
    paths at the package's assets, as ``specs-rl demo`` sets them) and enough of its problems."""
    from eval.demo import TOYMATH_CONFIG, demo_config
    from specs_rl.datasets import load_problems
    from specs_rl.run import CompareConfig

    demo = Path(cfg.config).resolve() == TOYMATH_CONFIG.resolve()
    run = (demo_config([]) if demo else load_config(CompareConfig, cfg.config)).run
    search = dataclasses.replace(run.search, strategy="specs", n=cfg.n)
    need = max(cfg.problems + cfg.warmup, cfg.throughput_problems)
    toy = dataclasses.replace(run.data.toymath, problems=max(need, run.data.toymath.problems))
    return search, run.hf, load_problems(dataclasses.replace(run.data, limit=need, toymath=toy))


def _search(parts: Any, problems: list[Any], config: Any, seed: int) -> list[Any]:
    from specs_rl.search import run_search

    # one generator per problem: a problem draws the same steps in a throughput batch as alone
    generators = [torch.Generator().manual_seed(problem_seed(seed, p.id)) for p in problems]
    return run_search(problems, config, parts, generators)


def bench_latency(
    hf_parts: Any, vparts: Any, search: Any, problems: list[Any], cfg: BenchServedConfig
) -> dict:
    """Per-problem SPECS latency (the search's own ledger total) of each backend, taking turns."""
    runs = []
    for r in range(cfg.repeats):
        lat: dict[str, list[float]] = {"hf": [], "vllm": []}
        answers: dict[str, list[str]] = {"hf": [], "vllm": []}
        for i, p in enumerate(problems):
            order = (
                (("hf", hf_parts), ("vllm", vparts))
                if (i + r) % 2 == 0
                else (("vllm", vparts), ("hf", hf_parts))
            )
            for name, parts in order:
                res = _search(parts, [p], search, cfg.seed)[0]
                lat[name].append(res.ledger.total_s)
                answers[name].append(res.answer)
        runs.append(
            {
                "median_s": {k: statistics.median(v) for k, v in lat.items()},
                "mean_s": {k: statistics.fmean(v) for k, v in lat.items()},
                "per_problem_s": lat,
                "correct": {
                    k: sum(a == (p.answer or "") for a, p in zip(v, problems)) for k, v in answers.items()
                },
            }
        )
    ratio = [x["median_s"]["vllm"] / x["median_s"]["hf"] for x in runs]
    return {"runs": runs, "vllm_over_hf": ratio, "problems": len(problems)}


def bench_throughput(
    vparts: Any, served: Any, search: Any, problems: list[Any], cfg: BenchServedConfig
) -> dict:
    """Problems per second through vLLM with ``k`` problems in flight, and the client's share of the wall time."""
    levels = []
    for k in cfg.in_flight:
        runs = []
        for _ in range(cfg.repeats):
            served.client.meter.reset()
            prm_cpu0 = vparts.prm.stats.get("cpu_s", 0.0)
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(0, len(problems), k):
                _search(vparts, problems[start : start + k], search, cfg.seed)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            busy = served.client.meter.busy_s
            prm_cpu = vparts.prm.stats.get("cpu_s", 0.0) - prm_cpu0
            runs.append(
                {
                    "wall_s": wall,
                    "busy_s": busy,
                    "problems_per_s": len(problems) / wall,
                    "client_share": max(0.0, 1.0 - busy / wall),
                    "client_cpu_s": cpu - prm_cpu,
                    "client_cpu_share": (cpu - prm_cpu) / wall,
                    "peak_requests_in_flight": served.client.meter.peak,
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
    lat = report["figures"]["latency_s"]
    k = report["settings"]["repeats"]
    lines = [
        f"machine: {m['cpu']} | {m['cores']} cores | load {m.get('load_avg_1m', float('nan')):.1f} | "
        f"vLLM servers: {report['servers']}",
        f"SPECS on the toy-math world, n={report['settings']['n']}, the world's PRM in-process in both; "
        f"medians over {k} repeats [range]",
        "",
        f"{'figure':<44}{'median':>10}  range",
    ]

    def row(name: str, s: dict[str, float], fmt: str = "{:.3f}") -> None:
        lines.append(
            f"{name:<44}{fmt.format(s['median']):>10}  [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"
        )

    row("latency per problem, HF backend (s)", lat["hf"])
    row("latency per problem, vLLM backend (s)", lat["vllm"])
    row("vLLM / HF latency", report["figures"]["vllm_over_hf"], "{:.2f}")
    for level in report["figures"]["throughput"]:
        row(f"throughput, {level['in_flight']:>2} in flight (problems/s)", level["problems_per_s"], "{:.2f}")
    for level in report["figures"]["throughput"]:
        row(
            f"client share, {level['in_flight']:>2} in flight (goal <= 0.05)", level["client_share"], "{:.3f}"
        )
    for level in report["figures"]["throughput"]:
        row(f"client CPU share, {level['in_flight']:>2} in flight", level["client_cpu_share"], "{:.3f}")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> BenchServedConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(BenchServedConfig, argv, "specs-rl bench backend=vllm")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    from specs_rl.hf import build_parts as build_hf
    from specs_rl.hf.build import build_prm
    from specs_rl.vllm.build import build_parts as build_served

    cfg = parse(sys.argv[1:] if argv is None else argv)
    search, hf, problems = world(cfg)
    out = Path(cfg.out)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vparts, served = build_served(cfg.vllm, hf, probe=problems[0], prm_factory=build_prm)
    try:
        hf_parts = build_hf(hf)
        warm, timed = problems[: cfg.warmup], problems[cfg.warmup : cfg.warmup + cfg.problems]
        for p in warm:
            for parts in (hf_parts, vparts):
                _search(parts, [p], search, cfg.seed)
        latency = bench_latency(hf_parts, vparts, search, timed, cfg)
        throughput = bench_throughput(vparts, served, search, problems[: cfg.throughput_problems], cfg)
    finally:
        torch.set_num_threads(previous_threads)
        served.stop()
    figures = {
        "latency_s": {b: summary([r["median_s"][b] for r in latency["runs"]]) for b in ("hf", "vllm")},
        "vllm_over_hf": summary(latency["vllm_over_hf"]),
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
    report = {
        "figures": figures,
        "latency": latency,
        "throughput": throughput,
        "servers": "started by the bench" if served.servers else "given by url",
        "settings": to_dict(cfg) | {"search": to_dict(search)},
        "machine": machine(),
        "command": "specs-rl bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
