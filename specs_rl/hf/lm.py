"""Draft and target over a causal LM: batched step sampling with string-level stops, and one-pass target scoring.

Both implement the protocols of :mod:`specs_rl.interfaces` (``StepSampler.propose``, ``TargetScorer.score``) on a
:class:`HFLM`, which owns the model, its tokenizer and its cache of prefix states (:mod:`specs_rl.hf.engine`).

Log-probabilities. The vocabulary is the range shared by the tokenizer and the model's output rows
(``vocab = min(len(tokenizer), rows)``, and for a draft/target pair the smaller of the two): Qwen2.5-1.5B has 151936
rows and 7B 152064 over the same 151665-token tokenizer; the padding rows are never sampled and never enter a
normalizer, so a padded and an unpadded copy of a model give identical numbers. ``Candidate.logprobs`` are
log-probabilities under the distribution actually sampled from, ``log softmax(logits / T)`` restricted to the top-p
nucleus and renormalized (0 at T = 0, a point mass): that is the proposal ``π_d`` soft verification divides by.
The scorer returns the target's untempered ``log softmax(logits)`` over the same range.

Randomness. Each call draws one 63-bit seed from the passed generator; candidate ``j`` of a prefix gets its own
stream seeded by ``hash(call seed, token ids of the prefix, j, occurrence of the prefix in the call)`` and draws one
uniform per token (inverse-CDF sampling). So a prefix's candidates depend only on the generator's state and on the
prefix itself, never on the other prefixes of the batch: a batched call and single-prefix calls made with
generators in the same state agree token for token (up to floating-point ties at a CDF boundary).
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Sequence
from typing import Any

import torch

from specs_rl.errors import SpecsError
from specs_rl.hf.cascade import make_suffix_cache
from specs_rl.hf.engine import LRU, CachedStack, State, row_state
from specs_rl.hf.text import StepStop, TokenText
from specs_rl.types import Candidate, Problem, Trace

UNIFORM_BLOCK = 64  # uniforms drawn per row at a time


class HFLM:
    """A causal LM with its tokenizer, its prefix-state cache and the prompt format of the generators.

    ``native``: whether ``Candidate.token_ids`` of the search are this model's token ids (all generators share the
    tokenizer). When not, every step is re-tokenized from its text (approximate, see :class:`HFScorer`).
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
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.native = True
        self._prompts = LRU(1024)
        self._steps = LRU(8192)

    def _eos_ids(self) -> frozenset[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return frozenset(i for i in ids if 0 <= i < self.vocab)

    def set_vocab(self, vocab: int) -> None:
        """Restrict sampling and scoring to the first ``vocab`` ids (the range a draft/target pair shares)."""
        self.vocab = vocab
        self.text = TokenText(self.tokenizer, vocab)
        self.eos_ids = self._eos_ids()

    # -- token ids of prompts and prefixes ----------------------------------------------------------------------
    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        """The prompt as this model sees it: the chat template with a generation prompt when available."""
        hit = self._prompts.get(problem.prompt)
        if hit is not None:
            return hit
        if self.chat_template:
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": problem.prompt})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(problem.prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise SpecsError(f"problem {problem.id!r}: the prompt encodes to no tokens")
        return self._prompts.put(problem.prompt, tuple(int(i) for i in ids))

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


def _row_seed(call_seed: int, ids: tuple[int, ...], j: int, occurrence: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(call_seed.to_bytes(8, "little"))
    h.update(array("q", ids).tobytes())
    h.update(j.to_bytes(4, "little"))
    h.update(occurrence.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


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
    logp = torch.log_softmax(logits / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        p = sorted_lp.exp()
        drop = (p.cumsum(-1) - p) >= top_p  # mass of strictly more likely tokens already reaches top_p
        sorted_lp = sorted_lp.masked_fill(drop, -math.inf)
        logp = torch.full_like(logp, -math.inf).scatter(-1, order, sorted_lp)
        logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
    cdf = logp.exp().double().cumsum(-1)  # [B, V]
    x = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    tok = torch.searchsorted(cdf, x, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)


class HFSampler:
    """``StepSampler`` over an :class:`HFLM`: ``n`` candidate steps per prefix, all prefixes in one batch.

    A step ends (i) with the token that completes ``delimiter`` in the decoded text (see :mod:`specs_rl.hf.text`
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

    def propose(
        self, prefixes: Sequence[Trace], n: int, generator: torch.Generator, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prefixes:
            return []
        call_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lm = self.lm
        if lm.text is not self.stop.text:
            self.stop = StepStop(self.stop.delimiter, lm.text)
        with torch.inference_mode(), lm.stack.lock:
            keys = [lm.key(t) for t in prefixes]
            states = lm.states(keys)
            seen: dict[tuple[int, ...], int] = {}
            seeds, hard, step = [], [], []
            for pids, ids in keys:
                occ = seen.get(ids, 0)
                seen[ids] = occ + 1
                seeds.extend(_row_seed(call_seed, ids, j, occ) for j in range(n))
                left = min(self.max_tokens - (len(ids) - len(pids)), lm.max_positions - len(ids))
                h = max(left, 1)
                hard.append(h)
                step.append(h if to_end else min(h, self.max_step_tokens))
            rows = self._generate(keys, states, n, seeds, hard, step, to_end)
            pkeys = [pids for pids, _ in keys]
            made = [(pkeys[r // n], row[3]) for r, row in enumerate(rows) if row[3] is not None]
            lm.stack.retain([*zip(pkeys, states), *made])
        out: list[list[Candidate]] = []
        for i in range(len(prefixes)):
            cands = []
            for toks, lps, finished, _ in rows[i * n : (i + 1) * n]:
                cands.append(Candidate(tuple(toks), lm.text.text(toks), tuple(lps), finished))
            out.append(cands)
        return out

    def _generate(self, keys, states, n, seeds, hard, step, to_end):
        lm, stack = self.lm, self.lm.stack
        dev = stack.device
        B = len(states) * n  # noqa: N806
        row_prefix = [states[r // n] for r in range(B)]
        ctx = stack.context(row_prefix)
        longest = max(step)
        suffix = make_suffix_cache(stack.num_layers, min(longest, 64))
        base_pos = torch.tensor([len(p.ids) for p in row_prefix], device=dev)  # [B]
        logits = torch.stack([p.logits for p in row_prefix])  # [B, rows]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        uni = torch.stack([torch.rand(UNIFORM_BLOCK, generator=g, dtype=torch.float64) for g in gens]).to(dev)
        eos = lm.eos_ids
        vocab = lm.vocab
        ban = sorted(eos) if self.ignore_eos and eos else None
        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        finished = [False] * B
        pending: list[State | None] = [None] * B
        done = [False] * B
        stop_state = [self.stop.start() for _ in range(B)]
        cur = list(range(B))  # batch position -> row
        cur_t = torch.arange(B, device=dev)
        step_limit = [step[r // n] for r in range(B)]
        hard_limit = [hard[r // n] for r in range(B)]
        t = 0
        while True:
            if t >= uni.shape[1]:
                more = [torch.rand(UNIFORM_BLOCK, generator=g, dtype=torch.float64) for g in gens]
                uni = torch.cat([uni, torch.stack(more).to(dev)], dim=1)
            lg = logits[:, :vocab].float()
            if ban is not None:
                lg[:, ban] = -math.inf
            tok, lp = sample_from_logits(lg, uni[cur_t, t], self.temperature, self.top_p)
            pair = torch.stack([tok.double(), lp.double()]).tolist()
            for k, r in enumerate(cur):
                if done[r]:
                    continue
                tk = int(pair[0][k])
                toks[r].append(tk)
                lps[r].append(float(pair[1][k]))
                count = len(toks[r])
                stop = False
                if tk in eos and not self.ignore_eos:
                    stop, finished[r] = True, True
                elif not to_end:
                    hit, stop_state[r] = self.stop.feed(stop_state[r], tk)
                    stop = hit
                if not stop and count >= step_limit[r]:
                    stop = True
                if stop:
                    done[r] = True
                    finished[r] = finished[r] or to_end or count >= hard_limit[r]
                    if not finished[r] and count > 1:
                        pending[r] = row_state(row_prefix[r], toks[r][:-1], suffix, k)
            alive = [k for k, r in enumerate(cur) if not done[r]]
            if not alive:
                break
            if len(alive) <= len(cur) // 2:
                idx = torch.tensor(alive, device=dev)
                suffix.select_rows(idx)
                ctx.select_rows(idx)
                tok, base_pos, cur_t = tok[idx], base_pos[idx], cur_t[idx]
                cur = [cur[k] for k in alive]
            hidden = stack.forward(ctx, suffix, tok[:, None], (base_pos + t)[:, None], None)  # [b, 1, hidden]
            logits = lm.logits_of(hidden[:, 0])
            t += 1
        return [(toks[r], lps[r], finished[r], pending[r]) for r in range(B)]


class HFScorer:
    """``TargetScorer``: log-probs of candidate steps under the target in one batched forward pass per call.

    Each candidate is a row continuing its prefix's cached state; the first token's log-prob comes from the
    prefix's stored next-token logits, the others from the pass. The pass leaves every unfinished candidate's state
    (its KV and the logits after it) in the target's cache, so the next step, whichever candidate is kept, starts
    from a ready cache.

    When draft and target tokenizers differ (``lm.native`` False) a candidate is re-tokenized from its text (plus
    the target's end-of-sequence token when the draft's step ended with its own), and the returned log-probs are
    over the target's tokens: an approximation, since one string has many tokenizations and the target's
    probability of the string is not that of one tokenization.
    """

    def __init__(self, lm: HFLM, source: HFLM | None = None) -> None:
        self.lm = lm
        self.source = source

    def _ids(self, c: Candidate) -> tuple[int, ...]:
        if self.lm.native:
            return c.token_ids
        ids = self.lm.encode_step(c.text)
        src_eos = self.source.eos_ids if self.source is not None else frozenset()
        if c.token_ids and c.token_ids[-1] in src_eos and self.lm.eos_ids:
            ids = (*ids, min(self.lm.eos_ids))
        return ids

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[tuple[float, ...]]]:
        lm = self.lm
        with torch.inference_mode(), lm.stack.lock:
            keys = [lm.key(t) for t in prefixes]
            states = lm.states(keys)
            rows = []  # (prefix index, candidate index, token ids, finished) of each candidate with tokens
            for i, cs in enumerate(candidates):
                for j, c in enumerate(cs):
                    ids = self._ids(c)
                    if ids:
                        rows.append((i, j, ids, c.finished))
            logprobs, made = (
                self._score_rows([(states[i], ids, fin) for i, _, ids, fin in rows]) if rows else ([], [])
            )
            kept = [(keys[i][0], st) for (i, _, _, _), st in zip(rows, made) if st is not None]
            lm.stack.retain([*((pids, st) for (pids, _), st in zip(keys, states)), *kept])
        out: list[list[tuple[float, ...]]] = [[() for _ in cs] for cs in candidates]
        for (i, j, _, _), lps in zip(rows, logprobs):
            out[i][j] = lps
        return out

    def _score_rows(
        self, rows: Sequence[tuple[State, tuple[int, ...], bool]]
    ) -> tuple[list[tuple[float, ...]], list[State | None]]:
        """For each row ``(prefix, ids, finished)``: the log-probs of ``ids`` after ``prefix``, and the state of
        ``prefix ∘ ids`` with its next-token logits (``None`` for a finished candidate), from one batched pass."""
        lm = self.lm
        vocab = lm.vocab
        prefixes = [p for p, _, _ in rows]
        hidden, suffix = lm.stack.run_rows(prefixes, [ids for _, ids, _ in rows])  # [B, q, h]
        dev = hidden.device
        lengths = torch.tensor([len(ids) for _, ids, _ in rows], device=dev)  # [B]
        q = hidden.shape[1]
        pos = torch.arange(q, device=dev)[None, :]
        # Position t of a row predicts its token t + 1: positions 0..len-2 are scored, len-1 gives the next logits.
        scored = pos < (lengths - 1)[:, None]  # [B, q]
        nxt = torch.tensor(
            [list(ids[1:]) + [0] * (q - len(ids) + 1) for _, ids, _ in rows], dtype=torch.long, device=dev
        )  # [B, q]: the token each position predicts (0 where unused)
        flat, tgt = hidden[scored], nxt[scored]  # [N, h], [N]
        lp_flat = torch.empty(flat.shape[0], device=dev)
        chunk = max(1, (1 << 24) // max(int(lm.head.weight.shape[0]), 1))  # bound the [chunk, rows] logits
        for a in range(0, flat.shape[0], chunk):
            ls = torch.log_softmax(lm.logits_of(flat[a : a + chunk])[:, :vocab], dim=-1)
            lp_flat[a : a + chunk] = ls.gather(1, tgt[a : a + chunk, None]).squeeze(1)
        first_lp = torch.log_softmax(
            torch.stack([p.logits[:vocab] for p in prefixes]).float(), dim=-1
        )  # [B, vocab]
        first_ids = torch.tensor([ids[0] for _, ids, _ in rows], device=dev)
        first = first_lp.gather(1, first_ids[:, None]).squeeze(1).tolist()
        open_rows = [r for r, (_, _, fin) in enumerate(rows) if not fin]
        last = {}
        if open_rows:
            idx = torch.tensor(open_rows, device=dev)
            lg = lm.logits_of(hidden[idx, lengths[idx] - 1])  # [R, rows] logits after each open candidate
            last = dict(zip(open_rows, lg))
        rest = lp_flat.tolist()
        logprobs: list[tuple[float, ...]] = []
        made: list[State | None] = []
        offs = 0
        for r, (prefix, ids, fin) in enumerate(rows):
            n = len(ids)
            logprobs.append((float(first[r]), *rest[offs : offs + n - 1]))
            offs += n - 1
            st = None
            if not fin:
                st = row_state(prefix, ids, suffix, r)
                st.logits = last[r]
            made.append(st)
        return logprobs, made
