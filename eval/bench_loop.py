"""``specs-rl bench`` (``backend: hf``, the default; :mod:`eval.bench` dispatches): how much of the inference loop is model work, and how step cost grows with the prefix.

    specs-rl bench out=runs/bench                      # CPU figures (a few minutes on 2 cores)
    specs-rl bench out=runs/bench repeats=1 quick=true # a smoke run in seconds
    specs-rl bench backend=vllm out=runs/bench-vllm    # the served backend against this one (eval/bench_served.py)

Random-weight Llama models over the project's tiny tokenizer, on the CPU (no download):

- **overhead**: a SPECS run at ``n`` candidates per step with a ~5M-parameter draft, a ~50M target and a ~5M PRM;
  the share of its wall time spent *outside* model forward passes (sampling, stop checks, cache bookkeeping, the
  search itself). ``overhead_fraction = 1 - forward_s / wall_s``, median over ``repeats`` runs (goal: <= 0.10).
- **growth**: the time of one SPECS draft-mode step (draft ``n`` steps of ``step_tokens`` tokens, target scoring,
  PRM scoring) after a ``prefix_long``-token prefix over the same after a ``prefix_short``-token prefix, with the
  prefix already cached as in a real run; the two prefixes are stepped in turn so load changes hit both alike;
  ``step_time_ratio_1024_64`` is the median over repeats (goal: <= 1.5). The same ratio in process CPU time is
  reported beside it (steadier on a shared machine).
- **gpu** (only when CUDA is available): random-weight Qwen2.5-1.5B (draft, and a 1.5B-shaped PRM) and Qwen2.5-7B
  (target) architectures in bfloat16: time of a SPECS draft-mode step against a target beam-search step (target
  samples ``n`` steps, the PRM scores them) for ``n`` in ``gpu_n``. On a CPU-only machine it is skipped and
  ``bench.json`` says so.

Steps have a fixed length (``ignore_eos`` and a delimiter the models never produce), so every repeat does the same
work. Writes ``bench.json`` (figures, raw timings, settings, the machine) into ``out`` and prints a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, to_dict
from specs_rl.hf import build_parts, forward_seconds, reset_stats
from specs_rl.models import ModelsConfig, ModelSpec, PrmSpec, TinySpec
from specs_rl.search import SearchConfig, specs
from specs_rl.types import Problem, Trace

NEVER = "\x00\x01\x02"  # a step delimiter random models never produce: fixed-length steps


def _spec(hidden: int, layers: int, heads: int, kv: int, seed: int, inter: int | None = None) -> TinySpec:
    return TinySpec(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        seed=seed,
    )


@dataclass
class BenchConfig:
    backend: Literal["hf"] = field(
        default="hf",
        metadata={
            "help": "hf: this benchmark (in-process models); vllm: eval/bench_served.py (its own keys)"
        },
    )
    out: str = field(default="runs/bench", metadata={"help": "directory for bench.json"})
    n: int = field(default=8, metadata={"help": "candidates per step (issue: 8)"})
    repeats: int = field(default=3, metadata={"help": "repeats of each measurement; figures are medians"})
    step_tokens: int = field(default=32, metadata={"help": "tokens per step (fixed length)"})
    max_steps: int = field(default=4, metadata={"help": "overhead: steps of the SPECS run"})
    problems: int = field(default=2, metadata={"help": "overhead: problems searched one at a time"})
    prefix_short: int = field(default=64, metadata={"help": "growth: short prefix in tokens (issue: 64)"})
    prefix_long: int = field(default=1024, metadata={"help": "growth: long prefix in tokens (issue: 1024)"})
    growth_steps: int = field(
        default=3, metadata={"help": "growth: timed steps per repeat and prefix length"}
    )
    draft: TinySpec = field(
        default_factory=lambda: _spec(256, 7, 4, 2, 1, 688),
        metadata={"help": "draft shape (5.2M parameters)"},
    )
    target: TinySpec = field(
        default_factory=lambda: _spec(512, 17, 8, 4, 2, 1376),
        metadata={"help": "target shape (49.7M parameters)"},
    )
    prm: TinySpec = field(
        default_factory=lambda: _spec(256, 7, 4, 2, 3, 688), metadata={"help": "PRM shape (5.2M parameters)"}
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "torch intra-op threads; 1 keeps timings stable on a shared machine (0: torch's default)"
        },
    )
    quick: bool = field(
        default=False, metadata={"help": "tiny models and short prefixes: a smoke run of the whole script"}
    )
    gpu: bool = field(default=True, metadata={"help": "run the GPU section when CUDA is available"})
    gpu_n: list[int] = field(default_factory=lambda: [4, 8, 16], metadata={"help": "GPU section: n grid"})
    gpu_prefix: int = field(default=512, metadata={"help": "GPU section: prefix tokens"})
    gpu_step_tokens: int = field(default=64, metadata={"help": "GPU section: tokens per step"})
    gpu_repeats: int = field(default=3, metadata={"help": "GPU section: timed steps per cell"})

    def validate(self) -> None:
        for name in ("n", "repeats", "step_tokens", "max_steps", "problems", "growth_steps", "gpu_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.prefix_short < self.prefix_long:
            raise ValueError(
                f"need 0 < prefix_short < prefix_long, got {self.prefix_short} and {self.prefix_long}"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if not self.gpu_n or min(self.gpu_n) < 1:
            raise ValueError(f"gpu_n must be a non-empty list of integers >= 1, got {self.gpu_n}")
        for name in ("draft", "target", "prm"):
            getattr(self, name).validate(name)


def params_of(spec: TinySpec, vocab: int = 300) -> int:
    """Parameters of a tiny Llama (embeddings and head included)."""
    h, L = spec.hidden_size, spec.num_hidden_layers  # noqa: N806
    inter = spec.intermediate_size or 2 * h
    kv = h // spec.num_attention_heads * spec.num_key_value_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return L * per_layer + 2 * vocab * h + h


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = os.getloadavg()[0]  # how shared the machine was
    return info


def cpu_config(cfg: BenchConfig) -> ModelsConfig:
    common = dict(device="cpu", dtype="float32", temperature=1.0, ignore_eos=True)
    return ModelsConfig(
        draft=ModelSpec(name="tiny:llama", tiny=cfg.draft, **common),
        target=ModelSpec(name="tiny:llama", tiny=cfg.target, **common),
        prm=PrmSpec(name="tiny:llama", device="cpu", dtype="float32", tiny=cfg.prm),
        step_delimiter=NEVER,
        max_step_tokens=cfg.step_tokens,
        # Response budget (the prompt is the prefix): room for every timed step, and a last to-the-end step of the
        # SPECS run that is one step long, not a long run-on sample (ignore_eos never stops it).
        max_tokens=(max(cfg.max_steps, cfg.growth_steps + 1) + 1) * cfg.step_tokens,
        chat_template=False,
    )


def prompt_of_length(tokenizer: Any, tokens: int) -> str:
    """A text that the tokenizer encodes to about ``tokens`` tokens (MATH-500-like words)."""
    base = (
        "Let $f(x) = 3x^2 - 5x + 2$. Compute the sum of all real $x$ with $f(f(x)) = 2$, and then "
        "explain each step of the computation in detail. Please reason step by step. "
    )
    text = base
    while len(tokenizer(text, add_special_tokens=True)["input_ids"]) < tokens:
        text += base
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _step(parts: Any, trace: Trace, n: int, g: torch.Generator) -> tuple[float, float, Trace]:
    """One SPECS draft-mode step (draft, target scoring, PRM): wall seconds, process CPU seconds, the next trace."""
    t0, c0 = parts.clock.now(), time.process_time()
    cands = parts.drafter.propose([trace], n, g)
    parts.scorer.score([trace], cands)
    parts.prm.score([trace], cands)
    return parts.clock.now() - t0, time.process_time() - c0, trace.extend(cands[0][0])


def bench_overhead(parts: Any, cfg: BenchConfig, tokenizer: Any) -> dict[str, Any]:
    scfg = SearchConfig(
        n=cfg.n, max_steps=cfg.max_steps, start_mode="target", tau_switch=0.0, tau_reject=-float("inf")
    )
    problems = [
        Problem(str(i), prompt_of_length(tokenizer, cfg.prefix_short) + f" Case {i}.")
        for i in range(cfg.problems)
    ]
    runs = []
    for r in range(cfg.repeats):
        wall = fwd = 0.0
        for p in problems:  # one problem at a time, as the paper measures latency
            for stack in _stacks(parts):
                stack.clear()
            reset_stats(parts)
            t0 = time.perf_counter()
            specs([p], scfg, parts, torch.Generator().manual_seed(r))
            wall += time.perf_counter() - t0
            fwd += forward_seconds(parts)
        runs.append({"wall_s": wall, "forward_s": fwd, "overhead_fraction": 1.0 - fwd / wall})
    return {
        "overhead_fraction": statistics.median(x["overhead_fraction"] for x in runs),
        "runs": runs,
    }


def _stacks(parts: Any) -> list[Any]:
    from specs_rl.hf.build import backend_stacks

    return backend_stacks(parts)


def bench_growth(parts: Any, cfg: BenchConfig, tokenizer: Any) -> dict[str, Any]:
    """Median step time after a long prefix over the same after a short one. The two prefixes are stepped in turn
    (short, long, short, ...), so a change in the machine's load hits both alike."""
    short, long = cfg.prefix_short, cfg.prefix_long
    lengths: dict[int, int] = {}
    wall: dict[int, list[float]] = {short: [], long: []}
    cpu: dict[int, list[float]] = {short: [], long: []}
    for r in range(cfg.repeats):
        traces, gens = {}, {}
        for length in (short, long):
            trace = Trace(Problem(f"g{length}-{r}", prompt_of_length(tokenizer, length)))
            lengths[length] = len(parts.drafter.lm.key(trace)[1])
            gens[length] = torch.Generator().manual_seed(100 + r)
            _, _, traces[length] = _step(parts, trace, cfg.n, gens[length])  # warm-up: prefills the prefix
        times: dict[int, list[tuple[float, float]]] = {short: [], long: []}
        for _ in range(cfg.growth_steps):
            for length in (short, long):
                dt, dc, traces[length] = _step(parts, traces[length], cfg.n, gens[length])
                times[length].append((dt, dc))
        for length in (short, long):
            wall[length].append(statistics.median(t for t, _ in times[length]))
            cpu[length].append(statistics.median(c for _, c in times[length]))
    ratios = [b / a for a, b in zip(wall[short], wall[long])]
    cpu_ratios = [b / a for a, b in zip(cpu[short], cpu[long])]
    return {
        "step_time_ratio": statistics.median(ratios),
        "ratios": ratios,
        "step_cpu_time_ratio": statistics.median(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "step_time_s": {str(k): v for k, v in wall.items()},
        "step_cpu_time_s": {str(k): v for k, v in cpu.items()},
        "prefix_tokens": {str(k): v for k, v in lengths.items()},
    }


# ------------------------------------------------------------------------------------------------------------------
# GPU section

QWEN25_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
)
QWEN25_7B = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    tie_word_embeddings=False,
)


def gpu_parts(draft_arch: dict, target_arch: dict, device: str, dtype: torch.dtype, step_tokens: int) -> Any:
    """Random-weight Qwen2 draft / target / token-classification PRM (PRM shaped like the draft) on ``device``."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, Qwen2Config

    from specs_rl.hf.load import tiny_tokenizer
    from specs_rl.hf.prm import HFRewardModel
    from specs_rl.hf.sampler import HFLM, HFSampler
    from specs_rl.hf.scorer import HFScorer
    from specs_rl.interfaces import SearchParts, WallClock

    tok = tiny_tokenizer(300)

    def config(arch: dict, **kw: Any) -> Any:
        c = Qwen2Config(
            max_position_embeddings=4096,
            rope_theta=10000.0,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **arch,
            **kw,
        )
        c._attn_implementation = "sdpa"
        return c

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        draft = AutoModelForCausalLM.from_config(config(draft_arch), dtype=dtype).eval()
        target = AutoModelForCausalLM.from_config(config(target_arch), dtype=dtype).eval()
        prm_model = AutoModelForTokenClassification.from_config(
            config(draft_arch, num_labels=2), dtype=dtype
        ).eval()
    lm_d = HFLM(draft, tok, vocab=len(tok), chat_template=False, name="draft")
    lm_t = HFLM(target, tok, vocab=len(tok), chat_template=False, name="target")
    step = dict(delimiter=NEVER, max_step_tokens=step_tokens, max_tokens=1 << 20, ignore_eos=True)
    return SearchParts(
        drafter=HFSampler(lm_d, temperature=1.0, **step),
        target=HFSampler(lm_t, temperature=1.0, **step),
        scorer=HFScorer(lm_t),
        prm=HFRewardModel(prm_model, tok),
        clock=WallClock(),
    )


def bench_gpu(
    cfg: BenchConfig,
    device: str = "cuda",
    draft_arch: dict = QWEN25_15B,
    target_arch: dict = QWEN25_7B,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Any]:
    """SPECS draft-mode step vs target beam-search step at each ``n`` (median seconds over ``gpu_repeats``)."""
    parts = gpu_parts(draft_arch, target_arch, device, dtype, cfg.gpu_step_tokens)
    tok = parts.drafter.lm.tokenizer
    prompt = prompt_of_length(tok, cfg.gpu_prefix)
    rows = []
    for n in cfg.gpu_n:
        g = torch.Generator().manual_seed(n)
        cells: dict[str, list[float]] = {"specs_draft_step_s": [], "target_beam_step_s": []}
        for which in cells:
            trace = Trace(Problem(f"gpu-{n}-{which}", prompt))
            for k in range(cfg.gpu_repeats + 1):  # the first step prefills the prefix: not timed
                t0 = parts.clock.now()
                if which == "specs_draft_step_s":  # target scoring and PRM in two threads, as the authors do
                    cands = parts.drafter.propose([trace], n, g)
                    with ThreadPoolExecutor(max_workers=2) as pool:
                        done = [pool.submit(m.score, [trace], cands) for m in (parts.scorer, parts.prm)]
                        for f in done:
                            f.result()
                else:
                    cands = parts.target.propose([trace], n, g)
                    parts.prm.score([trace], cands)
                dt = parts.clock.now() - t0
                if k:
                    cells[which].append(dt)
                trace = trace.extend(cands[0][0])
        d = statistics.median(cells["specs_draft_step_s"])
        t = statistics.median(cells["target_beam_step_s"])
        rows.append(
            {"n": n, "specs_draft_step_s": d, "target_beam_step_s": t, "speedup": t / d, "raw": cells}
        )
    return {
        "device": device,
        "dtype": str(dtype),
        "prefix_tokens": len(parts.drafter.lm.key(Trace(Problem("x", prompt)))[1]),
        "step_tokens": cfg.gpu_step_tokens,
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------------------------


def _quick(cfg: BenchConfig) -> BenchConfig:
    small = _spec(32, 2, 4, 2, 1)
    return dataclasses.replace(
        cfg,
        draft=small,
        target=_spec(64, 2, 4, 2, 2),
        prm=_spec(32, 2, 4, 2, 3),
        prefix_short=min(cfg.prefix_short, 16),
        prefix_long=min(cfg.prefix_long, 64),
        step_tokens=min(cfg.step_tokens, 4),
        max_steps=min(cfg.max_steps, 2),
        problems=1,
        growth_steps=min(cfg.growth_steps, 2),
    )


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} | {m['cores']} cores | torch {m['torch']} ({m['torch_threads']} threads)",
        f"models: draft {report['params']['draft'] / 1e6:.1f}M, target {report['params']['target'] / 1e6:.1f}M, "
        f"PRM {report['params']['prm'] / 1e6:.1f}M | n={report['settings']['n']} | "
        f"{report['settings']['step_tokens']} tokens/step | repeats={report['settings']['repeats']}",
        "",
        f"{'figure':<34}{'median':>10}{'goal':>8}  runs",
        f"{'overhead_fraction':<34}{report['overhead_fraction']:>10.3f}{'<=0.10':>8}  "
        + ", ".join(f"{x['overhead_fraction']:.3f}" for x in report["overhead"]["runs"]),
        f"{'step_time_ratio_1024_64':<34}{report['step_time_ratio_1024_64']:>10.3f}{'<=1.5':>8}  "
        + ", ".join(f"{x:.3f}" for x in report["growth"]["ratios"]),
        f"{'  same, process CPU time':<34}{report['growth']['step_cpu_time_ratio']:>10.3f}{'':>8}  "
        + ", ".join(f"{x:.3f}" for x in report["growth"]["cpu_ratios"]),
    ]
    st = report["growth"]["step_time_s"]
    lines.append(
        "step time (s) by prefix tokens: "
        + "; ".join(
            f"{report['growth']['prefix_tokens'][k]}: {statistics.median(v):.3f}" for k, v in st.items()
        )
    )
    gpu = report["gpu"]
    if "rows" in gpu:
        lines += [
            "",
            f"GPU ({gpu['device']}, {gpu['dtype']}): n, SPECS draft step s, target beam step s, speedup",
        ]
        lines += [
            f"  {r['n']:>3}  {r['specs_draft_step_s']:.4f}  {r['target_beam_step_s']:.4f}  {r['speedup']:.2f}x"
            for r in gpu["rows"]
        ]
    else:
        lines += ["", f"GPU section: skipped ({gpu.get('skipped')})"]
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> BenchConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(BenchConfig, argv, "specs-rl bench")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    if cfg.quick:
        cfg = _quick(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        parts = build_parts(cpu_config(cfg))
        tok = parts.drafter.lm.tokenizer
        overhead = bench_overhead(parts, cfg, tok)
        growth = bench_growth(parts, cfg, tok)
        if not cfg.gpu:
            gpu: dict[str, Any] = {"skipped": "gpu=false"}
        elif not torch.cuda.is_available():
            gpu = {"skipped": "no CUDA device on this machine"}
        else:
            gpu = bench_gpu(cfg)
        report = {
            "overhead_fraction": overhead["overhead_fraction"],
            "step_time_ratio_1024_64": growth["step_time_ratio"],
            "overhead": overhead,
            "growth": growth,
            "gpu": gpu,
            "params": {k: params_of(getattr(cfg, k)) for k in ("draft", "target", "prm")},
            "settings": to_dict(cfg),
            "machine": machine(),
        }
    finally:
        torch.set_num_threads(previous_threads)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
