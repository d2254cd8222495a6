"""Search strategies as plain functions with one argument shape:

    strategy(problems, config, parts, generators) -> list[SearchResult]

All are batched over prompts: the problems advance in lockstep, one step per iteration, and every model call
covers the whole batch. Each problem is charged the full time of every batched call it took part in (run with
``batch_size: 1`` for the paper's one-problem-at-a-time latency). ``STRATEGIES`` maps method names to functions.

Randomness: ``generators`` holds one ``torch.Generator`` per problem, aligned with ``problems``. Every draw made
for a problem (its prefixes' samples, its selection, its random mode switch) comes from its own generator, and only
the draws it would make if searched alone, so a problem's result depends on its generator and not on the batch it
shares (``batch_size: 3`` writes what ``batch_size: 1`` writes, latency aside). A single generator is also
accepted and shared by every problem (one stream: then the results depend on the batch).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from specs_rl.errors import SpecsError
from specs_rl.interfaces import Generators, PrmJudge, SearchParts, StepJudge, StepSampler, generator_list
from specs_rl.models.prm_format import aggregate_rewards
from specs_rl.settings import METHODS, SearchConfig
from specs_rl.types import Candidate, Ledger, Mode, Problem, SearchResult, StepRecord, Trace
from specs_rl.verify import acceptance_test, keep_mask, next_mode, select, select_then_test, soft_scores

# ------------------------------------------------------------------------------------------------------------------
# helpers shared by the strategies


@dataclass
class _State:
    """One problem's search in progress (SPECS, RSD, sampling)."""

    trace: Trace
    mode: Mode
    generator: torch.Generator  # the problem's own
    ledger: Ledger = field(default_factory=Ledger)
    records: list[StepRecord] = field(default_factory=list)
    start: float = 0.0


def _timed(parts: SearchParts, fn: Callable, *args, **kwargs):
    t0 = parts.clock.now()
    out = fn(*args, **kwargs)
    return out, parts.clock.now() - t0


def _sample(parts: SearchParts, which: str) -> StepSampler:
    return parts.drafter if which == "draft" else parts.target


def _gen_stage(which: str) -> str:
    """The latency stage and token kind of generation by ``which`` model."""
    return "draft" if which == "draft" else "target_generate"


def _charge_tokens(ledger: Ledger, which: str, cands: Sequence[Candidate]) -> None:
    ledger.count(_gen_stage(which), sum(c.num_tokens for c in cands))
    ledger.count_speculation(cands)  # proposed / accepted draft tokens of speculative target steps


def _score_and_reward(parts: SearchParts, prefixes, cands, need_target: bool, concurrent: bool):
    """Target log-probs (if needed) and PRM rewards of the same candidates, in turn or concurrently.

    Returns ``(target_lp | None, rewards, target seconds, PRM seconds, wall seconds of the section)``; when the two
    run concurrently their times overlap and the wall time is less than their sum."""
    if not need_target:
        rewards, dt_r = _timed(parts, parts.prm.score, prefixes, cands)
        return None, rewards, 0.0, dt_r, dt_r
    if concurrent:
        (target_lp, rewards), (dt_t, dt_r), wall = parts.clock.concurrently(
            lambda: parts.scorer.score(prefixes, cands), lambda: parts.prm.score(prefixes, cands)
        )
        return target_lp, rewards, dt_t, dt_r, wall
    target_lp, dt_t = _timed(parts, parts.scorer.score, prefixes, cands)
    rewards, dt_r = _timed(parts, parts.prm.score, prefixes, cands)
    return target_lp, rewards, dt_t, dt_r, dt_t + dt_r


def _finish(
    states: Sequence[_State], problems: Sequence[Problem], method: str, parts: SearchParts
) -> list[SearchResult]:
    out = []
    end = parts.clock.now()
    for st, pb in zip(states, problems):
        st.ledger.total_s = end - st.start
        final = st.records[-1].reward if st.records else float("nan")
        out.append(
            SearchResult(pb, method, st.trace, parts.answer_of(st.trace), final, st.records, st.ledger)
        )
    return out


def _target_step(
    config: SearchConfig,
    parts: SearchParts,
    states: Sequence[_State],
    last: bool,
    deferred: Sequence[bool],
) -> None:
    """Target mode for a batch of problems: n target samples, PRM scores, keep the best (or sample softmax(β r))."""
    prefixes = [s.trace for s in states]
    gens = [s.generator for s in states]
    cands, dt_g = _timed(parts, parts.target.propose, prefixes, config.n, gens, to_end=last)
    rewards, dt_r = _timed(parts, parts.prm.score, prefixes, cands)
    for st, cs, rs, was_deferred in zip(states, cands, rewards, deferred):
        st.ledger.charge("target_generate", dt_g)
        st.ledger.charge("reward", dt_r)
        _charge_tokens(st.ledger, "target", cs)
        r = torch.tensor(rs, dtype=torch.float64)
        if config.target_select == "argmax":
            idx = int(torch.argmax(r))
        else:
            idx = select(config.beta * r, st.generator, temperature=1.0)
        st.trace = st.trace.extend(cs[idx])
        st.records.append(
            StepRecord(
                cs[idx].text,
                Mode.TARGET,
                was_deferred,
                len(cs),
                list(rs),
                list(rs),
                idx,
                {"target_generate": dt_g, "reward": dt_r},
            )
        )
        st.mode = next_mode(Mode.TARGET, best_target_reward=float(r.max()), tau_switch=config.tau_switch)


# ------------------------------------------------------------------------------------------------------------------
# SPECS


def specs(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """SPECS (docs/algorithm.md §3): draft n steps, score them with one target pass and the PRM, keep one by soft
    verification, defer to the target when every draft is rejected, switch back when the target's best reward
    exceeds ``tau_switch``.

    Ablations are options: ``score_form='reward_only'`` (no target), ``tau_reject=-inf`` (no deferral),
    ``random_switch=p`` (each step's mode drawn at random with P(target) = p; deferral still applies).
    GSI (Geuter et al. 2025) is this loop with ``acceptance='select_test'`` (choose one draft first, then test it),
    ``target_select='soft'``, ``start_mode='draft'`` and ``tau_switch=-inf`` (every step starts from the draft);
    the presets are in :mod:`specs_rl.methods`.
    """
    config.validate()
    start = Mode(config.start_mode)
    gens = generator_list(generators, len(problems))
    states = [_State(Trace(p), start, g, start=parts.clock.now()) for p, g in zip(problems, gens)]
    id_order = {id(s): k for k, s in enumerate(states)}
    for step in range(config.max_steps):
        active = [s for s in states if not s.trace.finished]
        if not active:
            break
        last = step == config.max_steps - 1
        if config.random_switch is not None:
            for s in active:
                u = float(torch.rand((), generator=s.generator, dtype=torch.float64))
                s.mode = Mode.TARGET if u < config.random_switch else Mode.DRAFT
        in_draft = [s for s in active if s.mode == Mode.DRAFT]
        to_target = [s for s in active if s.mode == Mode.TARGET]
        deferred = [False] * len(to_target)
        if in_draft and config.draft_threshold() == math.inf:
            # Every draft would be rejected: defer without drafting (same law, no wasted draft work).
            to_target += in_draft
            deferred += [True] * len(in_draft)
        elif in_draft:
            for s in _draft_step(config, parts, in_draft, last):
                to_target.append(s)
                deferred.append(True)
        if to_target:
            # Problem order, not mode order (a generator shared by the problems is consumed the same way whatever
            # the modes).
            order = sorted(range(len(to_target)), key=lambda k: id_order[id(to_target[k])])
            to_target, deferred = [to_target[k] for k in order], [deferred[k] for k in order]
            _target_step(config, parts, to_target, last, deferred)
    return _finish(states, problems, "specs", parts)


def _draft_step(
    config: SearchConfig, parts: SearchParts, states: Sequence[_State], last: bool
) -> list[_State]:
    """Draft mode for a batch; returns the states whose step is deferred: every draft dropped (``filter``) or the
    chosen draft failed its test (``select_test``)."""
    prefixes = [s.trace for s in states]
    gens = [s.generator for s in states]
    cands, dt_d = _timed(parts, parts.drafter.propose, prefixes, config.n, gens, to_end=last)
    need_target = config.score_form != "reward_only"
    target_lp, rewards, dt_t, dt_r, dt_v = _score_and_reward(
        parts, prefixes, cands, need_target, config.concurrent_scoring
    )
    deferred = []
    for i, (st, cs, rs) in enumerate(zip(states, cands, rewards)):
        st.ledger.charge("draft", dt_d)
        st.ledger.charge("target_score", dt_t)
        st.ledger.charge("reward", dt_r)
        st.ledger.charge("verify", dt_v)
        _charge_tokens(st.ledger, "draft", cs)
        r = torch.tensor(rs, dtype=torch.float64)  # [n]
        ld = torch.tensor([c.logprob for c in cs], dtype=torch.float64)  # [n]
        dl = torch.tensor([c.num_tokens for c in cs], dtype=torch.float64)  # [n]
        if need_target:
            lt = torch.tensor([sum(t) for t in target_lp[i]], dtype=torch.float64)  # [n]
            tl = torch.tensor([len(t) for t in target_lp[i]], dtype=torch.float64)  # [n]
            st.ledger.count("target_score", int(tl.sum()))
        else:
            lt, tl = ld, dl
        scores = soft_scores(lt, ld, r, config.beta, form=config.score_form, target_len=tl, draft_len=dl)
        if config.acceptance == "filter":
            keep = keep_mask(scores, config.tau_reject)  # [n]
            idx = select(scores, st.generator, keep, config.temperature) if bool(keep.any()) else None
        else:
            passes = acceptance_test(
                scores, r, on=config.accept_test, tau_reject=config.tau_reject, rsd_delta=config.rsd_delta
            )  # [n]
            idx = select_then_test(scores, passes, st.generator, config.temperature)
        if idx is None:
            deferred.append(st)
            continue
        st.trace = st.trace.extend(cs[idx])
        st.records.append(
            StepRecord(
                cs[idx].text,
                Mode.DRAFT,
                False,
                len(cs),
                scores.tolist(),
                list(rs),
                idx,
                {"draft": dt_d, "target_score": dt_t, "reward": dt_r, "verify": dt_v},
            )
        )
        st.mode = Mode.DRAFT
    return deferred


# ------------------------------------------------------------------------------------------------------------------
# RSD and plain sampling


def rsd(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """Reward-guided speculative decoding (Liao et al. 2025): the draft writes one step; it is kept if its reward is
    at least ``rsd_delta``, otherwise the target writes the step (one sample)."""
    config.validate()
    return _draft_step_or_target(
        problems, parts, generators, config.max_steps, "rsd", parts.prm.score, "reward", config.rsd_delta
    )


def _draft_step_or_target(
    problems: Sequence[Problem],
    parts: SearchParts,
    generators: Generators,
    max_steps: int,
    strategy: str,
    test: Callable[[list[Trace], list[list[Candidate]]], list[list[float]]],
    stage: str,
    threshold: float,
) -> list[SearchResult]:
    """The loop RSD and SpecReason share: the draft writes one step, ``test`` scores it (its time charged to
    ``stage``: ``reward``, RSD's PRM, or ``judge``, SpecReason's judge) and it is kept iff its value is
    ``>= threshold``; otherwise the target writes the step (one sample), which the test does not read (no pass is
    run or charged for it). A judge's values are not rewards, its read tokens are counted and its records carry
    their stage times."""
    judged = stage == "judge"
    gens = generator_list(generators, len(problems))
    states = [_State(Trace(p), Mode.DRAFT, g, start=parts.clock.now()) for p, g in zip(problems, gens)]
    for step in range(max_steps):
        active = [s for s in states if not s.trace.finished]
        if not active:
            break
        last = step == max_steps - 1
        prefixes = [s.trace for s in active]
        gens = [s.generator for s in active]
        cands, dt_d = _timed(parts, parts.drafter.propose, prefixes, 1, gens, to_end=last)
        values, dt_t = _timed(parts, test, prefixes, cands)
        rejected = []
        for st, cs, vs in zip(active, cands, values):
            st.ledger.charge("draft", dt_d)
            st.ledger.charge(stage, dt_t)
            _charge_tokens(st.ledger, "draft", cs)
            if judged:
                st.ledger.count("judge", sum(c.num_tokens for c in cs))
            if vs[0] >= threshold:
                st.trace = st.trace.extend(cs[0])
                if judged:
                    times = {"draft": dt_d, "judge": dt_t}
                    st.records.append(StepRecord(cs[0].text, Mode.DRAFT, False, 1, list(vs), [], 0, times))
                else:
                    st.records.append(StepRecord(cs[0].text, Mode.DRAFT, False, 1, list(vs), list(vs), 0))
            else:
                rejected.append(st)
        if rejected:
            prefixes = [s.trace for s in rejected]
            gens = [s.generator for s in rejected]
            cands, dt_g = _timed(parts, parts.target.propose, prefixes, 1, gens, to_end=last)
            for st, cs in zip(rejected, cands):
                st.ledger.charge("target_generate", dt_g)
                _charge_tokens(st.ledger, "target", cs)
                st.trace = st.trace.extend(cs[0])
                times = {"target_generate": dt_g} if judged else {}
                st.records.append(StepRecord(cs[0].text, Mode.TARGET, True, 1, [], [], 0, times))
    return _finish(states, problems, strategy, parts)


def judge_of(config: SearchConfig, parts: SearchParts) -> StepJudge:
    """SpecReason's judge: the backend's target judge (``judge: target``) or the PRM on the 0-9 scale (``prm``)."""
    if config.judge == "prm":
        return PrmJudge(parts.prm)
    if parts.judge is None:
        raise SpecsError("judge: target needs a backend with a target judge (tabular, hf); use judge: prm")
    return parts.judge


def specreason(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """SpecReason (Pan et al. 2025; code ruipeterpan/specreason, ``spec_reason.py``, main loop and ``get_score``):
    the draft writes one step; a judge scores it 0-9 (:func:`judge_of`); the step is kept iff its score is
    ``>= judge_threshold`` (paper: 7), otherwise the target writes the step (one sample), unread by the judge.

    Per step: ``q(y | s) = π_d(y|s) 1[J(s∘y) >= t] + P_d(J < t | s) π_t(y|s)`` for a deterministic judge score
    ``J`` (:func:`specs_rl.exact.specreason_log_law`). RSD's loop with the judge as its test, on its own 0-9 scale
    and charged to ``judge``; with ``judge: prm`` it is RSD at ``rsd_delta = judge_threshold / 9`` (same law, same
    draws)."""
    config.validate()
    judge = judge_of(config, parts)
    return _draft_step_or_target(
        problems,
        parts,
        generators,
        config.max_steps,
        "specreason",
        judge.judge,
        "judge",
        config.judge_threshold,
    )


def _sample_only(which: str, method: str):
    def strategy(
        problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
    ) -> list[SearchResult]:
        config.validate()
        mode = Mode(which)
        model = _sample(parts, which)
        gens = generator_list(generators, len(problems))
        states = [_State(Trace(p), mode, g, start=parts.clock.now()) for p, g in zip(problems, gens)]
        for step in range(config.max_steps):
            active = [s for s in states if not s.trace.finished]
            if not active:
                break
            cands, dt = _timed(
                parts,
                model.propose,
                [s.trace for s in active],
                1,
                [s.generator for s in active],
                to_end=step == config.max_steps - 1,
            )
            for st, cs in zip(active, cands):
                st.ledger.charge(_gen_stage(which), dt)
                _charge_tokens(st.ledger, which, cs)
                st.trace = st.trace.extend(cs[0])
                st.records.append(StepRecord(cs[0].text, mode, False, 1, [], [], 0))
        return _finish(states, problems, method, parts)

    strategy.__name__ = method
    strategy.__doc__ = f"Plain sampling from the {which}, step by step, one response, no reward model."
    return strategy


target_only = _sample_only("target", "target_only")
draft_only = _sample_only("draft", "draft_only")


# ------------------------------------------------------------------------------------------------------------------
# Tree searches: beam search and DVTS


@dataclass
class _Beam:
    trace: Trace
    records: list[StepRecord]
    rewards: list[float]


def _tree_search(
    problems: Sequence[Problem],
    config: SearchConfig,
    parts: SearchParts,
    generators: Generators,
    *,
    compete: bool,
    method: str,
) -> list[SearchResult]:
    """``n // beam_width`` beams per problem; each proposes ``beam_width`` steps that the PRM scores.

    ``compete=True`` (beam search, search-and-learn): the best ``n // beam_width`` of all candidates survive.
    ``compete=False`` (DVTS): every beam is its own subtree and keeps its own best candidate.
    A beam whose kept step finishes the response leaves the active set; with ``beam_refill`` (beam search only) the
    remaining active beams are copied, in turn, back up to ``n // beam_width`` before the next expansion, so every
    step still expands ``n`` candidates (search-and-learn duplicates active beams the same way). The answer is the
    finished beam with the best aggregated reward (``aggregate``); ``extra["answers"]`` lists every finished beam's.
    """
    config.validate()
    K, M = config.n // config.beam_width, config.beam_width  # noqa: N806
    model = _sample(parts, config.sampler)
    mode = Mode(config.sampler)
    gens = generator_list(generators, len(problems))
    t0 = parts.clock.now()
    active: list[list[_Beam]] = [[_Beam(Trace(p), [], []) for _ in range(K)] for p in problems]
    done: list[list[_Beam]] = [[] for _ in problems]
    ledgers = [Ledger() for _ in problems]
    for step in range(config.max_steps):
        if compete and config.beam_refill:
            active = [[beams[k % len(beams)] for k in range(K)] if beams else [] for beams in active]
        flat = [(i, b) for i, beams in enumerate(active) for b in beams]
        if not flat:
            break
        last = step == config.max_steps - 1
        prefixes = [b.trace for _, b in flat]
        cands, dt_g = _timed(parts, model.propose, prefixes, M, [gens[i] for i, _ in flat], to_end=last)
        rewards, dt_r = _timed(parts, parts.prm.score, prefixes, cands)
        pools: dict[int, list[tuple[float, int, _Beam, list[Candidate], list[float]]]] = defaultdict(list)
        for (i, beam), cs, rs in zip(flat, cands, rewards):
            if not compete:
                best = int(torch.argmax(torch.tensor(rs)))
                pools[i].append((rs[best], best, beam, cs, rs))
            else:
                for c in range(len(cs)):
                    pools[i].append((rs[c], c, beam, cs, rs))
        for i in set(i for i, _ in flat):
            ledgers[i].charge(_gen_stage(config.sampler), dt_g)
            ledgers[i].charge("reward", dt_r)
            _charge_tokens(
                ledgers[i], config.sampler, [c for (k, _), cs in zip(flat, cands) if k == i for c in cs]
            )
            pool = pools[i]
            if compete:
                # Stable sort by reward, highest first; ties keep proposal order.
                pool = sorted(pool, key=lambda e: -e[0])[: len(active[i])]
            new_active = []
            for r, c, beam, cs, rs in pool:
                rec = StepRecord(cs[c].text, mode, False, len(cs), list(rs), list(rs), c)
                nb = _Beam(beam.trace.extend(cs[c]), [*beam.records, rec], [*beam.rewards, r])
                (done[i] if nb.trace.finished else new_active).append(nb)
            active[i] = new_active
    end = parts.clock.now()
    out = []
    for i, pb in enumerate(problems):
        finished = done[i] or active[i]
        scores = [aggregate_rewards(b.rewards, config.aggregate) for b in finished]
        best = max(range(len(finished)), key=lambda k: scores[k])
        b = finished[best]
        ledgers[i].total_s = end - t0
        out.append(
            SearchResult(
                pb,
                method,
                b.trace,
                parts.answer_of(b.trace),
                scores[best],
                b.records,
                ledgers[i],
                {"completed": len(done[i]), "answers": [parts.answer_of(f.trace) for f in finished]},
            )
        )
    return out


def beam_search(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """Beam search with a PRM (search-and-learn): ``n`` candidates per step, the best ``n // beam_width`` survive.
    ``beam_width = n`` is the paper's single-survivor form. ``sampler`` picks BS(B) (target) or BS(S) (draft)."""
    return _tree_search(problems, config, parts, generators, compete=True, method="beam_search")


def dvts(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """Diverse verifier tree search: ``n // beam_width`` independent subtrees, each greedy on the PRM."""
    return _tree_search(problems, config, parts, generators, compete=False, method="dvts")


# ------------------------------------------------------------------------------------------------------------------
# Best-of-n


def best_of_n(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """``n`` whole responses from ``sampler``; each response's score aggregates its step rewards (``aggregate``);
    the answer is the top-scored response (naive), the answer with the largest summed score (weighted), or the
    most frequent answer (majority, ties to the larger summed score)."""
    config.validate()
    model = _sample(parts, config.sampler)
    mode = Mode(config.sampler)
    gens = generator_list(generators, len(problems))
    t0 = parts.clock.now()
    traces = [[Trace(p) for _ in range(config.n)] for p in problems]
    step_rewards = [[[] for _ in range(config.n)] for _ in problems]
    records = [[[] for _ in range(config.n)] for _ in problems]
    ledgers = [Ledger() for _ in problems]
    for step in range(config.max_steps):
        flat = [(i, j) for i in range(len(problems)) for j in range(config.n) if not traces[i][j].finished]
        if not flat:
            break
        cands, dt_g = _timed(
            parts,
            model.propose,
            [traces[i][j] for i, j in flat],
            1,
            [gens[i] for i, _ in flat],
            to_end=step == config.max_steps - 1,
        )
        # Only finished responses need a score under 'last'; min/prod need every step.
        to_score = [k for k, cs in enumerate(cands) if config.aggregate != "last" or cs[0].finished]
        rewards, dt_r = ({}, 0.0)
        if to_score:
            rs, dt_r = _timed(
                parts,
                parts.prm.score,
                [traces[flat[k][0]][flat[k][1]] for k in to_score],
                [cands[k] for k in to_score],
            )
            rewards = {k: r[0] for k, r in zip(to_score, rs)}
        for i in {i for i, _ in flat}:
            ledgers[i].charge(_gen_stage(config.sampler), dt_g)
            ledgers[i].charge("reward", dt_r if any(flat[k][0] == i for k in to_score) else 0.0)
        for k, ((i, j), cs) in enumerate(zip(flat, cands)):
            _charge_tokens(ledgers[i], config.sampler, cs)
            traces[i][j] = traces[i][j].extend(cs[0])
            r = rewards.get(k, float("nan"))
            if k in rewards:
                step_rewards[i][j].append(r)
            records[i][j].append(StepRecord(cs[0].text, mode, False, 1, [r], [r], 0))
    end = parts.clock.now()
    out = []
    for i, pb in enumerate(problems):
        scores = [aggregate_rewards(step_rewards[i][j], config.aggregate) for j in range(config.n)]
        answers = [parts.answer_of(t) for t in traces[i]]
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for a, s in zip(answers, scores):
            totals[a] += 0.0 if math.isnan(s) else s
            counts[a] += 1
        if config.bon_vote == "naive":
            best = max(range(config.n), key=lambda j: scores[j] if not math.isnan(scores[j]) else -math.inf)
        else:
            rank = {
                a: (totals[a],) if config.bon_vote == "weighted" else (counts[a], totals[a]) for a in totals
            }
            winner = max(rank, key=rank.__getitem__)
            best = max((j for j in range(config.n) if answers[j] == winner), key=lambda j: scores[j])
        ledgers[i].total_s = end - t0
        out.append(
            SearchResult(
                pb,
                "best_of_n",
                traces[i][best],
                answers[best],
                scores[best],
                records[i][best],
                ledgers[i],
                {"answers": answers, "scores": scores},
            )
        )
    return out


STRATEGIES: dict[
    str, Callable[[Sequence[Problem], SearchConfig, SearchParts, Generators], list[SearchResult]]
] = {
    "specs": specs,
    "beam_search": beam_search,
    "best_of_n": best_of_n,
    "dvts": dvts,
    "rsd": rsd,
    "specreason": specreason,
    "target_only": target_only,
    "draft_only": draft_only,
}


__all__ = ["METHODS", "STRATEGIES", "SearchConfig", "run_search", *STRATEGIES]


def run_search(
    problems: Sequence[Problem], config: SearchConfig, parts: SearchParts, generators: Generators
) -> list[SearchResult]:
    """Dispatch on ``config.strategy``. ``generators``: one per problem, aligned with ``problems`` (a problem's
    draws come from its own generator only), or one generator shared by all."""
    config.validate()
    if config.speculative_tokens:
        parts = with_speculative_target(parts, config.speculative_tokens)
    return STRATEGIES[config.strategy](problems, config, parts, generators)


def with_speculative_target(parts: SearchParts, k: int) -> SearchParts:
    """``parts`` whose target writes by speculative sampling with the drafter, ``k`` draft tokens a round; a
    :class:`SpecsError` where the backend has no token-level parts (the tabular world is step-level: a token rule
    has nothing to act on there; vLLM speculates inside its server, ``--speculative-config``)."""
    if parts.speculative_target is None:
        raise SpecsError(
            "speculative_tokens needs a backend with token-level parts (backend: hf); on vLLM start the target "
            "server with --speculative-config (a GPU build: the CPU build 0.32.0 samples wrongly at T > 0)"
        )
    return dataclasses.replace(parts, target=parts.speculative_target(k))
