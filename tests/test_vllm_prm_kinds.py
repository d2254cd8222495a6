"""A ``qwen_prm`` served by a real vLLM CPU server (``/pooling``, step pooling at ``<extra_0>``) reads steps as the
in-process native module does: same text (the model card's chat format), same rewards.

Tolerance: float32 on both sides, vLLM's CPU kernels against torch's: 1e-4 absolute (the served generators' bound).
"""

from __future__ import annotations

import json

import pytest

from specs_rl.hf import PrmSpec
from specs_rl.hf.models import load_reward_model
from specs_rl.hf.prm import HFRewardModel
from specs_rl.types import Candidate, Trace
from tests import vllm_servers as vs
from tests.test_prm_kinds import PROBLEM, STEPS, qwen_prm_checkpoint

TOL = 1e-4
# vLLM's CPU attention needs a head dim of 32 or more: hidden 64 over 2 heads
SERVED_SHAPE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128
)


def test_served_qwen_prm_agrees_with_in_process(tmp_path, capsys):
    from specs_rl.cli import main
    from specs_rl.vllm.client import Endpoint, ServedClient
    from specs_rl.vllm.parts import VLLMRewardModel
    from specs_rl.vllm.server import LaunchSpec, start_all
    from specs_rl.vllm.task import _prm_format, pooler_config

    py = vs.need_vllm()
    path = qwen_prm_checkpoint(tmp_path / "qwen", seed=5, shape=SERVED_SHAPE)
    model, tok, fmt = load_reward_model(PrmSpec(name=str(path), device="cpu", dtype="float32"))
    assert fmt.kind == "qwen_prm"
    local = HFRewardModel(model, tok, fmt)
    tag = tok.convert_tokens_to_ids("<extra_0>")
    spec = LaunchSpec(
        part="vllm.prm",
        checkpoint=str(path),
        served_name="tiny-qwen-prm",
        kind="prm",
        dtype="float32",
        max_model_len=512,
        pooler_config=pooler_config("step", tag),
    )
    (server,) = start_all([spec], timeout_s=900, python=py, log_dir=tmp_path / "logs")
    try:
        served_fmt = _prm_format(PrmSpec(name=str(path)))
        assert served_fmt == fmt
        served = VLLMRewardModel(
            ServedClient(), Endpoint("vllm.prm", server.url, "tiny-qwen-prm"), tok, fmt, pooling="auto"
        )
        assert served.pooling == "step"
        trace = Trace(PROBLEM)
        for s in STEPS:
            trace = trace.extend(Candidate((), s, (), False))
        assert served.encode(trace)[0] == local.encode(trace)[1]  # the same ids
        want = local.step_rewards(trace)
        got = served.step_rewards(trace)
        print(
            f"served vs in-process qwen_prm: max |difference| {max(abs(a - b) for a, b in zip(got, want)):.2e}"
        )
        assert got == pytest.approx(want, abs=TOL)
        capsys.readouterr()  # what was printed so far is not prm score's output
        # and through `specs-rl prm score backend=vllm`
        rows = tmp_path / "rows.jsonl"
        rows.write_text(json.dumps({"problem": PROBLEM.meta["problem"], "steps": STEPS}) + "\n")
        rc = main(
            [
                "prm",
                "score",
                f"model={path}",
                f"input={rows}",
                f"url={server.url}",
                "served_name=tiny-qwen-prm",
            ]
        )
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert json.loads(out)["rewards"] == pytest.approx(want, abs=TOL)
    finally:
        server.stop()
