"""``specs-rl bench``: the quick run writes its JSON; the GPU section's code runs (on the CPU, with tiny shapes)."""

from __future__ import annotations

import json

import pytest
import torch

from eval.bench_loop import BenchConfig, bench_gpu, main, params_of


def test_quick_bench_writes_its_figures(tmp_path, capsys):
    assert main([f"out={tmp_path}", "quick=true", "repeats=2"]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert 0.0 <= report["overhead_fraction"] < 1.0
    assert report["step_time_ratio_1024_64"] > 0 and report["growth"]["step_cpu_time_ratio"] > 0
    assert len(report["overhead"]["runs"]) == 2 and len(report["growth"]["ratios"]) == 2
    for run in report["overhead"]["runs"]:
        assert 0 < run["forward_s"] < run["wall_s"]
    assert report["growth"]["prefix_tokens"] == {"16": 16, "64": 64}
    assert {"cpu", "cores", "torch", "transformers"} <= set(report["machine"])
    assert report["machine"]["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert "skipped" in report["gpu"]
    assert report["settings"]["quick"] is True
    out = capsys.readouterr().out
    assert "overhead_fraction" in out and "step_time_ratio_1024_64" in out


def test_bad_options_fail_in_one_line(tmp_path, capsys):
    assert main([f"out={tmp_path}", "repeats=0"]) == 2
    assert main([f"out={tmp_path}", "prefix_short=2048"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
    assert not (tmp_path / "bench.json").exists()


def test_default_models_have_the_issue_sizes():
    cfg = BenchConfig()
    assert 4.5e6 < params_of(cfg.draft) < 5.5e6
    assert 45e6 < params_of(cfg.target) < 55e6


def test_gpu_section_code_runs_with_tiny_shapes_on_the_cpu():
    """The GPU section (SPECS draft step vs target beam step over an n grid) with tiny Qwen2 shapes on the CPU."""
    tiny = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
        tie_word_embeddings=True,
    )
    big = dict(tiny, hidden_size=64, intermediate_size=128, vocab_size=384, tie_word_embeddings=False)
    cfg = BenchConfig(gpu_n=[1, 3], gpu_prefix=16, gpu_step_tokens=3, gpu_repeats=2)
    out = bench_gpu(cfg, device="cpu", draft_arch=tiny, target_arch=big, dtype=torch.float32)
    assert [r["n"] for r in out["rows"]] == [1, 3] and out["prefix_tokens"] == 16
    for r in out["rows"]:
        assert r["specs_draft_step_s"] > 0 and r["target_beam_step_s"] > 0
        assert r["speedup"] == pytest.approx(r["target_beam_step_s"] / r["specs_draft_step_s"])
        assert all(len(v) == 2 for v in r["raw"].values())


def test_bench_dispatches_on_the_parsed_backend(tmp_path, capsys):
    """``specs-rl bench`` picks its benchmark from the parsed config (file or command line, any spelling), not by
    looking for the text ``backend=vllm`` in the raw arguments."""
    from eval import bench

    assert bench.main([f"out={tmp_path}", "backend=vllm", "repeats=0"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err
    path = tmp_path / "b.yaml"
    path.write_text("backend: vllm\nin_flight: []\n")
    assert bench.main(["--config", str(path), f"out={tmp_path}"]) == 2
    assert "in_flight must be a non-empty list" in capsys.readouterr().err
    assert bench.main(["--backend", "vllm", f"out={tmp_path}", "problems=0"]) == 2
    assert "problems must be >= 1" in capsys.readouterr().err
    assert bench.main(["backend=cuda"]) == 2
    assert "backend must be one of hf, vllm" in capsys.readouterr().err
    assert bench.main([f"out={tmp_path}", "repeats=0"]) == 2  # the in-process benchmark (backend: hf)
    assert "repeats must be >= 1" in capsys.readouterr().err
