"""Draft distillation parts: vocabulary alignment, sampling with a passed-in generator, the acceptance proxy.

**Padded vocabularies.** Qwen2.5-Math-1.5B has 151936 embedding rows and 7B has 152064: one tokenizer (151665
tokens), different padding. Logits are compared over the shared range ``[:V]``; rows past the tokenizer are never
produced by it. :func:`shared_vocab_size` checks the tokenizers are really the same (else a SpecsError) and returns
``min(V_draft, V_target)``; :func:`align_logits` slices both; :func:`truncate_vocab` cuts a frozen target's
embedding and output rows to that size, so a trainer that compares full heads (TRL's ``DistillationTrainer``)
sees ``target_logits[..., :V]``, identical to slicing.

**Acceptance proxy.** SPECS keeps a draft step when the target finds it likely (docs/algorithm.md §3). The proxy is
the mean per-token log-probability of draft samples under the target,

    A = (1 / Σ_i |y_i|) Σ_i Σ_t log π_t(y_{i,t} | x_i, y_{i,<t}),   y_i ~ π_d(· | x_i),

with both distributions normalized over the tokenizer's range. Higher is better; distillation should raise it.
Reported with it: the draft's own mean log-prob and their difference, the per-token mean log-ratio that the
authors' soft verification uses (``mean_tok(log π_t - log π_d)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specs_rl.errors import SpecsError
from specs_rl.models.tokens import same_tokenizer


def vocab_rows(model: Any) -> int:
    """Rows of the model's output layer (its ``vocab_size``, padding included)."""
    return int(model.get_output_embeddings().weight.shape[0])


def check_same_tokenizer(draft_tokenizer: Any, target_tokenizer: Any) -> None:
    """SpecsError for genuinely different tokenizers (logits over different token sets cannot be compared)."""
    if not same_tokenizer(draft_tokenizer, target_tokenizer):
        raise SpecsError(
            f"the draft and target tokenizers differ ({len(draft_tokenizer)} vs {len(target_tokenizer)} tokens, or "
            "different ids): distillation and the acceptance proxy compare next-token distributions, so they need "
            "one tokenizer (embedding tables that differ only by padding rows are fine)"
        )


def shared_vocab_size(draft_tokenizer: Any, target_tokenizer: Any, draft_rows: int, target_rows: int) -> int:
    """``min(draft_rows, target_rows)`` when the two tokenizers are the same and both heads cover it.

    Raises SpecsError for genuinely different tokenizers (logits over different token sets cannot be compared).

    >>> class Tok:
    ...     all_special_tokens = ["<s>"]
    ...     def __init__(self, v): self.v = v
    ...     def get_vocab(self): return self.v
    ...     def __len__(self): return len(self.v)
    >>> shared_vocab_size(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 1}), 4, 6)
    4
    """
    check_same_tokenizer(draft_tokenizer, target_tokenizer)
    size = min(draft_rows, target_rows)
    if size < len(draft_tokenizer):
        raise SpecsError(
            f"a model has fewer output rows ({size}) than its tokenizer has tokens ({len(draft_tokenizer)})"
        )
    return size


def align_logits(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits cut to the shared range ``[..., :size]`` ([..., V_d] and [..., V_t] -> [..., size])."""
    return draft_logits[..., :size], target_logits[..., :size]


def truncate_vocab(model: Any, size: int) -> Any:
    """Cut a model's input and output embeddings to their first ``size`` rows (in place; returns the model).

    Used on the frozen target so it matches the draft's head: afterwards ``model(x).logits == old(x).logits[...,
    :size]``. Growing is refused (that would invent rows).
    """
    rows = vocab_rows(model)
    if size > rows:
        raise ValueError(f"cannot grow a vocabulary from {rows} to {size} rows")
    if size < rows:
        model.resize_token_embeddings(size, mean_resizing=False)
    return model


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt: a message list goes through the chat template with the generation prompt."""
    if isinstance(prompt, list):
        out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    return list(tokenizer(prompt)["input_ids"])


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)  # [B, P]
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)  # [B, P]
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long, device=device)
            mask[i, width - len(s) :] = 1
    return ids, mask


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _cache_name() -> str:
    """The KV-cache argument/output name: ``cache`` in recent transformers 5, ``past_key_values`` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass(frozen=True)
class Sample:
    """One sampled completion: its token ids (EOS included when reached) and their log-probs under the sampler."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


@torch.no_grad()
def sample(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    generator: torch.Generator,
    vocab_size: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> list[Sample]:
    """Ancestral sampling with a KV cache: ``y_t ~ softmax(logits[:vocab_size] / temperature)``, stopping at EOS.

    Randomness comes only from ``generator`` (on the model's device, or on the CPU: probabilities are moved to it).
    Prompts are left-padded in batches of ``batch_size``. ``logprobs`` are under the temperature-scaled law.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    was_training = model.training
    model.eval()
    device = _device(model)
    cache = _cache_name()
    out: list[Sample] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids, mask = _left_pad(chunk, pad_token_id, device)  # [B, P]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            past, logits = getattr(res, cache), res.logits[:, -1, :vocab_size]  # [B, V]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)  # [B]
            toks: list[torch.Tensor] = []
            lps: list[torch.Tensor] = []
            for _ in range(max_new_tokens):
                logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, V]
                probs = logp.exp().to(generator.device)
                nxt = torch.multinomial(probs, 1, generator=generator).to(device)  # [B, 1]
                toks.append(torch.where(done[:, None], pad_token_id, nxt))
                lps.append(logp.gather(-1, nxt))
                done = done | torch.isin(
                    nxt[:, 0], torch.tensor(sorted(eos), device=device, dtype=torch.long)
                )
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=-1)  # [B, P + t + 1]
                pos = pos[:, -1:] + 1  # [B, 1]
                res = model(
                    input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, **{cache: past}
                )
                past, logits = getattr(res, cache), res.logits[:, -1, :vocab_size]
            tok_m = torch.cat(toks, dim=-1).cpu()  # [B, T]
            lp_m = torch.cat(lps, dim=-1).cpu()  # [B, T]
            for i in range(len(chunk)):
                ids_i, lp_i = [], []
                for t in range(tok_m.shape[1]):
                    ids_i.append(int(tok_m[i, t]))
                    lp_i.append(float(lp_m[i, t]))
                    if ids_i[-1] in eos:
                        break
                out.append(Sample(tuple(ids_i), tuple(lp_i)))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def token_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    vocab_size: int,
    pad_token_id: int,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """``log softmax(logits[:vocab_size])`` of each completion token given its prompt and the tokens before it.

    Layout per batch: prompts left-padded to ``P``, completions right-padded to ``C``; the logits that predict
    completion token ``j`` sit at column ``P + j - 1``.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ps, cs = prompts[start : start + batch_size], completions[start : start + batch_size]
            p_ids, p_mask = _left_pad(ps, pad_token_id, device)  # [B, P]
            width = max(1, max(len(c) for c in cs))
            c_ids = torch.full((len(cs), width), pad_token_id, dtype=torch.long, device=device)  # [B, C]
            c_mask = torch.zeros_like(c_ids)  # [B, C]
            for i, c in enumerate(cs):
                if c:
                    c_ids[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long, device=device)
                    c_mask[i, : len(c)] = 1
            ids, mask = torch.cat([p_ids, c_ids], -1), torch.cat([p_mask, c_mask], -1)  # [B, P + C]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # [B, P + C, V_rows]
            p = p_ids.shape[1]
            logp = torch.log_softmax(
                logits[:, p - 1 : p - 1 + width, :vocab_size].float(), dim=-1
            )  # [B, C, V]
            picked = logp.gather(-1, c_ids[..., None])[..., 0]  # [B, C]
            for i, c in enumerate(cs):
                out.append(picked[i, : len(c)].cpu())
    finally:
        model.train(was_training)
    return out


def acceptance_proxy(
    draft: Any,
    target: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    max_new_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> dict[str, float]:
    """Draft samples scored by the target (module docstring): ``acceptance_proxy`` (mean target log-prob per draft
    token), ``draft_logprob`` (the draft's own), ``log_ratio`` (their difference), ``tokens``, ``samples``.

    Both models are read over the tokenizer's range ``[:len(tokenizer)]`` (padding rows excluded).
    """
    vocab = len(tokenizer)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples = sample(
        draft,
        ids,
        max_new_tokens=max_new_tokens,
        generator=generator,
        vocab_size=vocab,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        temperature=temperature,
        batch_size=batch_size,
    )
    tlp = token_logprobs(
        target, ids, [s.token_ids for s in samples], vocab_size=vocab, pad_token_id=pad, batch_size=batch_size
    )
    n = sum(len(s.token_ids) for s in samples)
    if n == 0:
        return {"acceptance_proxy": float("nan"), "draft_logprob": float("nan"), "log_ratio": float("nan"),
                "tokens": 0.0, "samples": float(len(samples))}  # fmt: skip
    t_sum = float(sum(float(x.sum()) for x in tlp))
    d_sum = float(sum(sum(s.logprobs) for s in samples))
    return {
        "acceptance_proxy": t_sum / n,
        "draft_logprob": d_sum / n,
        "log_ratio": (t_sum - d_sum) / n,
        "tokens": float(n),
        "samples": float(len(samples)),
    }
