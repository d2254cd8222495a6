"""The target's ``StepSampler`` by exact token-level speculative sampling with the draft (lossless).

Each round, every row's draft proposes ``k`` tokens on its cached prefix (``k`` one-token forwards, after one
forward of the 1-2 tokens the draft has not read yet); the target reads the token it has not read yet plus the
``k`` proposals in one forward; :func:`specs_rl.speculative.speculative_sample` keeps a prefix of the proposals
and adds one token of the target's. The step's tokens follow the target's processed law exactly (temperature and
top-p of the target; the draft's own temperature and top-p shape only the proposals), so this sampler is a drop-in
replacement of the target's :class:`~specs_rl.hf.sampler.HFSampler`, with its step stops, end-of-sequence and limits:
a step is cut at the first token that stops it, whatever the round had emitted after it.

KV states. Both models decode rows in a suffix cache continuing their cached prefixes, as ``HFSampler`` does.
Rejected proposals are rolled back by masking their suffix entries out of attention (the cascade's per-row
``valid`` mask); no entry is recomputed, and a row's valid entries are exactly its accepted tokens, in order. At
the end of a step each unfinished row leaves, in each model's cache, the state of its tokens that model has read
(the target: all but the last), for the next step to extend.

Randomness. A row's stream is seeded as in ``HFSampler`` (by its prefix's call seed drawn from that prefix's
generator, the prefix, the candidate index and the prefix's occurrence) and each round draws ``2k + 1`` uniforms from it: ``k`` for the draft's tokens, ``k`` for
the keep tests, one for the residual or bonus token. A row's tokens do not depend on the other rows of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specs_rl.hf.cascade import make_suffix_cache
from specs_rl.hf.engine import State
from specs_rl.hf.sampler import HFSampler, _Row
from specs_rl.interfaces import Generators, prefix_seeds
from specs_rl.models.seeds import request_seed
from specs_rl.speculative import processed_logprobs, sample_from_probs, speculative_sample
from specs_rl.types import Candidate, Speculation, Trace


@dataclass(eq=False)
class _SpecRow(_Row):
    """An :class:`~specs_rl.hf.sampler._Row` of the target (``prefix``, ``state``) with the draft's side and counts."""

    draft_prefix: State | None = None
    draft_state: State | None = (
        None  # the draft's cached state of the step's tokens it read (unfinished steps)
    )
    read_t: int = 0  # step tokens whose KV the target holds (valid suffix entries)
    read_d: int = 0  # the same for the draft
    proposed: int = 0
    accepted: int = 0
    rounds: int = 0


def _kv_of_valid(suffix: Any, r: int, valid: torch.Tensor, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``[H_kv, m, D]`` copies of row ``r``'s first ``m`` valid suffix entries (its first ``m`` tokens)."""
    idx = valid.nonzero().squeeze(1)[:m]  # [m]
    return [(layer.keys[r][:, idx], layer.values[r][:, idx]) for layer in suffix.layers]


class SpeculativeSampler:
    """``StepSampler`` of the target whose tokens come from speculative sampling with ``draft``'s model.

    ``target``: the target's :class:`HFSampler` (its model, temperature, top-p, stops, limits, ``ignore_eos``);
    ``draft``: the draft's (its model, and the temperature and top-p of its proposals); ``k``: tokens proposed per
    round. The two models must share a tokenizer. Candidates carry the target's processed log-probs of their
    tokens (as ``HFSampler`` reports them) and a :class:`~specs_rl.types.Speculation` with the round counts.
    """

    def __init__(self, draft: HFSampler, target: HFSampler, k: int) -> None:
        if k < 1:
            raise ValueError(f"speculative_tokens must be >= 1 for a speculative sampler, got {k}")
        d, t = draft.lm, target.lm
        if d is not t and not (d.native and t.native and d.vocab == t.vocab):
            raise ValueError(
                f"speculative decoding needs a draft and a target that share a tokenizer ({d.name} and {t.name} do not)"
            )
        self.draft = draft
        self.target = target
        self.lm = t  # the model whose law the steps follow (forward-time counters, cache clearing)
        self.k = k

    def propose(
        self, prefixes: Sequence[Trace], n: int, generators: Generators, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prefixes:
            return []
        tgt = self.target
        lm_t, lm_d = tgt.lm, self.draft.lm
        tgt.sync_stop()
        with torch.inference_mode(), lm_t.stack.lock, lm_d.stack.lock:
            keys_t = [lm_t.key(t) for t in prefixes]
            keys_d = [lm_d.key(t) for t in prefixes]
            seeds = prefix_seeds(generators, [ids for _, ids in keys_t])  # (call seed, occurrence) per prefix
            states_t = lm_t.states(keys_t)
            states_d = lm_d.states(keys_d)
            rows = self._generate(keys_t, states_t, states_d, n, seeds, to_end)
            pk_t = [pids for pids, _ in keys_t]
            pk_d = [pids for pids, _ in keys_d]
            kept_t = [*zip(pk_t, states_t)]
            kept_t += [(pk_t[r // n], row.state) for r, row in enumerate(rows) if row.state is not None]
            kept_d = [*zip(pk_d, states_d)]
            kept_d += [
                (pk_d[r // n], row.draft_state) for r, row in enumerate(rows) if row.draft_state is not None
            ]
            if lm_d is lm_t:
                lm_t.stack.retain([*kept_t, *kept_d])
            else:
                lm_t.stack.retain(kept_t)
                lm_d.stack.retain(kept_d)
        cands = [
            Candidate(
                tuple(r.tokens),
                lm_t.text.text(r.tokens),
                tuple(r.logprobs),
                r.finished,
                speculation=Speculation(r.proposed, r.accepted, r.rounds),
            )
            for r in rows
        ]
        return [cands[i * n : (i + 1) * n] for i in range(len(prefixes))]

    def _generate(
        self,
        keys: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
        states_t: Sequence[State],
        states_d: Sequence[State],
        n: int,
        seeds: Sequence[tuple[int, int]],
        to_end: bool,
    ) -> list[_SpecRow]:
        """``n`` rows per prefix, each sampled to the end of its step; all rows in one batch, one round per
        ``k`` draft forwards + 1 target forward. Once half of the batch is done, it keeps only the rows still
        sampling (both suffix caches, contexts and masks are indexed)."""
        tgt, drf, k = self.target, self.draft, self.k
        lm_t, lm_d = tgt.lm, drf.lm
        st_t, st_d = lm_t.stack, lm_d.stack
        dev_t, dev_d = st_t.device, st_d.device
        rows: list[_SpecRow] = []
        for (pids, ids), s_t, s_d, (call_seed, occ) in zip(keys, states_t, states_d, seeds):
            room = min(lm_t.max_positions, lm_d.max_positions) - len(ids)
            left = max(min(tgt.max_tokens - (len(ids) - len(pids)), room), 1)
            step = left if to_end else min(left, tgt.max_step_tokens)
            for j in range(n):
                rng = torch.Generator().manual_seed(request_seed(call_seed, ids, occ, choice=j))
                rows.append(
                    _SpecRow(
                        s_t, rng, step_limit=step, hard_limit=left, stop=tgt.stop.start(), draft_prefix=s_d
                    )
                )
        vocab = lm_t.vocab
        eos = lm_t.eos_ids
        ban = sorted(eos) if tgt.ignore_eos and eos else None

        def law(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
            lg = logits[..., :vocab].float()
            if ban is not None:
                lg[..., ban] = -math.inf
            return processed_logprobs(lg, temperature, top_p)

        ctx_t = st_t.context([r.prefix for r in rows])
        ctx_d = st_d.context([r.draft_prefix for r in rows])
        suf_t = make_suffix_cache(st_t.num_layers, 64)
        suf_d = make_suffix_cache(st_d.num_layers, 64)
        B = len(rows)  # noqa: N806
        valid_t = torch.zeros(B, 0, dtype=torch.bool, device=dev_t)  # [B, s_t] suffix entries attended to
        valid_d = torch.zeros(B, 0, dtype=torch.bool, device=dev_d)  # [B, s_d]
        first_t = torch.stack(
            [r.prefix.logits for r in rows]
        )  # [B, rows_t] the target's p_1 of the first round
        lg_d = torch.stack([r.draft_prefix.logits for r in rows])  # [B, rows_d] the draft's next-token logits
        batch = rows
        first = True
        while True:
            b = len(batch)
            live = [not r.done for r in batch]
            n0 = [len(r.tokens) for r in batch]  # tokens emitted before this round
            base = [len(r.prefix.ids) for r in batch]
            room = [min(k, r.step_limit - len(r.tokens)) if not r.done else 0 for r in batch]
            kr = max(room)  # proposals this round (a row proposes room[i] <= kr of them)
            u = torch.stack(
                [torch.rand(2 * k + 1, generator=r.rng, dtype=torch.float64) for r in batch]
            )  # [b, 2k + 1]: k draft tokens, k keep tests, 1 residual/bonus draw
            # -- the draft: read its unread tokens (1-2 per row), then propose kr tokens
            if not first:
                pend = [r.tokens[r.read_d :] if ok else [] for r, ok in zip(batch, live)]
                m = max(len(x) for x in pend)
                ids = torch.tensor([x + [0] * (m - len(x)) for x in pend], device=dev_d)  # [b, m]
                pos = torch.tensor(
                    [[base[i] + r.read_d + j for j in range(m)] for i, r in enumerate(batch)], device=dev_d
                )  # [b, m]
                new = torch.tensor([[j < len(x) for j in range(m)] for x in pend], device=dev_d)  # [b, m]
                valid_d = torch.cat([valid_d, new], dim=1)
                hid = st_d.forward(ctx_d, suf_d, ids, pos, valid_d)  # [b, m, h]
                last = torch.tensor([max(len(x), 1) - 1 for x in pend], device=dev_d)
                lg_d = lm_d.logits_of(hid[torch.arange(b, device=dev_d), last])  # [b, rows_d]
            x_start_d = valid_d.shape[1]  # suffix index of the draft's entry of x_1
            live_d = torch.tensor(live, device=dev_d)[:, None]  # [b, 1]
            pos0 = torch.tensor([base[i] + n0[i] for i in range(b)], device=dev_d)  # [b] position of x_1
            qs, xs = [], []
            for i in range(kr):
                qi = law(lg_d, drf.temperature, drf.top_p).exp()  # [b, V]
                xi = sample_from_probs(qi, u[:, i])  # [b]
                qs.append(qi)
                xs.append(xi)
                if i < kr - 1:
                    valid_d = torch.cat([valid_d, live_d], dim=1)
                    hid = st_d.forward(ctx_d, suf_d, xi[:, None], (pos0 + i)[:, None], valid_d)  # [b, 1, h]
                    lg_d = lm_d.logits_of(hid[:, 0])
            x = torch.stack(xs, dim=1).to(dev_t)  # [b, kr]
            q = torch.stack(qs, dim=1).to(dev_t)  # [b, kr, V]
            # -- the target: its unread token (none in the first round) and the kr proposals, one forward
            npend = 0 if first else 1
            ids_t = x  # [b, npend + kr]
            if npend:
                pend_t = [[r.tokens[-1] if ok else 0] for r, ok in zip(batch, live)]
                ids_t = torch.cat([torch.tensor(pend_t, device=dev_t), x], dim=1)
            width = npend + kr
            pos_t = torch.tensor([base[i] + n0[i] - npend for i in range(b)], device=dev_t)[
                :, None
            ] + torch.arange(width, device=dev_t)  # [b, width]
            x_start_t = valid_t.shape[1] + npend
            valid_t = torch.cat([valid_t, torch.tensor(live, device=dev_t)[:, None].expand(b, width)], dim=1)
            hid = st_t.forward(ctx_t, suf_t, ids_t, pos_t, valid_t)  # [b, width, h]
            lg_t = lm_t.logits_of(hid.reshape(b * width, -1)).view(b, width, -1)  # [b, width, rows_t]
            if first:
                lg_t = torch.cat([first_t[:, None, :], lg_t], dim=1)  # [b, kr + 1, rows_t]
            lp_t = law(lg_t, tgt.temperature, tgt.top_p)  # [b, kr + 1, V]
            proposed = torch.tensor(room, device=dev_t)
            out, acc = speculative_sample(
                q, lp_t.exp(), x, u[:, k : k + kr].to(dev_t), u[:, 2 * k].to(dev_t), proposed
            )  # [b, kr + 1], [b]
            lps = lp_t.gather(2, out.clamp(min=0)[:, :, None]).squeeze(2)  # [b, kr + 1]
            # -- roll back: the rejected proposals' entries leave both models' attention
            rej = torch.arange(kr, device=dev_t)[None, :] >= acc[:, None]  # [b, kr]
            valid_t[:, x_start_t : x_start_t + kr] &= ~rej
            valid_d[:, x_start_d : x_start_d + kr - 1] &= ~rej[:, : kr - 1].to(dev_d)
            outs, accs, lpl = out.tolist(), acc.tolist(), lps.double().tolist()
            for i, row in enumerate(batch):
                if row.done:
                    continue
                a = accs[i]
                row.rounds += 1
                row.proposed += room[i]
                row.accepted += a
                row.read_t = n0[i] + a
                row.read_d = n0[i] + min(a, kr - 1)
                for j in range(a + 1):
                    tk = outs[i][j]
                    row.tokens.append(tk)
                    row.logprobs.append(lpl[i][j])
                    if tk in eos and not tgt.ignore_eos:
                        row.done = row.finished = True
                    elif not to_end:
                        row.done, row.stop = tgt.stop.feed(row.stop, tk)
                    count = len(row.tokens)
                    if row.done or count >= row.step_limit:
                        row.done = True
                        row.finished = row.finished or to_end or count >= row.hard_limit
                        break
                if row.done and not row.finished and len(row.tokens) > 1:
                    self._leave_states(row, i, suf_t, valid_t[i], suf_d, valid_d[i])
            alive = [i for i, r in enumerate(batch) if not r.done]
            if not alive:
                return rows
            if len(alive) <= len(batch) // 2:
                idx_t = torch.tensor(alive, device=dev_t)
                idx_d = torch.tensor(alive, device=dev_d)
                suf_t.select_rows(idx_t)
                suf_d.select_rows(idx_d)
                ctx_t.select_rows(idx_t)
                ctx_d.select_rows(idx_d)
                valid_t, valid_d = valid_t[idx_t], valid_d[idx_d]
                batch = [batch[i] for i in alive]
            first = False

    @staticmethod
    def _leave_states(
        row: _SpecRow, r: int, suf_t: Any, valid_t: torch.Tensor, suf_d: Any, valid_d: torch.Tensor
    ) -> None:
        """The states of an unfinished step's tokens but the last, in the target (which has read them all) and in
        the draft (as far as it has read), for the next call to extend."""
        m = len(row.tokens) - 1
        row.state = State(
            row.prefix.ids + tuple(row.tokens[:m]), parent=row.prefix, seg=_kv_of_valid(suf_t, r, valid_t, m)
        )
        m_d = min(row.read_d, m)
        if m_d > 0:
            seg = _kv_of_valid(suf_d, r, valid_d, m_d)
            row.draft_state = State(
                row.draft_prefix.ids + tuple(row.tokens[:m_d]), parent=row.draft_prefix, seg=seg
            )
