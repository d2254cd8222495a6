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
    hub = model_facts("target", "Qwen/Qwen2.5-Math-7B-Instruct")
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
