"""``backend: vllm``: a math benchmark searched with models served by vLLM, graded on the boxed answer.

:func:`build_parts` checks everything a run needs before it returns, so a bad setup fails in one line before any file
is written: the config, every given server (``/health``, and ``/v1/models`` must list the configured name), the
tokenizers (draft and target must share one), the vLLM install when servers are to be started, the started
servers' health, and that a sampling server returns processed log-probs. Servers it starts are stopped when the
process exits.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.hf.config import HFConfig, ModelSpec, PrmSpec
from specs_rl.interfaces import SearchParts, Task
from specs_rl.prm_format import PrmFormat
from specs_rl.types import Problem
from specs_rl.vllm.config import API_KEY_ENV, VLLMConfig, default_python

GENERATORS = ("draft", "target")


@dataclass
class ServedParts:
    """What :func:`build_parts` made besides the parts: the client (timing meters), the endpoints, the servers it
    started (stopped at exit), and which PRM backend was chosen."""

    client: Any
    endpoints: dict[str, Any]
    servers: list[Any]
    prm_backend: str

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


def prm_backend(vc: VLLMConfig, hf: HFConfig) -> str:
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

    from specs_rl.hf.models import split_source

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
    """End-of-sequence ids as :meth:`specs_rl.hf.lm.HFLM._eos_ids` collects them (tokenizer + generation config)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(spec.name, revision=spec.revision).eos_token_id
    except (OSError, ValueError):
        eos = None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return frozenset(i for i in ids if 0 <= i < len(tokenizer))


def _prm_format(spec: PrmSpec) -> PrmFormat:
    """The PRM's reading: its kind (``prm_config.json``, else config.json's architectures) and fields, overridden by
    ``hf.prm`` (:func:`specs_rl.prm_kinds.resolve_format`, as the in-process loader resolves it)."""
    from specs_rl.prm_kinds import resolve_format

    saved = PrmFormat.load(spec.name) if Path(spec.name).expanduser().is_dir() else None
    try:
        return resolve_format(
            kind=spec.kind,
            saved=saved,
            architectures=_config_architectures(spec.name, spec),
            step_separator=spec.step_separator,
            step_tag=spec.step_tag,
            positive_label=spec.positive_label,
            step_reward=spec.step_reward,
            good_token=spec.good_token,
            bad_token=spec.bad_token,
        )
    except ValueError as e:
        raise SpecsError(f"hf.prm: {e}") from None


def served_name(vc: VLLMConfig, hf: HFConfig, part: str) -> str:
    return getattr(vc, part).model or getattr(hf, part).name


def launch_specs(
    vc: VLLMConfig, hf: HFConfig, parts: list[str], prm_pooler: dict | None = None
) -> dict[str, Any]:
    """``{part: LaunchSpec}`` of the servers ``parts`` need (``specs-rl serve`` and runs with url null)."""
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


def start_servers(vc: VLLMConfig, specs: list[Any]) -> list[Any]:
    """Start the distinct servers of ``specs`` together (a draft that is also the target shares one)."""
    from specs_rl.vllm.server import check_python, start_all

    python = vc.python or default_python()
    check_python(python)
    unique: dict[tuple, Any] = {}
    for spec in specs:
        unique.setdefault(spec.key(), spec)
    return start_all(
        list(unique.values()),
        timeout_s=vc.start_timeout_s,
        python=python,
        host=vc.host,
        log_dir=vc.log_dir,
        kv_cache_gib=vc.cpu_kv_cache_gib,
        threads_bind=vc.cpu_threads_bind,
    )


def build_parts(
    vc: VLLMConfig, hf: HFConfig, *, probe: Problem | None = None
) -> tuple[SearchParts, ServedParts]:
    """The search parts of ``backend: vllm`` and what serves them; see the module docstring for the checks."""
    from specs_rl.hf.judge import DEFAULT_JUDGE_PROMPT
    from specs_rl.hf.parts import boxed_answer, same_tokenizer
    from specs_rl.vllm.client import Endpoint, ServedClient
    from specs_rl.vllm.judge import VLLMJudge
    from specs_rl.vllm.parts import (
        MeteredRewardModel,
        PooledWallClock,
        PromptFormat,
        VLLMRewardModel,
        VLLMSampler,
        VLLMScorer,
        resolve_pooling,
    )
    from specs_rl.vllm.server import LaunchSpec

    try:
        vc.validate()
        hf.validate()
    except ValueError as e:
        raise SpecsError(str(e)) from None
    prm_kind = prm_backend(vc, hf)
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
        cards = {p: _check_endpoint(client, endpoints[p]) for p in served if getattr(vc, p).url is not None}
        # 2. tokenizers: draft and target must share one
        toks = {p: _load_tokenizer(getattr(hf, p), f"hf.{p}") for p in GENERATORS}
        if not same_tokenizer(toks["draft"], toks["target"]):
            raise SpecsError(
                "backend vllm passes token ids between draft and target, so they must share a tokenizer; "
                f"hf.draft {hf.draft.name!r} and hf.target {hf.target.name!r} tokenize differently (use backend hf)"
            )
        prm_tok = prm_fmt = pooling = None
        if prm_kind == "vllm":
            prm_tok = _load_tokenizer(hf.prm, "hf.prm")
            prm_fmt = _prm_format(hf.prm)
            sep_ids = prm_tok(prm_fmt.step_separator, add_special_tokens=False)["input_ids"]
            if not sep_ids:
                raise SpecsError(
                    f"hf.prm: the step separator {prm_fmt.step_separator!r} encodes to no tokens"
                )
            try:
                pooling = resolve_pooling(vc.prm.pooling, prm_fmt, sep_ids)
            except ValueError as e:
                raise SpecsError(f"vllm.prm.pooling: {e}") from None
        # 3. start the servers the config leaves to the run
        todo = [p for p in served if getattr(vc, p).url is None]
        if todo:
            pooler = pooler_config(pooling, sep_ids[-1]) if "prm" in todo else None  # type: ignore[arg-type]
            specs: dict[str, LaunchSpec] = launch_specs(vc, hf, todo, pooler)
            for spec in specs.values():
                spec.port = None  # url is null: a free port
            servers = start_servers(vc, list(specs.values()))
            by_key = {s.spec.key(): s for s in servers}
            for p in todo:
                endpoints[p].url = by_key[specs[p].key()].url
                cards[p] = _check_endpoint(client, endpoints[p])
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
            prm = MeteredRewardModel(_in_process_prm(hf), client.meter)
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
    return parts, ServedParts(client, endpoints, servers, prm_kind)


def _in_process_prm(hf: HFConfig) -> Any:
    from specs_rl.hf.models import check_sources, load_reward_model
    from specs_rl.hf.prm import HFRewardModel

    check_sources({"hf.prm": hf.prm})
    model, tok, fmt = load_reward_model(hf.prm)
    try:
        return HFRewardModel(
            model,
            tok,
            fmt,
            aggregate=hf.prm.aggregate,
            prompt_field=hf.prm.prompt_field,
            chat=hf.prm.chat,
            system_prompt=hf.prm.system_prompt,
            cache_prompts=hf.cache_prompts,
        )
    except ValueError as e:
        raise SpecsError(f"hf.prm: {e}") from None


def _check_endpoint(client: Any, ep: Any) -> dict[str, Any]:
    """The model card of ``ep.model`` on its server, after ``/health``; a server serving other models is refused."""
    from specs_rl.vllm.client import ServerError

    cards = client.served_models(ep)
    if ep.model not in cards:
        served = ", ".join(repr(c) for c in cards) or "nothing"
        raise ServerError(
            f"{ep.part}: the server at {ep.url} serves {served}, not {ep.model!r}; point {ep.part}.url at the server "
            f"of that model, or set {ep.part}.model to the name it is served under"
        )
    return cards[ep.model]


def check_processed_logprobs(sampler: Any, probe_ids: list[int], tol: float = 1e-3) -> None:
    """Refuse a sampling server that returns raw log-probs where the sampled law differs from the raw one.

    One request samples 8 one-token choices at the sampler's temperature and top-p; a second reads the raw top-20
    log-probs at the same position (prompt log-probs are raw). From those the client computes the processed
    log-prob ``log softmax(raw / T)`` over the top-20 restricted to the nucleus (exact when the top-20 hold all but
    a negligible mass; otherwise the probe is skipped). A server whose answers match the raw value and not the
    processed one, on a choice where the two differ by more than 10 * ``tol``, is refused. Where the model is nearly
    certain of its next token the two coincide and nothing can be concluded (nor does it matter there)."""
    import math

    from specs_rl.vllm.client import ServerError

    client, ep = sampler.client, sampler.ep
    T, top_p = sampler.temperature, sampler.top_p  # noqa: N806
    body = sampler.body(probe_ids, 8, 12345, 1, to_end=True)
    data = client.request(ep, "POST", "/v1/completions", body)
    raw_body = {
        "model": ep.model,
        "prompt": list(probe_ids) + [0],
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": 20,
    }
    raw = client.request(ep, "POST", "/v1/completions", raw_body)
    try:
        top = raw["choices"][0]["prompt_logprobs"][len(probe_ids)]
        table = {int(k): float(v["logprob"]) for k, v in top.items()}
        sampled = [
            (int(ch["token_ids"][0]), float(ch["logprobs"]["token_logprobs"][0])) for ch in data["choices"]
        ]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise ServerError(
            f"{ep.part}: the server at {ep.url} answered the log-prob probe in an unexpected shape"
        ) from None
    if len(table) < 20 or math.fsum(math.exp(x) for x in table.values()) < 0.999:
        return  # the top-20 do not hold the distribution: no conclusion
    tempered = sorted(((k, v / T) for k, v in table.items()), key=lambda kv: -kv[1])
    norm = math.log(math.fsum(math.exp(v) for _, v in tempered))
    kept, mass = [], 0.0
    for k, v in tempered:
        if mass >= top_p:
            break
        kept.append((k, v - norm))
        mass += math.exp(v - norm)
    renorm = math.log(math.fsum(math.exp(lp) for _, lp in kept))
    processed = {k: lp - renorm for k, lp in kept}
    for tok, got in sampled:
        if tok not in processed:
            continue
        want, raw_lp = processed[tok], table[tok]
        if abs(want - raw_lp) > 10 * tol and abs(got - raw_lp) < tol and abs(got - want) > tol:
            raise ServerError(
                f"{ep.part}: the server at {ep.url} returns raw log-probs, not those of the distribution it "
                f"samples at temperature {T:g} / top-p {top_p:g} (token {tok}: {got:.4f}, processed "
                f"{want:.4f}); start it with --logprobs-mode processed_logprobs"
            )


def build_task(cfg: Any) -> Task:
    """The Task of a run config with ``backend: vllm``: problems from ``cfg.data`` (read and validated first), parts
    served as ``cfg.vllm`` says over the models of ``cfg.hf``, grading by the last ``\\boxed{}`` (Math-Verify)."""
    from specs_rl.datasets import load_problems
    from specs_rl.grading import boxed_answer_grade

    problems = load_problems(cfg.data)
    parts, _ = build_parts(cfg.vllm, cfg.hf, probe=problems[0])
    grade, grader = boxed_answer_grade(parts.answer_of)
    return Task(f"vllm:{cfg.data.dataset}", problems, parts, grade, grader)
