"""The target scorer over a causal LM: log-probs of candidate steps in one batched pass per call (implements
``TargetScorer`` of :mod:`specs_rl.interfaces`; the log-prob conventions are those of :mod:`specs_rl.hf.sampler`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specs_rl.hf.engine import State, row_state
from specs_rl.hf.sampler import HFLM
from specs_rl.types import Candidate, Trace


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
