"""specs_rl.plan: model sizes read without loading weights, the KV formula, and the fit check."""

from __future__ import annotations

import json

import pytest

from specs_rl.plan import DeviceNeed, PlanError, model_facts, safetensors_params

from .conftest import REPO

TOY = REPO / "specs_rl" / "assets" / "toymath"
# Qwen2.5-7B's published shape (config.json of Qwen/Qwen2.5-Math-7B-Instruct): 7,615,616,512 parameters.
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
}


def test_a_local_checkpoint_is_counted_from_its_safetensors_headers() -> None:
    from safetensors.torch import load_file

    facts = model_facts("target", str(TOY / "target"))
    loaded = load_file(TOY / "target" / "model.safetensors")
    assert facts.source == "local dir" and facts.how == "safetensors headers"
    assert facts.params == sum(t.numel() for t in loaded.values()) == 1953408
    assert facts.bytes_at("bfloat16") == 2 * facts.params and facts.bytes_at("float32") == 4 * facts.params
    # 2 x layers x kv heads x head dim x bytes: the toy target has 10 layers, 4 heads of 32 over a width of 128
    cfg = facts.config
    assert (
        facts.kv_bytes_per_token("bfloat16")
        == 2
        * cfg["num_hidden_layers"]
        * cfg["num_key_value_heads"]
        * (cfg["hidden_size"] // cfg["num_attention_heads"])
        * 2
    )


def test_a_sharded_checkpoint_and_a_config_alone_are_counted_without_weights(tmp_path) -> None:
    from specs_rl.tiny import make_tokenizer, tiny_causal_lm

    model = tiny_causal_lm(make_tokenizer(), seed=0)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    facts = model_facts("draft", str(tmp_path / "sharded"))
    assert facts.params == model.num_parameters()
    # only the config: the architecture is built on the meta device
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(QWEN25_7B))
    facts = model_facts("target", str(tmp_path / "cfg"))
    assert facts.how.startswith("config.json") and facts.params == 7_615_616_512
    assert facts.kv_bytes_per_token("bfloat16") == 2 * 28 * 4 * 128 * 2  # 57,344 bytes a token


def test_unreadable_sources_are_unknown_and_say_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    hub = model_facts("prm", "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B")  # no copy of its config ships
    assert hub.source == "hub" and hub.params is None and "offline" in hub.how
    missing = model_facts("draft", "./no/such/dir")
    assert missing.source == "missing" and missing.params is None
    assert safetensors_params([]) == 0


def test_a_device_that_cannot_hold_the_run_is_one_line_naming_the_sums() -> None:
    b7 = 7_615_616_512 * 4  # a 7B model in float32
    need = DeviceNeed("cuda:0", 80 * 1024**3, [("target", b7), ("draft", b7), ("prm", b7), ("other", None)])
    with pytest.raises(PlanError) as e:
        need.check()
    msg = str(e.value)
    assert "\n" not in msg and "cuda:0" in msg and "85.11 GiB" in msg and "80.00 GiB" in msg
    DeviceNeed("cuda:0", 80 * 1024**3, [("target", b7 // 2)]).check()  # bf16 fits
    DeviceNeed("cuda:0", None, [("target", b7 * 9)]).check()  # unknown memory: not checked
    assert any("unknown (other)" in line for line in need.lines())


def _config_only(folder, arch: str = "Qwen2ForCausalLM") -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN25_7B, "architectures": [arch]}))
    return str(folder)


def test_plan_prints_the_toy_worlds_models_memory_and_work(capsys) -> None:
    from eval import plan

    assert plan.main(["--config", str(REPO / "configs" / "demo" / "toymath.yaml")]) == 0
    out = capsys.readouterr().out
    assert "target specs_rl/assets/toymath/target  [local dir" in out and "1.95M parameters" in out
    assert "cpu (" in out and "target cached prefixes (16 x" in out
    assert "30 runs x toymath:test problems = 3000 searches" in out


def test_plan_refuses_three_7b_models_in_float32_on_one_80gb_gpu(tmp_path, capsys) -> None:
    from eval import plan

    draft, target = _config_only(tmp_path / "d"), _config_only(tmp_path / "t")
    prm = _config_only(tmp_path / "p", "Qwen2ForProcessRewardModel")
    args = [
        "--config",
        str(REPO / "configs" / "eval" / "math500_qwen25.yaml"),
        f"hf.draft.name={draft}",
        f"hf.target.name={target}",
        f"hf.prm.name={prm}",
        "gpu_memory_gib=80",
    ]
    f32 = ["hf.draft.dtype=float32", "hf.target.dtype=float32", "hf.prm.dtype=float32"]
    assert plan.main([*args, *f32]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cuda:0" in err and "80.00 GiB" in err and "but the device has" in err
    assert plan.main(args) == 0  # bfloat16 (auto on CUDA): 3 x 14 GiB and the caches fit
    out = capsys.readouterr().out
    # the PRM is Qwen2 + a two-layer head (h x h + h, 2h + 2), not a causal LM with a vocabulary head
    body = 7_615_616_512 - 2 * 152064 * 3584  # the 7B minus its embedding and lm_head
    prm_params = body + 152064 * 3584 + 3584 * 3584 + 3584 + 2 * 3584 + 2
    assert f"{prm_params / 1e9:.2f}B parameters" in out and "7.62B parameters" in out


def test_plan_lists_the_servers_and_refuses_unset_shares_on_one_gpu(tmp_path, capsys) -> None:
    from eval import plan

    toy = ["--config", str(REPO / "configs" / "demo" / "toymath.yaml"), "backend=vllm", "gpu_memory_gib=24"]
    assert plan.main(toy) == 2
    assert "GPU 0 is shared by vllm.draft, vllm.target: set gpu_memory_utilization" in capsys.readouterr().err
    shares = ["vllm.target.gpu_memory_utilization=0.5", "vllm.draft.gpu_memory_utilization=0.3"]
    assert plan.main([*toy, *shares]) == 0
    out = capsys.readouterr().out
    assert "wave 1: vllm.draft" in out and "wave 2: vllm.target" in out and "server share 0.5" in out


def test_compare_and_search_run_the_fit_check_before_loading_or_writing(tmp_path, capsys) -> None:
    from eval import compare, search
    from specs_rl.plan import host_memory

    if (host_memory() or 0) > 56 * 1024**3:
        pytest.skip("this machine's RAM holds two 7B models in float32")

    names = [f"hf.{r}.name={_config_only(tmp_path / r)}" for r in ("draft", "target")]
    f32 = ["hf.draft.dtype=float32", "hf.target.dtype=float32", "hf.draft.device=cpu", "hf.target.device=cpu"]
    cfg = str(REPO / "configs" / "eval" / "math500_qwen25.yaml")
    # two 7B models in float32 (57 GiB) do not fit this machine's RAM: refused before any model loads
    assert compare.main(["--config", cfg, *names, *f32, f"out={tmp_path / 'c'}"]) == 2
    assert "cpu: the run needs" in capsys.readouterr().err and not (tmp_path / "c").exists()
    cfg = str(REPO / "configs" / "search" / "qwen25_math_math500.yaml")
    assert search.main(["--config", cfg, *names, *f32, f"out={tmp_path / 's'}"]) == 2
    assert "cpu: the run needs" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "config",
    sorted(
        str(p.relative_to(REPO))
        for d in ("search", "eval", "demo", "tune")
        for p in (REPO / "configs" / d).glob("*.yaml")
    ),
)
def test_plan_prints_the_plan_of_every_committed_run_config(config, capsys) -> None:
    from eval import plan

    assert plan.main(["--config", str(REPO / config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("backend: ") and "\nwork: " in out


def test_offline_the_paper_models_are_counted_from_shipped_config_copies_and_say_so(
    tmp_path, monkeypatch
) -> None:
    from specs_rl.plan import SHIPPED_CONFIGS, meta_params, shipped_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    assert set(index) == {
        "Qwen/Qwen2.5-Math-1.5B-Instruct",
        "Qwen/Qwen2.5-Math-7B-Instruct",
        "Qwen/Qwen2.5-Math-PRM-7B",
        "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B",
    }
    for repo, entry in index.items():
        assert entry["from"].startswith("https://huggingface.co/") and entry["copy"]
        facts = model_facts("prm", repo)
        assert facts.source == "hub" and "offline" in facts.how
        assert "shipped with specs-rl" in facts.how and "not read from the weights" in facts.how
        assert facts.params == meta_params(shipped_config(repo)[0])
    target = model_facts("target", "Qwen/Qwen2.5-Math-7B-Instruct")
    assert target.params == 7_615_616_512  # the test's QWEN25_7B shape: the copy is that architecture
    assert target.kv_bytes_per_token("bfloat16") == 2 * 28 * 4 * 128 * 2
    # Qwen2.5-Math-PRM-7B: the 7B body + its two-layer head (h x h + h, 2h + 2)
    body = 7_615_616_512 - 2 * 152064 * 3584
    assert (
        model_facts("prm", "Qwen/Qwen2.5-Math-PRM-7B").params
        == body + 152064 * 3584 + 3584 * 3584 + 3584 + 2 * 3584 + 2
    )
    # Skywork 1.5B: Qwen2.5-1.5B's body (tied embeddings) + a value head of one output (h + 1)
    sky = model_facts("prm", "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B").params
    h, inter, layers, vocab, kv = 1536, 8960, 28, 151936, 2 * 128
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    assert sky == vocab * h + layers * per_layer + h + h + 1
    # a pinned revision may differ from the copy: not used
    assert model_facts("prm", "Qwen/Qwen2.5-Math-PRM-7B", revision="abc").params is None


def test_serve_runs_the_fit_check_before_starting_any_server(tmp_path, capsys, monkeypatch) -> None:
    import specs_rl.vllm
    from eval import serve
    from specs_rl.errors import SpecsError
    from specs_rl.plan import host_memory

    if (host_memory() or 0) > 56 * 1024**3:
        pytest.skip("this machine's RAM holds two 7B models in float32")

    def started(*args, **kwargs):
        raise SpecsError("start_servers reached")

    monkeypatch.setattr(specs_rl.vllm, "start_servers", started)
    names = [f"hf.{r}.name={_config_only(tmp_path / r)}" for r in ("draft", "target")]
    f32 = ["vllm.draft.dtype=float32", "vllm.target.dtype=float32"]
    toy = ["--config", str(REPO / "configs" / "demo" / "toymath.yaml")]
    # two 7B servers in float32 on this machine's CPU (57 GiB of weights): refused in one line, nothing started
    assert serve.main([*toy, *names, *f32]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cpu: the run needs" in err and "vllm.target server weights" in err
    assert "start_servers reached" not in err
    # only the servers it starts are checked: the toy draft alone fits, so serving it gets as far as starting
    assert serve.main([*toy, names[1], "vllm.target.dtype=float32", "parts=[draft]"]) == 2
    assert "start_servers reached" in capsys.readouterr().err
