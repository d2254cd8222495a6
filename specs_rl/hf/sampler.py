"""Draft and target samplers over a causal LM: batched step sampling with string-level stops.

:class:`HFSampler` implements ``StepSampler.propose`` of :mod:`specs_rl.interfaces` on an :class:`HFLM`, which owns
the model, its tokenizer and its cache of prefix states (:mod:`specs_rl.hf.engine`) and which the target scorer
(:mod:`specs_rl.hf.scorer`) shares.

Log-probabilities. The vocabulary is the range shared by the tokenizer and the model's output rows
(``vocab = min(len(tokenizer), rows)``, and for a draft/target pair the smaller of the two): Qwen2.5-1.5B has 151936
rows and 7B 152064 over the same 151665-token tokenizer; the padding rows are never sampled and never enter a
normalizer, so a padded and an unpadded copy of a model give identical numbers. ``Candidate.logprobs`` are
log-probabilities under the distribution actually sampled from, ``log softmax(logits / T)`` restricted to the top-p
nucleus and renormalized (0 at T = 0, a point mass): that is the proposal ``π_d`` soft verification divides by.
The scorer returns the target's untempered ``log softmax(logits)`` over the same range.

Randomness. Each call draws one 62-bit seed from each prefix's generator (one draw per distinct generator, shared by
its prefixes: :func:`specs_rl.interfaces.prefix_seeds`); candidate ``j`` of a prefix gets its own stream seeded by
``hash(call seed, token ids of the prefix, j, occurrence of the prefix among its generator's prefixes)``
(:func:`specs_rl.models.seeds.request_seed`) and draws one uniform per token (inverse-CDF sampling). So a prefix's
candidates depend only on its generator's state and on the prefix itself, never on the other prefixes of the batch:
a batched call and single-prefix calls made with
generators in the same state agree token for token (up to floating-point ties at a CDF boundary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specs_rl.hf.cascade import make_suffix_cache
from specs_rl.hf.engine import CachedStack, State, row_state
from specs_rl.interfaces import Generators, prefix_seeds
from specs_rl.models.cache import LRU
from specs_rl.models.prompts import GeneratorPrompts
from specs_rl.models.seeds import request_seed
from specs_rl.models.text import StepStop, TokenText
from specs_rl.models.tokens import eos_ids
from specs_rl.speculative import processed_logprobs
from specs_rl.types import Candidate, Problem, Trace

UNIFORM_BLOCK = 64  # uniforms drawn per row at a time


class HFLM:
    """A causal LM with its tokenizer, its prefix-state cache and the prompt format of the generators.

    ``native``: whether ``Candidate.token_ids`` of the search are this model's token ids (all generators share the
    tokenizer). When not, every step is re-tokenized from its text (approximate, see :class:`~specs_rl.hf.scorer.HFScorer`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        vocab: int | None = None,
        chat_template: bool = True,
        system_prompt: str | None = None,
        cache_prompts: int = 16,
        name: str = "model",
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.stack = CachedStack(model, cache_prompts=cache_prompts)
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise ValueError(f"{name}: the model has no output embeddings (not a causal LM)")
        rows = int(self.head.weight.shape[0])
        self.vocab = min(len(tokenizer), rows) if vocab is None else min(vocab, rows)
        self.text = TokenText(tokenizer, self.vocab)
        self.eos_ids = self._eos_ids()
        cfg = model.config.get_text_config()
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        self.prompts = GeneratorPrompts(tokenizer, chat_template=chat_template, system_prompt=system_prompt)
        self.native = True
        self._steps = LRU(8192)

    def _eos_ids(self) -> frozenset[int]:
        gen = getattr(self.model, "generation_config", None)
        return eos_ids(
            self.tokenizer, getattr(gen, "eos_token_id", None) if gen is not None else None, self.vocab
        )

    def set_vocab(self, vocab: int) -> None:
        """Restrict sampling and scoring to the first ``vocab`` ids (the range a draft/target pair shares)."""
        self.vocab = vocab
        self.text = TokenText(self.tokenizer, vocab)
        self.eos_ids = self._eos_ids()

    # -- token ids of prompts and prefixes ----------------------------------------------------------------------
    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        """The prompt as this model sees it: the chat template with a generation prompt when available."""
        return self.prompts.ids(problem)

    def encode_step(self, text: str) -> tuple[int, ...]:
        hit = self._steps.get(text)
        if hit is None:
            hit = self._steps.put(text, tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        return hit

    def key(self, trace: Trace) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(prompt ids, prompt ids + response ids)`` of a partial response."""
        pids = self.prompt_ids(trace.problem)
        if self.native:
            return pids, pids + trace.token_ids
        return pids, pids + tuple(t for s in trace.steps for t in self.encode_step(s.text))

    # -- states with next-token logits ----------------------------------------------------------------------------
    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden] -> [N, rows]`` float32 logits (timed as forward work)."""
        with self.stack.timed():
            return self.head(hidden).float()

    def states(self, keys: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[State]:
        """Prefix states with next-token logits, extending cached ancestors in one batched pass."""

        def usable(st: State, exact: bool) -> bool:
            return st.logits is not None or not exact  # a sampled step's state has no logits: only extended

        states, made = self.stack.catch_up(keys, usable)
        if made:
            logits = self.logits_of(torch.stack([h[-1] for _, _, h in made]))  # [N, rows]
            for (st, _, _), lg in zip(made, logits):
                st.logits = lg
        return states


def sample_from_logits(
    logits: torch.Tensor,  # [B, V] float32
    u: torch.Tensor,  # [B] float64 in [0, 1)
    temperature: float,
    top_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[B]`` and their log-probabilities ``[B]`` under the sampled law.

    The law is ``p = softmax(logits / T)`` cut to the smallest set of most likely tokens whose mass reaches ``top_p``
    and renormalized; token = the first index whose CDF exceeds ``u · CDF[-1]`` (inverse-CDF sampling, exact for a
    uniform ``u``). ``T = 0`` is greedy with log-probability 0.
    """
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    logp = processed_logprobs(
        logits, temperature, top_p
    )  # [B, V]: the law speculative sampling checks against
    cdf = logp.exp().double().cumsum(-1)  # [B, V]
    x = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    tok = torch.searchsorted(cdf, x, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)


@dataclass(eq=False)
class _Row:
    """One candidate step being sampled: the cached ``prefix`` continued by ``tokens``."""

    prefix: State
    rng: torch.Generator  # the row's own stream of uniforms
    step_limit: int  # the most tokens this step may have
    hard_limit: int  # the tokens the response has left (max_tokens, the model's context): finished there
    stop: Any  # the StepStop state of the decoded text
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # under the sampled law, one per token
    done: bool = False  # the step has ended
    finished: bool = False  # the response has ended (end-of-sequence, its limit, or ``to_end``)
    state: State | None = None  # the cached state of ``tokens[:-1]`` (an unfinished step), for the next call


def _uniforms(rows: Sequence[_Row], device: torch.device) -> torch.Tensor:
    """The next ``UNIFORM_BLOCK`` uniforms of each row's stream: ``[len(rows), UNIFORM_BLOCK]`` float64."""
    uni = [torch.rand(UNIFORM_BLOCK, generator=r.rng, dtype=torch.float64) for r in rows]
    return torch.stack(uni).to(device)


class HFSampler:
    """``StepSampler`` over an :class:`HFLM`: ``n`` candidate steps per prefix, all prefixes in one batch.

    A step ends (i) with the token that completes ``delimiter`` in the decoded text (see :mod:`specs_rl.models.text`
    for what the step text then holds), (ii) at end-of-sequence (kept in ``token_ids`` so the target scores it,
    dropped from ``text``; ``finished=True``), or (iii) after ``max_step_tokens`` tokens (``finished=False``).
    ``to_end=True`` samples to end-of-sequence or the response limit (``finished=True`` either way). A response
    that reaches ``max_tokens`` tokens (or the model's context) is finished whatever stopped the step.
    """

    def __init__(
        self,
        lm: HFLM,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        delimiter: str = "\n\n",
        max_step_tokens: int = 512,
        max_tokens: int = 2048,
        ignore_eos: bool = False,
    ) -> None:
        if not lm.stack.cascade:
            raise ValueError(
                f"{lm.name}: its attention does not go through transformers' AttentionInterface, so it cannot "
                "sample with a cached prefix"
            )
        self.lm = lm
        self.temperature = temperature
        self.top_p = top_p
        self.stop = StepStop(delimiter, lm.text)
        self.max_step_tokens = max_step_tokens
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos

    def sync_stop(self) -> None:
        """Rebuild the step-stop rule when the model's token text was replaced (a vocabulary change)."""
        if self.lm.text is not self.stop.text:
            self.stop = StepStop(self.stop.delimiter, self.lm.text)

    def propose(
        self, prefixes: Sequence[Trace], n: int, generators: Generators, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prefixes:
            return []
        lm = self.lm
        self.sync_stop()
        with torch.inference_mode(), lm.stack.lock:
            keys = [lm.key(t) for t in prefixes]
            seeds = prefix_seeds(generators, [ids for _, ids in keys])  # (call seed, occurrence) per prefix
            states = lm.states(keys)
            rows = self._generate(keys, states, n, seeds, to_end)
            pkeys = [pids for pids, _ in keys]
            made = [(pkeys[r // n], row.state) for r, row in enumerate(rows) if row.state is not None]
            lm.stack.retain([*zip(pkeys, states), *made])
        cands = [
            Candidate(tuple(r.tokens), lm.text.text(r.tokens), tuple(r.logprobs), r.finished) for r in rows
        ]
        return [cands[i * n : (i + 1) * n] for i in range(len(prefixes))]

    def _generate(
        self,
        keys: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
        states: Sequence[State],
        n: int,
        seeds: Sequence[tuple[int, int]],
        to_end: bool,
    ) -> list[_Row]:
        """``n`` rows per prefix (``keys[i]``, cached as ``states[i]``), each sampled to the end of its step.

        All rows decode in one batch, one forward per token. Once half of the batch is done, it keeps only the rows
        still sampling: a filter of the row list, and one index into their suffix KV, context and uniforms.
        """
        lm, stack = self.lm, self.lm.stack
        dev = stack.device
        rows: list[_Row] = []
        for (pids, ids), st, (call_seed, occ) in zip(keys, states, seeds):
            left = max(min(self.max_tokens - (len(ids) - len(pids)), lm.max_positions - len(ids)), 1)
            step = left if to_end else min(left, self.max_step_tokens)
            for j in range(n):
                rng = torch.Generator().manual_seed(request_seed(call_seed, ids, occ, choice=j))
                rows.append(_Row(st, rng, step_limit=step, hard_limit=left, stop=self.stop.start()))
        ctx = stack.context([row.prefix for row in rows])
        suffix = make_suffix_cache(stack.num_layers, min(max(row.step_limit for row in rows), 64))
        base_pos = torch.tensor([len(row.prefix.ids) for row in rows], device=dev)  # [B]
        logits = torch.stack([row.prefix.logits for row in rows])  # [B, rows]
        eos, vocab = lm.eos_ids, lm.vocab
        ban = sorted(eos) if self.ignore_eos and eos else None
        batch = rows  # batch position -> row
        uni = _uniforms(batch, dev)  # [B, t_max] float64: each row's next uniforms
        t = 0
        while True:
            if t >= uni.shape[1]:
                uni = torch.cat([uni, _uniforms(batch, dev)], dim=1)
            lg = logits[:, :vocab].float()
            if ban is not None:
                lg[:, ban] = -math.inf
            tok, lp = sample_from_logits(lg, uni[:, t], self.temperature, self.top_p)  # [b], [b]
            toks, lps = torch.stack([tok.double(), lp.double()]).tolist()
            for k, row in enumerate(batch):
                if row.done:
                    continue
                tk = int(toks[k])
                row.tokens.append(tk)
                row.logprobs.append(lps[k])
                if tk in eos and not self.ignore_eos:
                    row.done = row.finished = True
                elif not to_end:
                    row.done, row.stop = self.stop.feed(row.stop, tk)
                count = len(row.tokens)
                if row.done or count >= row.step_limit:
                    row.done = True
                    row.finished = row.finished or to_end or count >= row.hard_limit
                    # the step's last token is not run yet: keep the state before it for the next call
                    if not row.finished and count > 1:
                        row.state = row_state(row.prefix, row.tokens[:-1], suffix, k)
            alive = [k for k, row in enumerate(batch) if not row.done]
            if not alive:
                return rows
            if len(alive) <= len(batch) // 2:
                idx = torch.tensor(alive, device=dev)
                suffix.select_rows(idx)
                ctx.select_rows(idx)
                tok, base_pos, uni = tok[idx], base_pos[idx], uni[idx]
                batch = [batch[k] for k in alive]
            hidden = stack.forward(ctx, suffix, tok[:, None], (base_pos + t)[:, None], None)  # [b, 1, hidden]
            logits = lm.logits_of(hidden[:, 0])  # [b, rows]
            t += 1
