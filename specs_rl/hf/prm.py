"""Process reward models over transformers classifiers: rewards at step separators, with cached prefixes.

The input is the project's shared encoding (:func:`specs_rl.prm_format.encode_steps`, the one the PRM trainer
uses): ``encode(prompt) + Σ_k [encode(strip(step_k)) + encode(separator)]``, and the reward of step ``k`` is read at
the last token of its separator:

    r_k = softmax(head(h[end_k]))[positive_label]        (a 2+ class head: token classification PRMs)
    r_k = sigmoid(head(h[end_k])[0])                      (a 1-logit head: sequence-classification reward models)

A sequence-classification reward model is read the same way; at the last separator that is its score of the whole
sequence ("score at the last token"). A PRM trained with token labels (``prm_config.json`` ``step_reward:
prefix_min``) is read as the least of those probabilities over every response token up to the separator,

    r_k = min(r_{k-1}, min_{start_k <= t <= end_k} p_t),    r_{-1} = 1.

The conventions covered (the kinds of :mod:`specs_rl.prm_kinds`, which also write each kind's text):

- the project's PRMs (``prm_config.json`` next to the checkpoint: separator ``"\\n\\n"``, positive label 1);
- ``qwen_prm`` (Qwen2.5-Math-PRM): separator ``"<extra_0>"``, its chat format, 2 classes, positive label 1;
- ``skywork_prm`` (Skywork-o1-Open-PRM): one value per token, ``sigmoid`` at each ``"\\n"`` step token;
- ``shepherd_prm`` (Math-Shepherd style): a causal LM's ``[good, bad]`` logits at each step tag, label 0 = good;
- sequence-classification reward models (1 logit).

Because the encoding of ``prefix ∘ step`` extends the encoding of ``prefix`` token for token and the models are
causal, the prefix's KV cache and its step rewards are kept between calls and each call only runs the candidate
steps. The reward of a candidate aggregates the step rewards of ``prefix ∘ candidate`` (``last`` | ``min`` |
``prod``); every value is in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from specs_rl.hf.engine import LRU, CachedStack, State, row_state
from specs_rl.prm_format import PrmFormat, prefix_min_rewards
from specs_rl.prm_kinds import StepText, prompt_ids, step_ids
from specs_rl.types import Candidate, Problem, Trace


def _head(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ValueError(
        f"{type(model).__name__}: no classification head (looked for score / classifier / v_head)"
    )


class HFRewardModel:
    """``RewardModel`` over a token- or sequence-classification model, read at step separators."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        fmt: PrmFormat | None = None,
        *,
        aggregate: str = "last",
        prompt_field: str = "problem",
        chat: bool = False,
        system_prompt: str | None = None,
        cache_prompts: int = 16,
    ) -> None:
        if aggregate not in ("last", "min", "prod"):
            raise ValueError(f"aggregate must be one of last, min, prod; got {aggregate!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.fmt = fmt or PrmFormat()
        self.aggregate = aggregate
        self.prompt_field = prompt_field
        self.text = StepText(self.fmt, chat=chat, system_prompt=system_prompt, prompt_field=prompt_field)
        self.text.check(tokenizer)
        self.chat = chat
        self.system_prompt = system_prompt
        self.stack = CachedStack(model, cache_prompts=cache_prompts)
        self.head = _head(model)
        self.sep = self.fmt.step_separator
        self._prompts = LRU(1024)
        self._steps = LRU(8192)

    # -- the encoding ---------------------------------------------------------------------------------------------
    def prompt_text(self, problem: Problem) -> str:
        return self.text.prompt_text(self.tokenizer, problem)

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        key = (problem.prompt, problem.meta.get("problem"))
        hit = self._prompts.get(key)
        if hit is None:
            hit = self._prompts.put(key, prompt_ids(self.text, self.tokenizer, problem))
        return hit

    def step_ids(self, text: str, first: bool = False) -> tuple[int, ...]:
        """A step's ids as its kind writes it (:func:`specs_rl.prm_kinds.step_ids`; for the classifier kinds
        ``encode(strip(step)) + encode(separator)``, as :func:`specs_rl.prm_format.encode_steps` appends a step);
        ``first``: the response's first step (a shepherd_prm writes it after a space, later ones after a newline)."""
        key = (text, first and self.fmt.kind == "shepherd_prm")
        hit = self._steps.get(key)
        if hit is None:
            hit = self._steps.put(key, step_ids(self.text, self.tokenizer, text, first))
        return hit

    def encode(self, trace: Trace) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
        """``(prompt ids, ids, step ends)`` of a partial response."""
        pids = self.prompt_ids(trace.problem)
        ids = list(pids)
        ends = []
        for k, s in enumerate(trace.steps):
            ids.extend(self.step_ids(s.text, k == 0))
            ends.append(len(ids) - 1)
        return pids, tuple(ids), ends

    # -- rewards ---------------------------------------------------------------------------------------------------
    def rewards_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden] -> [N]`` rewards in [0, 1]."""
        with self.stack.timed():
            logits = self.head(hidden).float()  # [N, labels]
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=-1)[:, self.fmt.positive_label]

    def _agg(self, rewards: Sequence[float]) -> float:
        if self.aggregate == "last":
            return float(rewards[-1])
        if self.aggregate == "min":
            return float(min(rewards))
        return float(math.prod(rewards))

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        with torch.inference_mode(), self.stack.lock:
            enc = [self.encode(t) for t in prefixes]
            states, made = self.stack.catch_up([(p, ids) for p, ids, _ in enc], lambda st, exact: True)
            for (st, _, _), rewards in zip(made, self._step_rewards(made, enc)):
                st.rewards = rewards
            rows = [
                (i, j, self.step_ids(c.text, not prefixes[i].steps), c.finished)
                for i, cs in enumerate(candidates)
                for j, c in enumerate(cs)
            ]
            out: list[list[float]] = [[0.0] * len(cs) for cs in candidates]
            kept = [(pids, st) for (pids, _, _), st in zip(enc, states)]
            if rows:
                row_prefix = [states[i] for i, _, _, _ in rows]
                hidden, suffix = self.stack.run_rows(row_prefix, [ids for _, _, ids, _ in rows])  # [B, q, h]
                if self.fmt.step_reward == "prefix_min":
                    r_new = self._candidate_prefix_min(hidden, rows, row_prefix)
                else:
                    last = torch.tensor([len(ids) - 1 for _, _, ids, _ in rows], device=hidden.device)
                    r_new = self.rewards_of(
                        hidden[torch.arange(len(rows), device=hidden.device), last]
                    ).tolist()
                for r, ((i, j, ids, fin), g, rv) in enumerate(zip(rows, row_prefix, r_new)):
                    steps = (*g.rewards, float(rv))
                    out[i][j] = min(max(self._agg(steps), 0.0), 1.0)
                    if fin:
                        continue  # a finished response is never extended: no state to keep
                    st = row_state(g, ids, suffix, r)
                    st.rewards = steps
                    kept.append((enc[i][0], st))
            self.stack.retain(kept)
        return out

    def step_rewards(self, trace: Trace) -> list[float]:
        """The reward of every step of ``trace`` (``specs-rl prm score``), through the same cached states."""
        with torch.inference_mode(), self.stack.lock:
            enc = [self.encode(trace)]
            states, made = self.stack.catch_up([(p, ids) for p, ids, _ in enc], lambda st, exact: True)
            for (st, _, _), rewards in zip(made, self._step_rewards(made, enc)):
                st.rewards = rewards
            self.stack.retain([(enc[0][0], states[0])])
            return [float(r) for r in states[0].rewards]

    def _step_rewards(
        self,
        made: list[tuple[State, State, torch.Tensor]],
        enc: Sequence[tuple[tuple[int, ...], tuple[int, ...], list[int]]],
    ) -> list[tuple[float, ...]]:
        """Step rewards of the states a catch-up made (``(new, best, hidden)``, ``hidden``: of the tokens past
        ``best``): ``best``'s rewards, then the reward at each step end past ``best``."""
        if not made:
            return []
        ends_of = {ids: ends for _, ids, ends in enc}
        if self.fmt.step_reward == "prefix_min":
            return self._prefix_min_step_rewards(made, ends_of, {ids: len(pids) for pids, ids, _ in enc})
        picks, where = [], []
        for k, (st, best, h) in enumerate(made):
            start = len(best.ids)
            for e in ends_of[st.ids]:
                if e >= start:
                    picks.append(h[e - start])
                    where.append(k)
        vals = self.rewards_of(torch.stack(picks)).tolist() if picks else []
        extra: dict[int, list[float]] = {}
        for k, v in zip(where, vals):
            extra.setdefault(k, []).append(v)
        return [best.rewards + tuple(extra.get(k, ())) for k, (_, best, _) in enumerate(made)]

    # -- prefix_min reading ----------------------------------------------------------------------------------------
    def _prefix_min_step_rewards(
        self,
        made: list[tuple[State, State, torch.Tensor]],
        ends_of: dict[tuple[int, ...], list[int]],
        prompt_len: dict[tuple[int, ...], int],
    ) -> list[tuple[float, ...]]:
        """Step rewards of caught-up prefixes: each new step's least probability, folded into the running min."""
        p_all = self.rewards_of(torch.cat([h for _, _, h in made])).tolist()
        rewards = []
        at = 0
        for st, best, h in made:
            start = len(best.ids)
            p = [1.0] * start + p_all[at : at + len(h)]  # absolute positions; the cached ones are neutral
            at += len(h)
            ends = ends_of[st.ids]
            done = len(best.rewards)  # steps the cached prefix already read (it ends on a step boundary)
            first = ends[done - 1] + 1 if done else prompt_len[st.ids]
            initial = best.rewards[-1] if done else 1.0
            rewards.append((*best.rewards, *prefix_min_rewards(p, first, ends[done:], initial)))
        return rewards

    def _candidate_prefix_min(
        self,
        hidden: torch.Tensor,
        rows: Sequence[tuple[int, int, tuple[int, ...], bool]],
        prefixes: Sequence[State],
    ) -> list[float]:
        """Each candidate's reward: the least probability over its tokens and separator, and its prefix's reward."""
        n, length = hidden.shape[0], hidden.shape[1]
        p = self.rewards_of(hidden.reshape(n * length, -1)).reshape(n, length)  # [rows, L]
        out = []
        for r, ((_, _, ids, _), g) in enumerate(zip(rows, prefixes)):
            low = float(p[r, : len(ids)].min())
            out.append(min(low, g.rewards[-1]) if g.rewards else low)
        return out
