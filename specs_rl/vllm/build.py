"""``backend: vllm``: a math benchmark searched with models served by vLLM, graded on the boxed answer.

:func:`build_parts` checks everything a run needs before it returns, so a bad setup fails in one line before any file
is written: the config, every given server (``/health``, and ``/v1/models`` must list the configured name), the
tokenizers (draft and target must share one), the vLLM install when servers are to be started, the started
servers' health, and that a sampling server returns processed log-probs. Servers it starts are stopped when the
process exits. :func:`start_servers` starts a config's servers after the same checks (``specs-rl serve``).

A PRM that vLLM cannot serve (the project's token-label PRMs) runs in this process; this backend loads no model
itself, so its builder takes the PRM's factory (``prm_factory(spec, cache_prompts)``; the run layer passes
:func:`specs_rl.hf.build.build_prm`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from specs_rl.errors import SpecsError
from specs_rl.interfaces import SearchParts, Task, WallClock
from specs_rl.models.config import ModelsConfig, ModelSpec, PrmSpec
from specs_rl.models.prm_format import PrmFormat
from specs_rl.models.sources import split_source
from specs_rl.types import Problem
from specs_rl.vllm.config import API_KEY_ENV, VLLMConfig, default_python
from specs_rl.vllm.layout import CoreLayout, core_layout, usable_cores

GENERATORS = ("draft", "target")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")

PrmFactory = Callable[[PrmSpec, int], Any]  # (hf.prm, hf.cache_prompts) -> an in-process RewardModel


@dataclass
class ServedParts:
    """What :func:`build_parts` made besides the parts: the client (timing meters), the endpoints, the servers it
    started (stopped at exit), which PRM backend was chosen, and the core layout (:mod:`specs_rl.vllm.layout`)."""

    client: Any
    endpoints: dict[str, Any]
    servers: list[Any]
    prm_backend: str
    layout: CoreLayout

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        self.client.close()


def _config_architectures(name: str, spec: PrmSpec) -> list[str]:
    """``architectures`` from a checkpoint's config.json (a local directory, or the hub's copy), [] if unknown."""
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            return list(json.loads((path / "config.json").read_text()).get("architectures") or [])
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(
            name, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        return list(getattr(cfg, "architectures", None) or [])
    except (OSError, ValueError, KeyError, ImportError):
        return []


def prm_backend(vc: VLLMConfig, hf: ModelsConfig) -> str:
    """``vllm`` or ``hf`` for ``vllm.prm.backend`` (``auto`` as its help text says)."""
    if vc.prm.backend != "auto":
        return vc.prm.backend
    if vc.prm.url is not None:
        return "vllm"
    if hf.prm.name.startswith("tiny"):
        return "hf"
    if hf.prm.kind not in ("auto", "qwen_prm"):
        return (
            "hf"  # vLLM serves Qwen2ForProcessRewardModel; the other kinds run in-process beside the servers
        )
    archs = _config_architectures(hf.prm.name, hf.prm)
    return "vllm" if any(a.endswith("ForProcessRewardModel") for a in archs) else "hf"


def _check_servable(key: str, spec: ModelSpec | PrmSpec) -> None:
    if spec.name.startswith("tiny"):
        raise SpecsError(
            f"backend vllm serves checkpoints, and {key}.name is {spec.name!r} (tiny: models exist only in-process); "
            f"set {key}.name to a local directory or hub id"
        )
    if getattr(spec, "gguf_file", None) is not None or spec.name.endswith(".gguf"):
        raise SpecsError(
            f"backend vllm does not take GGUF files here ({key}); serve the checkpoint directory"
        )


def _load_tokenizer(spec: ModelSpec | PrmSpec, key: str) -> Any:
    from transformers import AutoTokenizer

    source, _ = split_source(spec.name, None, key)
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision is not None:
        kw["revision"] = spec.revision
    try:
        return AutoTokenizer.from_pretrained(getattr(spec, "tokenizer", None) or source, **kw)
    except (OSError, ValueError, ImportError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecsError(f"could not load the tokenizer of {key} {spec.name!r}: {first[:300]}") from None


def _eos_ids(tokenizer: Any, spec: ModelSpec) -> frozenset[int]:
    """End-of-sequence ids as the in-process backend collects them (tokenizer + generation config)."""
    from specs_rl.models.tokens import eos_ids

    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(spec.name, revision=spec.revision).eos_token_id
    except (OSError, ValueError):
        eos = None
    return eos_ids(tokenizer, eos, len(tokenizer))


def _prm_format(spec: PrmSpec) -> PrmFormat:
    """The PRM's reading: its kind (``prm_config.json``, else config.json's architectures) and fields, overridden by
    ``hf.prm`` (:func:`specs_rl.models.prm_kinds.spec_format`, as the in-process loader resolves it)."""
    from specs_rl.models.prm_kinds import spec_format

    saved = PrmFormat.load(spec.name) if Path(spec.name).expanduser().is_dir() else None
    try:
        return spec_format(spec, saved, _config_architectures(spec.name, spec))
    except ValueError as e:
        raise SpecsError(f"hf.prm: {e}") from None


def served_name(vc: VLLMConfig, hf: ModelsConfig, part: str) -> str:
    return getattr(vc, part).model or getattr(hf, part).name


def launch_specs(
    vc: VLLMConfig, hf: ModelsConfig, parts: list[str], prm_pooler: dict | None = None
) -> dict[str, Any]:
    """``{part: LaunchSpec}`` of the servers ``parts`` need (:func:`start_servers` and runs with url null)."""
    from specs_rl.vllm.server import LaunchSpec

    out = {}
    for part in parts:
        sp, mp = getattr(vc, part), getattr(hf, part)
        port = None
        if sp.url is not None:
            from urllib.parse import urlparse

            port = urlparse(sp.url).port
        dtype = sp.dtype if sp.dtype != "auto" else (mp.dtype if mp.dtype != "auto" else "auto")
        out[part] = LaunchSpec(
            part=f"vllm.{part}",
            checkpoint=str(Path(mp.name).expanduser()) if Path(mp.name).expanduser().exists() else mp.name,
            served_name=served_name(vc, hf, part),
            kind="prm" if part == "prm" else "generate",
            port=port,
            dtype=dtype,
            max_model_len=sp.max_model_len,
            gpu_memory_utilization=sp.gpu_memory_utilization,
            tensor_parallel_size=sp.tensor_parallel_size,
            devices=sp.devices,
            tokenizer=getattr(mp, "tokenizer", None),
            revision=mp.revision,
            trust_remote_code=mp.trust_remote_code,
            pooler_config=prm_pooler if part == "prm" else None,
            extra_args=list(sp.extra_args),
        )
    return out


def pooler_config(pooling: str, step_tag_id: int) -> dict[str, Any]:
    """``--pooler-config`` of a PRM server: step pooling at the step tag, or every token."""
    if pooling == "step":
        return {"tok_pooling_type": "STEP", "step_tag_id": step_tag_id}
    return {"tok_pooling_type": "ALL"}


def _served_prm_reading(vc: VLLMConfig, hf: ModelsConfig) -> tuple[Any, Any, str, list[int]]:
    """``(tokenizer, format, pooling, separator ids)`` of a PRM served by vLLM; a separator that encodes to nothing or
    a pooling that cannot read the format is a SpecsError."""
    from specs_rl.vllm.prm import resolve_pooling

    tok = _load_tokenizer(hf.prm, "hf.prm")
    fmt = _prm_format(hf.prm)
    sep_ids = tok(fmt.step_separator, add_special_tokens=False)["input_ids"]
    if not sep_ids:
        raise SpecsError(f"hf.prm: the step separator {fmt.step_separator!r} encodes to no tokens")
    try:
        pooling = resolve_pooling(vc.prm.pooling, fmt, sep_ids)
    except ValueError as e:
        raise SpecsError(f"vllm.prm.pooling: {e}") from None
    return tok, fmt, pooling, sep_ids


def _unique(specs: Sequence[Any]) -> list[Any]:
    """One spec per server (a draft that is also the target shares one)."""
    unique: dict[tuple, Any] = {}
    for spec in specs:
        unique.setdefault(spec.key(), spec)
    return list(unique.values())


def run_layout(vc: VLLMConfig, starts: int, urls: Sequence[str] = ()) -> CoreLayout:
    """The core layout (:func:`specs_rl.vllm.layout.core_layout`) of a run on this machine: the ``starts`` servers it
    starts (counted when ``vllm.python`` is a CPU build) and those at ``urls`` whose host is this machine (counted
    when no GPU is visible: CPU servers, presumably started by ``specs-rl serve`` with the same layout), bound as
    ``vllm.cpu_threads_bind`` says, the in-process parts getting ``vllm.client_threads`` or the layout's. The
    servers given by URL come first in ``binds``. An override that oversubscribes warns."""
    from specs_rl.vllm.gpu import visible_gpus
    from specs_rl.vllm.server import is_cpu_build

    local = len({u for u in urls if urlparse(u).hostname in LOCAL_HOSTS}) if not visible_gpus() else 0
    cpu_starts = starts if starts and is_cpu_build(vc.python or default_python()) else 0
    layout = core_layout(usable_cores(), local + cpu_starts, vc.cpu_threads_bind, vc.client_threads)
    if layout.warning:
        warnings.warn(layout.warning, stacklevel=3)
    return layout


def _start(vc: VLLMConfig, specs: list[Any], layout: CoreLayout) -> list[Any]:
    """Start the servers of ``specs`` (one per server, :func:`_unique`), each CPU server pinned where ``layout``
    puts it (its last ``len(specs)`` binds): servers that share a GPU one after another, each with its explicit
    memory share, others together (:mod:`specs_rl.vllm.gpu`). The vLLM build must match the machine (no CPU build
    beside visible GPUs, no CUDA build without them); both checks run before the first server starts."""
    from specs_rl.vllm.gpu import Placement, check_build, check_shares, start_waves, visible_gpus
    from specs_rl.vllm.server import start_all, vllm_build

    python = vc.python or default_python()
    visible = visible_gpus()
    check_build(vllm_build(python), python, visible)
    placements = [
        Placement(s.part, s.devices, s.tensor_parallel_size, s.gpu_memory_utilization) for s in specs
    ]
    check_shares(placements, visible)
    binds = list(layout.binds[len(layout.binds) - len(specs) :]) if layout.binds else ["nobind"] * len(specs)
    return start_all(
        specs,
        waves=start_waves(placements, visible),
        timeout_s=vc.start_timeout_s,
        python=python,
        host=vc.host,
        log_dir=vc.log_dir,
        kv_cache_gib=vc.cpu_kv_cache_gib,
        binds=binds,
    )


def start_servers(
    vc: VLLMConfig,
    hf: ModelsConfig,
    parts: Sequence[str] = (),
    *,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start on this machine the vLLM servers a config serves and wait until they answer: ``{part: Server}`` (a
    draft that is also the target shares one server). ``parts`` limits them (empty: every part the config serves:
    draft, target, and the PRM when ``vllm.prm.backend`` resolves to ``vllm``). A part whose ``vllm.<part>.url`` is
    set is served at that URL's port (its host must be this machine), otherwise at a free port on ``vllm.host``.
    Every check runs before the first server starts (then ``announce`` gets one line saying what starts); the servers
    stop when the process exits (or by ``stop()``)."""
    try:
        vc.validate()
        hf.validate()
    except ValueError as e:
        raise SpecsError(str(e)) from None
    served = [*GENERATORS, *(["prm"] if prm_backend(vc, hf) == "vllm" else [])]
    unknown = [p for p in parts if p not in served]
    if unknown:
        raise SpecsError(f"parts: {unknown[0]!r} is not served by this config; it serves {', '.join(served)}")
    todo = [p for p in served if not parts or p in parts]
    for part in todo:
        _check_servable(f"hf.{part}", getattr(hf, part))
        url = getattr(vc, part).url
        if url is not None and urlparse(url).hostname not in LOCAL_HOSTS:
            raise SpecsError(f"vllm.{part}.url is {url}: specs-rl serve starts servers on this machine only")
    pooler = None
    if "prm" in todo:
        _, _, pooling, sep_ids = _served_prm_reading(vc, hf)
        pooler = pooler_config(pooling, sep_ids[-1])
    specs = launch_specs(vc, hf, todo, pooler)
    from specs_rl.vllm.server import check_python

    check_python(vc.python or default_python())
    unique = _unique(list(specs.values()))
    layout = run_layout(vc, len(unique))
    if announce is not None:
        announce(f"starting {len(unique)} vLLM server(s) for {', '.join(todo)} ...")
        if layout.binds:
            announce(layout.describe())
    by_key = {s.spec.key(): s for s in _start(vc, unique, layout)}
    return {part: by_key[spec.key()] for part, spec in specs.items()}


def build_parts(
    vc: VLLMConfig,
    hf: ModelsConfig,
    *,
    probe: Problem | None = None,
    prm_factory: PrmFactory | None = None,
) -> tuple[SearchParts, ServedParts]:
    """The search parts of ``backend: vllm`` and what serves them; see the module docstring for the checks.
    ``prm_factory`` builds the PRM in this process when ``vllm.prm.backend`` resolves to ``hf``."""
    from specs_rl.grading import boxed_answer
    from specs_rl.models.judge import DEFAULT_JUDGE_PROMPT
    from specs_rl.models.tokens import same_tokenizer
    from specs_rl.vllm.client import Endpoint, ServedClient
    from specs_rl.vllm.judge import VLLMJudge
    from specs_rl.vllm.prm import MeteredRewardModel, VLLMRewardModel
    from specs_rl.vllm.probe import check_endpoint, check_processed_logprobs
    from specs_rl.vllm.sampler import PromptFormat, VLLMSampler
    from specs_rl.vllm.scorer import VLLMScorer
    from specs_rl.vllm.server import LaunchSpec

    try:
        vc.validate()
        hf.validate()
    except ValueError as e:
        raise SpecsError(str(e)) from None
    prm_kind = prm_backend(vc, hf)
    if prm_kind == "hf" and prm_factory is None:
        raise SpecsError(
            "vllm.prm.backend is hf (the PRM runs in this process) but no in-process PRM builder was given; build the "
            "task through specs_rl.run (it passes specs_rl.hf's), or serve the PRM (vllm.prm.backend: vllm)"
        )
    served = [*GENERATORS, *(["prm"] if prm_kind == "vllm" else [])]
    for part in served:
        _check_servable(f"hf.{part}", getattr(hf, part))
    client = ServedClient(
        timeout_s=vc.timeout_s,
        connect_timeout_s=vc.connect_timeout_s,
        retries=vc.retries,
        backoff_s=vc.backoff_s,
        max_concurrency=vc.max_concurrency,
        api_key=os.environ.get(API_KEY_ENV) or None,
    )
    servers: list[Any] = []
    try:
        endpoints = {
            p: Endpoint(f"vllm.{p}", getattr(vc, p).url or "", served_name(vc, hf, p)) for p in served
        }
        # 1. servers given by URL answer, and serve what the config names (before anything heavy)
        cards = {p: check_endpoint(client, endpoints[p]) for p in served if getattr(vc, p).url is not None}
        # 2. tokenizers: draft and target must share one
        toks = {p: _load_tokenizer(getattr(hf, p), f"hf.{p}") for p in GENERATORS}
        if not same_tokenizer(toks["draft"], toks["target"]):
            raise SpecsError(
                "backend vllm passes token ids between draft and target, so they must share a tokenizer; "
                f"hf.draft {hf.draft.name!r} and hf.target {hf.target.name!r} tokenize differently (use backend hf)"
            )
        prm_tok = prm_fmt = pooling = None
        if prm_kind == "vllm":
            prm_tok, prm_fmt, pooling, sep_ids = _served_prm_reading(vc, hf)
        # 3. start the servers the config leaves to the run, where the core layout puts them
        todo = [p for p in served if getattr(vc, p).url is None]
        specs: dict[str, LaunchSpec] = {}
        if todo:
            from specs_rl.vllm.server import check_python

            check_python(vc.python or default_python())
            pooler = pooler_config(pooling, sep_ids[-1]) if "prm" in todo else None  # type: ignore[arg-type]
            specs = launch_specs(vc, hf, todo, pooler)
            for spec in specs.values():
                spec.port = None  # url is null: a free port
        urls = [getattr(vc, p).url for p in served if getattr(vc, p).url is not None]
        layout = run_layout(vc, len(_unique(list(specs.values()))), urls)
        if todo:
            servers = _start(vc, _unique(list(specs.values())), layout)
            by_key = {s.spec.key(): s for s in servers}
            for p in todo:
                endpoints[p].url = by_key[specs[p].key()].url
                cards[p] = check_endpoint(client, endpoints[p])
        # 4. the parts
        fmt = PromptFormat(toks["target"], chat_template=hf.chat_template, system_prompt=hf.system_prompt)
        samplers = {}
        for p in GENERATORS:
            spec: ModelSpec = getattr(hf, p)
            limit = cards[p].get("max_model_len")
            samplers[p] = VLLMSampler(
                client,
                endpoints[p],
                fmt,
                eos_ids=_eos_ids(toks[p], spec),
                max_model_len=int(limit) if isinstance(limit, int) else 1 << 30,
                temperature=spec.temperature,
                top_p=spec.top_p,
                delimiter=hf.step_delimiter,
                max_step_tokens=hf.max_step_tokens,
                max_tokens=hf.max_tokens,
                ignore_eos=spec.ignore_eos,
                seed=vc.seed,
            )
            if spec.temperature not in (0.0, 1.0) or spec.top_p < 1.0:
                check_processed_logprobs(
                    samplers[p], list(fmt.prompt_ids(probe or Problem("probe", "1 + 1 =")))
                )
        if prm_kind == "vllm":
            try:
                prm: Any = VLLMRewardModel(
                    client,
                    endpoints["prm"],
                    prm_tok,
                    prm_fmt,  # type: ignore[arg-type]
                    pooling=pooling,  # type: ignore[arg-type]
                    aggregate=hf.prm.aggregate,
                    prompt_field=hf.prm.prompt_field,
                    chat=hf.prm.chat,
                    system_prompt=hf.prm.system_prompt,
                )
            except ValueError as e:
                raise SpecsError(f"hf.prm: {e}") from None
        else:
            prm = MeteredRewardModel(
                prm_factory(hf.prm, hf.cache_prompts),  # type: ignore[misc]
                client.meter,
                threads=layout.client_threads,
            )
    except BaseException:
        for s in servers:
            s.stop()
        client.close()
        raise
    parts = SearchParts(
        drafter=samplers["draft"],
        target=samplers["target"],
        scorer=VLLMScorer(client, endpoints["target"], fmt),
        prm=prm,
        clock=PooledWallClock(),
        answer_of=boxed_answer,
        judge=VLLMJudge(
            client,
            endpoints["target"],
            toks["target"],
            prompt=hf.judge_prompt or DEFAULT_JUDGE_PROMPT,
            answer_prefix=hf.judge_answer_prefix,
            chat_template=hf.chat_template,
            system_prompt=hf.system_prompt,
        ),
    )
    return parts, ServedParts(client, endpoints, servers, prm_kind, layout)


def build_task(cfg: Any, *, prm_factory: PrmFactory | None = None) -> Task:
    """The Task of a run config with ``backend: vllm``: problems from ``cfg.data`` (read and validated first), parts
    served as ``cfg.vllm`` says over the models of ``cfg.hf``, grading by the last ``\\boxed{}`` (Math-Verify).
    ``prm_factory``: as for :func:`build_parts`."""
    from specs_rl.datasets import load_problems
    from specs_rl.grading import boxed_answer_grade

    problems = load_problems(cfg.data)
    parts, served = build_parts(cfg.vllm, cfg.hf, probe=problems[0], prm_factory=prm_factory)
    grade, grader = boxed_answer_grade(parts.answer_of)
    return Task(f"vllm:{cfg.data.dataset}", problems, parts, grade, grader, served)


class PooledWallClock(WallClock):
    """:class:`~specs_rl.interfaces.WallClock` whose concurrent sections (target scoring beside the PRM) run the first
    call in the calling thread and the others on long-lived threads. ``WallClock`` starts a fresh thread pool per
    section; starting a thread cost 34 ms on average here with the 2-core machine loaded (158 sections of 20 toy
    problems: 5.3 s of 26.8 s), which a served run, whose own work is small, would count as the client's."""

    def __init__(self, sync_cuda: bool | None = None, threads: int = 2) -> None:
        super().__init__(sync_cuda)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="specs-rl-section")

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        def timed(call: Callable[[], Any]) -> tuple[Any, float]:
            t0 = self.now()
            out = call()
            return out, self.now() - t0

        t0 = self.now()
        rest = [self._pool.submit(timed, c) for c in calls[1:]]
        done = [timed(calls[0])] if calls else []
        done += [f.result() for f in rest]
        return [r for r, _ in done], [dt for _, dt in done], self.now() - t0
