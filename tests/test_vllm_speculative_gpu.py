"""vLLM's own speculative decoding (the served ``target_sd``) keeps the target's law: a GPU check (``-m gpu``).

The served path of token-level speculative decoding is vLLM's, the target server started with
``--speculative-config '{"method": "draft_model", ...}'``. The CPU build 0.32.0 samples wrongly with it (its
``_expand_kernel_impl`` writes the float temperatures into an int64 copy that is never copied back), so on CPU the
run layer refuses it and this test needs a CUDA build of vLLM (``SPECS_RL_VLLM_PYTHON``) and a GPU. It samples the
first two tokens of the toy world's target through a speculating server and chi-squares them against the target's
exact law computed in-process (the law the HF implementation is proven to keep, tests/test_speculative.py); the
server's ``/metrics`` must show accepted draft tokens, so the speculative path ran. Not run on a GPU yet.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from .vllm_servers import MAX_MODEL_LEN, TOY

pytestmark = pytest.mark.gpu

K = 3  # target_sd's draft tokens a round
SAMPLES = 4000
# a toy test problem's solution up to a digit the target is unsure of: its next two tokens spread over 36 pairs
# expected >= 5 times in 4000 samples (a prefix the target is sure of would make the test blind)
PROMPT = "Compute ((((9*3)-6)*2)*9).\n\n9*3=27\n\n27-6=21\n\n21*2=42\n\n42*9=3"


def cuda_vllm_python() -> str:
    from specs_rl.vllm.server import vllm_build

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    python = os.environ.get("SPECS_RL_VLLM_PYTHON")
    if not python or vllm_build(python) != "cuda":
        pytest.skip("needs SPECS_RL_VLLM_PYTHON pointing at a python with a CUDA build of vLLM")
    return python


def exact_two_token_law(prompt_ids: list[int]) -> dict[tuple[int, int], float]:
    """p(t1) p(t2 | t1) of the toy target at T = 1, over its whole vocabulary."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(TOY / "target", dtype=torch.float32).eval()
    with torch.no_grad():
        first = torch.log_softmax(lm(torch.tensor([prompt_ids])).logits[0, -1].double(), -1)
        vocab = first.numel()
        batch = torch.tensor([prompt_ids + [t] for t in range(vocab)])
        second = torch.log_softmax(lm(batch).logits[:, -1].double(), -1)
    joint = (first[:, None] + second).exp().numpy()
    return {(a, b): float(joint[a, b]) for a in range(vocab) for b in range(vocab)}


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - our own loopback server
        return json.loads(r.read())


def test_served_speculative_decoding_keeps_the_targets_law_on_a_cuda_build(tmp_path) -> None:
    from transformers import AutoTokenizer

    from specs_rl.vllm.server import LaunchSpec, start, wait_ready

    python = cuda_vllm_python()
    spec = LaunchSpec(
        part="vllm.target",
        checkpoint=str(TOY / "target"),
        served_name="toy-target-sd",
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=0.3,
        extra_args=[
            "--speculative-config",
            json.dumps({"method": "draft_model", "model": str(TOY / "draft"), "num_speculative_tokens": K}),
        ],
    )
    server = start(spec, python=python, log_dir=tmp_path / "logs")
    try:
        wait_ready([server], timeout_s=600)
        ids = AutoTokenizer.from_pretrained(TOY / "target")(PROMPT, add_special_tokens=False)["input_ids"]
        seen: Counter = Counter()
        for seed in range(SAMPLES // 100):
            data = post(
                server.url + "/v1/completions",
                {
                    "model": spec.served_name,
                    "prompt": ids,
                    "n": 100,
                    "max_tokens": 2,
                    "temperature": 1.0,
                    "top_p": 1.0,
                    "top_k": -1,
                    "ignore_eos": True,
                    "return_token_ids": True,
                    "skip_special_tokens": False,
                    "seed": seed,
                },
            )
            for ch in data["choices"]:
                seen[tuple(ch["token_ids"])] += 1
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:  # noqa: S310
            metrics = r.read().decode()
    finally:
        server.stop()
    accepted = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("vllm:spec_decode_num_accepted_tokens_total")
    ]
    assert accepted and sum(accepted) > 0, (
        "the server accepted no draft token: speculative decoding did not run"
    )
    law = exact_two_token_law(ids)
    total = sum(seen.values())
    assert total == SAMPLES and all(len(k) == 2 for k in seen)
    # bins: every pair expected at least 5 times, the rest pooled into one
    assert sum(1 for p in law.values() if p * total >= 5) >= 30  # the prompt keeps the test sharp
    big = sorted((k for k, p in law.items() if p * total >= 5), key=law.get, reverse=True)
    observed = [seen.get(k, 0) for k in big] + [total - sum(seen.get(k, 0) for k in big)]
    expected = [law[k] * total for k in big] + [total * (1 - sum(law[k] for k in big))]
    observed, expected = np.array(observed, float), np.array(expected, float)
    keep = expected > 0
    expected = expected[keep] * observed[keep].sum() / expected[keep].sum()
    p = stats.chisquare(observed[keep], expected).pvalue
    assert p > 1e-3, f"served speculative samples differ from the target's law (chi-square p = {p:.2e})"
