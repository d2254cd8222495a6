"""``specs-rl plan --config FILE [key=value ...]``: what a run will need, before anything is downloaded or loaded.

    specs-rl plan --config configs/eval/math500_qwen25.yaml
    specs-rl plan --config configs/eval/math500_qwen25.yaml gpu_memory_gib=80     # no GPU here: say its size

It reads any recipe's config (``search``, ``compare``, ``demo``, ``tune``, ``serve``) and prints:

- each model: where it comes from (local dir, HF cache, hub, GGUF file, built in-process), its parameter count and
  its bytes at the dtype the run loads it in (:mod:`specs_rl.plan`: read from safetensors headers or config.json,
  ``unknown`` when neither can be reached);
- per device: the weights, the key/value cache of the cached prefixes (``hf.cache_prompts`` problems of up to
  ``hf.max_tokens`` tokens per in-process model, ``2 x layers x kv heads x head dim x dtype bytes`` a token), or each
  vLLM server's share of its GPU, against the device's memory (a visible GPU's, ``gpu_memory_gib``, or the host's
  RAM for cpu);
- the servers a ``backend: vllm`` run would start, with ports (or "a free port") and memory shares, in start order;
- the work: methods x n x seeds x problems searches, the data source and its problem count.

When a device cannot hold what it is given it prints one line and exits with status 2. ``compare``, ``search`` and
``serve`` run the same check (:func:`check`; ``serve``: :func:`check_serve`, its servers only) before they load or
start anything.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.config import ConfigError, load_config, split_argv, top_keys
from specs_rl.errors import SpecsError
from specs_rl.plan import (
    GIB,
    DeviceNeed,
    ModelFacts,
    fmt_bytes,
    fmt_params,
    gpu_memory,
    host_memory,
    model_facts,
)
from specs_rl.run import CompareConfig, RunConfig, SearchRunConfig

PLAN_KEYS = ("gpu_memory_gib",)


@dataclass
class Use:
    """A model as the run uses it: its facts, the dtype and device it is loaded on, whether it generates (and so
    keeps cached prefixes) or is served (then ``server`` names its vLLM part)."""

    facts: ModelFacts
    dtype: str
    device: str
    generates: bool
    server: str | None = None


def _tiny_config(spec: Any, causal: bool) -> dict[str, Any]:
    from specs_rl.models.config import tiny_arch
    from specs_rl.tiny import make_tokenizer, tiny_config

    t = spec.tiny
    arch = tiny_arch(spec.name)
    cfg = tiny_config(make_tokenizer(vocab_size=t.tokenizer_vocab), arch, t.vocab_pad, **t.model_kwargs())
    out = cfg.to_dict()
    kind = "ForCausalLM" if causal else "ForTokenClassification"
    out["architectures"] = [f"{'Llama' if arch == 'llama' else 'Qwen2'}{kind}"]
    if not causal:
        out["num_labels"] = 2
    return out


def _device(device: str, gpus: dict[int, int]) -> str:
    if device == "auto":
        return "cuda:0" if gpus else "cpu"
    return "cuda:0" if device == "cuda" else device


def _dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def model_uses(run: RunConfig, gpus: dict[int, int]) -> list[Use]:
    """The models of ``run`` (none for the tabular backend) with where and how each is loaded or served."""
    if run.backend == "tabular":
        return []
    hf = run.hf
    served: dict[str, bool] = {"draft": False, "target": False, "prm": False}
    if run.backend == "vllm":
        served["draft"] = served["target"] = True
        served["prm"] = (
            run.vllm.prm.backend == "vllm"
        )  # auto: decided from the PRM's kind when the run starts
    uses = []
    for role in ("draft", "target", "prm"):
        spec = getattr(hf, role)
        tiny = _tiny_config(spec, role != "prm") if spec.name.startswith("tiny") else None
        facts = model_facts(
            role,
            spec.name,
            revision=spec.revision,
            gguf_file=getattr(spec, "gguf_file", None),
            tiny_config=tiny,
        )
        if served[role]:
            part = getattr(run.vllm, role)
            device = f"cuda:{part.devices.split(',')[0]}" if part.devices else ("cuda:0" if gpus else "cpu")
            dtype = part.dtype if part.dtype != "auto" else _dtype(spec.dtype, device)
            uses.append(Use(facts, dtype, device, role != "prm", server=f"vllm.{role}"))
        else:
            device = _device(spec.device, gpus)
            uses.append(Use(facts, _dtype(spec.dtype, device), device, role != "prm"))
    return uses


def device_needs(
    run: RunConfig, uses: Sequence[Use], gpus: dict[int, int], gpu_gib: float | None
) -> list[DeviceNeed]:
    """What each device holds. In-process: weights + cached prefixes. Served on a GPU: the server's share of it
    (its weights must fit in the share, which also holds its KV cache). Served on the CPU: weights + the server's
    KV cache (``vllm.cpu_kv_cache_gib``)."""
    needs: dict[str, DeviceNeed] = {}

    def memory(device: str) -> int | None:
        if device == "cpu":
            return host_memory()
        index = int(device.partition(":")[2] or 0)
        if index in gpus:
            return gpus[index]
        return int(gpu_gib * GIB) if gpu_gib is not None else None

    for use in uses:
        need = needs.setdefault(use.device, DeviceNeed(use.device, memory(use.device)))
        weights = use.facts.bytes_at(use.dtype)
        role = use.facts.role
        if use.server is None:
            need.items.append((f"{role} weights ({use.dtype})", weights))
            if use.generates or role == "prm":  # an in-process PRM keeps cached prefixes too (CachedStack)
                per_token = use.facts.kv_bytes_per_token(use.dtype)
                tokens = run.hf.cache_prompts * run.hf.max_tokens
                need.items.append(
                    (
                        f"{role} cached prefixes ({run.hf.cache_prompts} x {run.hf.max_tokens} tokens)",
                        None if per_token is None else per_token * tokens,
                    )
                )
            continue
        part = getattr(run.vllm, role)
        if use.device == "cpu":
            need.items.append((f"{use.server} server weights ({use.dtype})", weights))
            need.items.append((f"{use.server} server KV cache", run.vllm.cpu_kv_cache_gib * GIB))
            continue
        share = part.gpu_memory_utilization if part.gpu_memory_utilization is not None else 0.9
        size = need.memory
        budget = None if size is None else int(share * size)
        need.items.append((f"{use.server} server share {share}", budget))
        if budget is not None and weights is not None and weights > budget:
            raise SpecsError(
                f"{use.server}: its weights take {fmt_bytes(weights)} at {use.dtype} but its share "
                f"{share} of {use.device} is {fmt_bytes(budget)}: raise vllm.{role}.gpu_memory_utilization or use "
                "a smaller dtype"
            )
    return list(needs.values())


def work(cfg: Any) -> tuple[str, int | None, str]:
    """``(what, searches, data source)``: the grid a config runs and its problem count (None when the data is not
    local: a hub dataset is not downloaded to count it)."""
    run: RunConfig = cfg.run
    problems, source = _problem_count(run)
    if isinstance(cfg, CompareConfig):
        g = cfg.grid
        runs = sum(len(g.n_values(m)) for m in g.methods) * len(g.seeds)
        own = "".join(f", {m} at n {ns}" for m, ns in g.method_n.items() if m in g.methods)
        what = f"{len(g.methods)} methods x n {g.n_grid}{own} x seeds {g.seeds}: {runs} runs"
    elif isinstance(cfg, SearchRunConfig):
        runs, what = 1, f"method {cfg.method}, n {run.search.n}, seed {cfg.seed}: 1 run"
    else:
        runs, what = 1, "one run"
    return what, None if problems is None else runs * problems, source


def _problem_count(run: RunConfig) -> tuple[int | None, str]:
    if run.backend == "tabular":
        from specs_rl.run.backends import build_task

        return len(build_task(run).problems), "tabular trees"
    from pathlib import Path

    from specs_rl.datasets import KNOWN, load_problems

    d = run.data
    local = d.dataset == "toymath" or d.path is not None or d.dataset.endswith(".jsonl")
    local = local or (d.dataset in KNOWN and KNOWN[d.dataset]["file"] is not None)
    if not local:
        return None, f"{d.dataset} (hub; not counted)"
    problems = load_problems(d)
    name = d.path or (d.dataset if d.dataset != "toymath" else f"toymath:{d.split}")
    return len(problems), str(Path(name).name if d.path else name)


def load_any(argv: Sequence[str]) -> tuple[Any, float | None]:
    """The config of whichever recipe the file is for (compare keys -> CompareConfig, ``tune`` -> TuneConfig, else
    a search), and ``gpu_memory_gib``."""
    from specs_rl.config import load_yaml
    from specs_rl.run.tune import TuneConfig

    path, overrides, _ = split_argv(argv)
    gpu_gib = None
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in PLAN_KEYS:
            try:
                gpu_gib = float(value)
            except ValueError:
                raise ConfigError(f"gpu_memory_gib must be a number of GiB, got {value!r}") from None
            if gpu_gib <= 0:
                raise ConfigError(f"gpu_memory_gib must be > 0, got {gpu_gib}")
        else:
            rest.append(item)
    keys = set(load_yaml(path)) if path else set()
    keys |= {o.partition("=")[0].split(".")[0] for o in rest}
    compare_only = top_keys(CompareConfig) - top_keys(RunConfig)
    if "tune" in keys:
        cls: type = TuneConfig
    elif keys & compare_only:
        cls = CompareConfig
    else:
        cls = SearchRunConfig
    others = top_keys(SearchRunConfig) | top_keys(CompareConfig) | top_keys(TuneConfig)
    return load_config(cls, path, rest, other_keys=others - top_keys(cls)), gpu_gib


def plan_lines(cfg: Any, gpu_gib: float | None = None) -> list[str]:
    """The plan as printed; raises :class:`SpecsError` (one line) when a device cannot hold its share."""
    from specs_rl.vllm.gpu import Placement, check_shares, start_waves

    run: RunConfig = cfg.run
    gpus = gpu_memory()
    if (
        not gpus and gpu_gib is not None
    ):  # planning a GPU run from a machine without one: one GPU of that size
        gpus = {0: int(gpu_gib * GIB)}
    uses = model_uses(run, gpus)
    lines = [f"backend: {run.backend}"]
    if uses:
        lines.append("models:")
        for u in uses:
            f = u.facts
            where = f"served by {u.server}" if u.server else "in-process"
            lines.append(
                f"  {f.role:<6} {f.name}  [{f.source}: {f.where}]  {fmt_params(f.params)} parameters "
                f"({f.how})  {fmt_bytes(f.bytes_at(u.dtype))} at {u.dtype} on {u.device}, {where}"
            )
    needs = device_needs(run, uses, gpus, gpu_gib)
    if needs:
        lines.append("memory per device (estimates: weights + caches as named):")
        for need in needs:
            lines += need.lines()
    served = [u for u in uses if u.server is not None]
    if served:
        visible = [str(i) for i in sorted(gpus)] or (
            ["0"] if any(u.device.startswith("cuda") for u in served) else []
        )
        placements = [
            Placement(
                u.server,
                getattr(run.vllm, u.facts.role).devices,
                getattr(run.vllm, u.facts.role).tensor_parallel_size,
                getattr(run.vllm, u.facts.role).gpu_memory_utilization,
            )
            for u in served
        ]
        check_shares(placements, visible)
        lines.append("servers (started in this order; a wave starts together):")
        for w, wave in enumerate(start_waves(placements, visible)):
            for i in wave:
                part = getattr(run.vllm, served[i].facts.role)
                url = part.url or "a free port on " + run.vllm.host
                share = part.gpu_memory_utilization
                lines.append(
                    f"  wave {w + 1}: {placements[i].part} at {url}, device {served[i].device}, memory share "
                    f"{share if share is not None else 'vLLM default 0.9'}"
                    + (" (already running: not started)" if part.url else "")
                )
    what, searches, source = work(cfg)
    lines.append(
        f"work: {what} x {source} problems = {searches if searches is not None else 'unknown'} searches"
    )
    for need in needs:
        need.check()
    return lines


def check(cfg: Any) -> None:
    """The fit check ``compare``, ``search`` and ``serve`` run before loading anything: a :class:`SpecsError`
    (one line) when a device cannot hold its models."""
    run: RunConfig = cfg.run
    if run.backend == "tabular":
        return
    gpus = gpu_memory()
    for need in device_needs(run, model_uses(run, gpus), gpus, None):
        need.check()


def check_serve(run: RunConfig, parts: Sequence[str] = ()) -> None:
    """The fit check ``serve`` runs before starting anything: the servers it would start (every served part of
    ``run``, whatever its ``backend`` key, or only ``parts``) against their devices; a :class:`SpecsError` (one
    line) when one cannot hold its model."""
    import dataclasses

    run = dataclasses.replace(run, backend="vllm")
    gpus = gpu_memory()
    uses = [u for u in model_uses(run, gpus) if u.server and (not parts or u.facts.role in parts)]
    for need in device_needs(run, uses, gpus, None):
        need.check()


def parse(argv: Sequence[str]) -> tuple[Any, float | None]:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return load_any(argv)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    cfg, gpu_gib = load_any(argv)
    for line in plan_lines(cfg, gpu_gib):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
