"""What the served backend asks of a running server before a run uses it: that it serves the configured model
(:func:`check_endpoint`), and that a sampling server returns the log-probs of the law it samples
(:func:`check_processed_logprobs`)."""

from __future__ import annotations

import math
from typing import Any

from specs_rl.vllm.client import Endpoint, ServedClient, ServerError


def check_endpoint(client: ServedClient, ep: Endpoint) -> dict[str, Any]:
    """The model card of ``ep.model`` on its server, after ``/health``; a server serving other models is refused."""
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
