"""``backend: hf``: build the search parts (draft, target, scorer, PRM, clock) from a :class:`ModelsConfig`, and the
Task of a run config: a math benchmark searched with transformers models (real, GGUF or tiny random ones), graded
on the boxed answer by Math-Verify."""

from __future__ import annotations

import dataclasses
from typing import Any

from specs_rl.datasets import load_problems
from specs_rl.errors import SpecsError
from specs_rl.grading import boxed_answer, boxed_answer_grade
from specs_rl.hf.judge import HFJudge
from specs_rl.hf.load import check_sources, load_causal_lm, load_reward_model
from specs_rl.hf.prm import HFRewardModel
from specs_rl.hf.sampler import HFLM, HFSampler
from specs_rl.hf.scorer import HFScorer
from specs_rl.hf.speculative import SpeculativeSampler
from specs_rl.hf.streams import cuda_devices, scoring_clock
from specs_rl.interfaces import Clock, SearchParts, Task
from specs_rl.models.config import ModelsConfig, ModelSpec, PrmSpec, TinySpec
from specs_rl.models.judge import DEFAULT_JUDGE_PROMPT
from specs_rl.models.tokens import same_tokenizer


def build_task(cfg: Any) -> Task:
    """The Task of a run config with ``backend: hf``: problems from ``cfg.data`` (read and validated first, so a bad
    data file fails before any model loads), parts from ``cfg.hf``, grading by the last ``\\boxed{}`` of the
    response against the gold answer (Math-Verify in a worker process)."""
    problems = load_problems(cfg.data)
    parts = build_parts(cfg.hf)
    grade, grader = boxed_answer_grade(parts.answer_of)
    return Task(f"hf:{cfg.data.dataset}", problems, parts, grade, grader)


def _model_key(spec: ModelSpec) -> tuple:
    tiny = dataclasses.astuple(spec.tiny) if spec.name.startswith("tiny") else None
    return (
        spec.name,
        spec.gguf_file,
        spec.tokenizer,
        spec.revision,
        spec.trust_remote_code,
        spec.device,
        spec.dtype,
        tiny,
    )


def build_prm(spec: PrmSpec, cache_prompts: int = 16) -> HFRewardModel:
    """The PRM of ``spec`` in this process (also what the vLLM backend runs beside its servers for a PRM that vLLM
    cannot serve: the run layer passes this function to it)."""
    check_sources({"hf.prm": spec})
    model, tok, fmt = load_reward_model(spec)
    try:
        return HFRewardModel(
            model,
            tok,
            fmt,
            aggregate=spec.aggregate,
            prompt_field=spec.prompt_field,
            chat=spec.chat,
            system_prompt=spec.system_prompt,
            cache_prompts=cache_prompts,
        )
    except ValueError as e:
        raise SpecsError(f"hf.prm: {e}") from None


def build_parts(cfg: ModelsConfig, clock: Clock | None = None) -> SearchParts:
    """Load the draft, target and PRM of ``cfg`` and wire them into :class:`SearchParts`.

    Identical draft and target specs share one loaded model (and its cache). When the two tokenizers agree, token
    ids are shared and sampling/scoring use the vocabulary range both models have; otherwise every step is
    re-tokenized from its text (see :class:`~specs_rl.hf.scorer.HFScorer`). ``clock`` defaults to
    :class:`~specs_rl.interfaces.WallClock` (CUDA-synchronized), or, when a model is on CUDA, to
    :class:`~specs_rl.hf.streams.StreamClock`, whose concurrent sections (``concurrent_scoring``) give target
    scoring and PRM scoring a CUDA stream each.
    """
    try:
        cfg.validate()
    except ValueError as e:
        raise SpecsError(str(e)) from None
    check_sources({"hf.draft": cfg.draft, "hf.target": cfg.target, "hf.prm": cfg.prm})
    common = dict(
        chat_template=cfg.chat_template, system_prompt=cfg.system_prompt, cache_prompts=cfg.cache_prompts
    )
    d_model, d_tok = load_causal_lm(cfg.draft, "hf.draft")
    lm_d = HFLM(d_model, d_tok, name="draft", **common)
    if _model_key(cfg.target) == _model_key(cfg.draft):
        lm_t = lm_d
    else:
        t_model, t_tok = load_causal_lm(cfg.target, "hf.target")
        lm_t = HFLM(t_model, t_tok, name="target", **common)
    if same_tokenizer(lm_d.tokenizer, lm_t.tokenizer):
        shared = min(lm_d.vocab, lm_t.vocab)
        lm_d.set_vocab(shared)
        lm_t.set_vocab(shared)
    else:
        lm_d.native = lm_t.native = False
    step = dict(delimiter=cfg.step_delimiter, max_step_tokens=cfg.max_step_tokens, max_tokens=cfg.max_tokens)
    try:
        drafter = HFSampler(
            lm_d,
            temperature=cfg.draft.temperature,
            top_p=cfg.draft.top_p,
            ignore_eos=cfg.draft.ignore_eos,
            **step,
        )
        target = HFSampler(
            lm_t,
            temperature=cfg.target.temperature,
            top_p=cfg.target.top_p,
            ignore_eos=cfg.target.ignore_eos,
            **step,
        )
        plain_target = target
        if cfg.target.speculative_tokens:  # the target writes by speculative sampling with the draft
            if not lm_t.native:
                raise ValueError(
                    "hf.target.speculative_tokens needs a draft and a target that share a tokenizer "
                    f"({cfg.draft.name} and {cfg.target.name} do not)"
                )
            target = SpeculativeSampler(drafter, target, cfg.target.speculative_tokens)
    except ValueError as e:
        raise SpecsError(str(e)) from None
    prm = build_prm(cfg.prm, cfg.cache_prompts)

    def speculative_target(k: int) -> SpeculativeSampler:
        """The target writing by speculative sampling with the draft, k tokens a round (a method's
        ``speculative_tokens``, e.g. the target_sd preset), on the models already loaded."""
        try:
            return SpeculativeSampler(drafter, plain_target, k)
        except ValueError as e:
            raise SpecsError(str(e)) from None

    return SearchParts(
        drafter=drafter,
        target=target,
        speculative_target=speculative_target,
        scorer=HFScorer(lm_t, source=lm_d),
        prm=prm,
        clock=clock or scoring_clock(cuda_devices([lm_d.model, lm_t.model, prm.model])),
        answer_of=boxed_answer,
        judge=HFJudge(
            lm_t,
            prompt=cfg.judge_prompt or DEFAULT_JUDGE_PROMPT,
            answer_prefix=cfg.judge_answer_prefix,
            chat_template=cfg.chat_template,
            system_prompt=cfg.system_prompt,
        ),
    )


def tiny_parts(seed: int = 0, **kw: Any) -> SearchParts:
    """Tiny random draft (Llama, width 32), target (Qwen2, width 64) and token-classification PRM on the CPU.

    Both samplers run at temperature 1 and top-p 1, so the target scorer reproduces the target sampler's own
    log-probs. Steps are short (``max_step_tokens=8``, ``max_tokens=48``); ``kw`` overrides any
    :class:`ModelsConfig` field.
    """
    cfg = ModelsConfig(
        draft=ModelSpec(
            name="tiny:llama", device="cpu", temperature=1.0, tiny=TinySpec(hidden_size=32, seed=seed + 1)
        ),
        target=ModelSpec(
            name="tiny:qwen2", device="cpu", temperature=1.0, tiny=TinySpec(hidden_size=64, seed=seed + 2)
        ),
        prm=PrmSpec(name="tiny:llama", device="cpu", tiny=TinySpec(hidden_size=32, seed=seed + 3)),
        max_step_tokens=8,
        max_tokens=48,
    )
    return build_parts(dataclasses.replace(cfg, **kw))


def backend_stacks(parts: SearchParts) -> list[Any]:
    """The distinct cached model stacks behind ``parts`` (for forward-time counters)."""
    seen, out = set(), []
    for obj in (parts.drafter, parts.target, parts.scorer, parts.prm):
        lm = getattr(obj, "lm", None)
        stack = lm.stack if lm is not None else getattr(obj, "stack", None)
        if stack is not None and id(stack) not in seen:
            seen.add(id(stack))
            out.append(stack)
    return out


def forward_seconds(parts: SearchParts) -> float:
    """Seconds spent inside model forward passes (bodies and heads) since the last :func:`reset_stats`."""
    return sum(s.stats["forward_s"] for s in backend_stacks(parts))


def reset_stats(parts: SearchParts) -> None:
    for s in backend_stacks(parts):
        s.stats.update(forward_s=0.0, forward_calls=0, forward_tokens=0)
