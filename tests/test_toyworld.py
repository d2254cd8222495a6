"""The toy-math world: its tokenizer, its recipe at tiny size, the committed checkpoints, and the demo on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval import demo
from specs_rl import toymath
from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import PrmFormat
from tests.conftest import REPO
from train import toyworld as tw

ASSETS = REPO / "specs_rl" / "assets" / "toymath"
needs_world = pytest.mark.skipif(
    not (ASSETS / "world.json").is_file(), reason="no committed world (python -m train.toyworld)"
)
TEXT = "Compute ((4*4)-3).\n\n4*4=16\n\n16-3=13\n\nThe answer is \\boxed{13}."


def _world() -> dict:
    return json.loads((ASSETS / "world.json").read_text())


def _fixed_problems(world: dict) -> list:
    return [
        toymath.to_problem(toymath.parse_problem(p), f"fixed-{i}")
        for i, p in enumerate(world["fixed_set"]["problems"])
    ]


# ------------------------------------------------------------------------------------------------------------------
# Tokenizer, AUC, config errors


def test_tokenizer_is_character_level_with_one_step_token_and_exact_bytes():
    from specs_rl.models.text import TokenText

    tok = tw.make_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids) == TEXT
    assert len(ids) == len(TEXT) - 3  # one token per character, the three "\n\n" merged into one token each
    assert tok("\n\n", add_special_tokens=False)["input_ids"] == [len(tok) - 1]
    assert (
        tok.eos_token == "</s>" and ids[0] != tok.eos_token_id and ids[-1] != tok.eos_token_id
    )  # nothing added
    assert TokenText(tok, len(tok)).exact  # the search backend stops steps with its O(1) byte table


@needs_world
def test_the_committed_world_json_reads_as_a_world_record_and_writes_back_the_same(tmp_path):
    """world.json's format is the typed record's: every key read into its field, written back key for key."""
    world = _world()
    record = tw.World.load(ASSETS / "world.json")
    assert isinstance(record.fixed_set, tw.FixedSet) and isinstance(record.prm_auc_draft_samples, tw.PrmAuc)
    assert (
        record.prm_auc_draft_samples.step_accuracy_at_half
        == world["prm_auc_draft_samples"]["step_accuracy_at_0.5"]
    )
    assert record.accuracy_greedy.target == world["accuracy_greedy"]["target"]
    back = record.to_json()
    assert back == world and list(back) == list(world)
    record.save(tmp_path / "world.json")
    assert json.loads((tmp_path / "world.json").read_text()) == world
    with pytest.raises(SpecsError, match="unknown key 'bogus'"):
        tw.World.from_json({**world, "bogus": 1})


def test_generate_restores_the_global_rng_and_the_padding_side():
    """Sampling seeds the global torch RNG (transformers' generate reads it) and pads on the left: both are put
    back when it returns, and when it raises."""
    import torch

    from specs_rl.tiny import tiny_causal_lm

    tok = tw.make_tokenizer()
    model = tiny_causal_lm(tok, seed=0, bos_token_id=None, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)  # fmt: skip
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = tw.generate(model, tok, ["1+2=", "3*3="], temperature=1.0, seed=5, max_new_tokens=4)
    assert torch.equal(torch.rand(3), expected) and tok.padding_side == "right"
    assert tw.generate(model, tok, ["1+2=", "3*3="], temperature=1.0, seed=5, max_new_tokens=4) == a  # seeded
    tok.padding_side = "right"
    state = torch.get_rng_state()

    class Broken:
        def generate(self, **kw):
            torch.rand(5)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tw.generate(Broken(), tok, ["1+2="], temperature=1.0, seed=0)
    assert torch.equal(torch.get_rng_state(), state) and tok.padding_side == "right"


def test_auc_is_the_pairwise_probability():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.random(40) < 0.6
    pairs = [(a > b) + 0.5 * (a == b) for a, ya in zip(s, y) for b, yb in zip(s, y) if ya and not yb]
    assert tw.auc(s, y) == pytest.approx(np.mean(pairs))
    assert math.isnan(tw.auc([0.1, 0.2], [True, True]))


@pytest.mark.parametrize(
    "bad",
    [
        "size=huge",
        "target.shape.hidden_size=33",  # not a multiple of the heads
        "target.trainer.output_dir=/tmp/x",  # set by the recipe
        "draft.init=draft",
        "stages=[nowhere]",
        "nonsense=1",
        "toymath.min_ops=0",
        "prm.init_layers=99",  # more than twice the target's depth
        "prm.init_layers=-1",
        "prm.trainer.freeze_layers=99",  # more than the PRM's layers
        "prm.trainer.freeze_layers=-1",
    ],
)
def test_bad_config_fails_in_one_line_before_anything_is_written(tmp_path, capsys, bad):
    out = tmp_path / "w"
    assert tw.main(["size=tiny", f"out={out}", f"assets={tmp_path / 'a'}", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not out.exists() and not (tmp_path / "a").exists()


def test_demo_world_choice(tmp_path):
    assert demo.demo_source(["world=tabular", "out=x"]) == (str(demo.DEFAULT_CONFIG), ["out=x"])
    assert demo.demo_source(["--config", "c.yaml", "world=toymath"]) == ("c.yaml", [])
    with pytest.raises(Exception, match="world must be one of"):
        demo.demo_source(["world=mars"])
    path, overrides = demo.demo_source([])
    if demo.toymath_assets() is None:
        assert (path, overrides) == (str(demo.DEFAULT_CONFIG), [])
    else:
        assert path == str(demo.SHORT_CONFIG)
        assert {a.split("=")[0] for a in overrides} == {"hf.draft.name", "hf.target.name", "hf.prm.name"}
        assert demo.demo_source(["hf.prm.name=/p"])[1][-1] == "hf.prm.name=/p"  # the user's choice is kept
        # parsed once: the config the demo runs, its backend read from the parsed config, not the raw argv
        cfg = demo.demo_config(["backend=vllm"])
        assert cfg.run.backend == "vllm" and cfg.run.out == "runs/demo-vllm"
        assert demo.demo_config(["backend=vllm", "out=/tmp/x"]).run.out == "/tmp/x"
        assert demo.demo_config(["--backend", "vllm"]).run.out == "runs/demo-vllm"


def test_resized_copy_cuts_or_extends_the_target_for_the_prm(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    tok = tw.make_tokenizer()
    shape = tw.Shape(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    tw.init_model(shape, tok, 0, tmp_path / "src")
    src = AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    for layers in (1, 5):
        tw.resized_copy(tmp_path / "src", layers, tmp_path / f"k{layers}")
        # it loads as the PRM's starting point, with the source's first layers unchanged
        model = AutoModelForTokenClassification.from_pretrained(tmp_path / f"k{layers}", num_labels=2)
        assert model.config.num_hidden_layers == len(model.model.layers) == layers
        for i in range(min(layers, 3)):
            for a, b in zip(model.model.layers[i].parameters(), src.model.layers[i].parameters()):
                assert torch.equal(a, b)
        ids = torch.tensor([tok("Compute (1+2).")["input_ids"]])
        assert model(ids).logits.shape == (1, ids.shape[1], 2)
        if (
            layers > 3
        ):  # copies of the last layer whose residual outputs start at zero: the model starts as src
            new = model.model.layers[4]
            assert torch.equal(new.self_attn.q_proj.weight, src.model.layers[2].self_attn.q_proj.weight)
            assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
            grown = AutoModelForCausalLM.from_pretrained(tmp_path / f"k{layers}")
            torch.testing.assert_close(grown(ids).logits, src(ids).logits, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# The recipe at tiny size


TINY_FAST = [
    "report_to=none",
    "target.trainer.max_steps=2",
    "draft.trainer.max_steps=2",
    "prm.trainer.max_steps=2",
    "draft.target_written=4",
    "measure.test_problems=8",
    "measure.latency_repeats=1",
]


def test_tiny_world_trains_with_the_project_recipes_and_records_its_numbers(tmp_path):
    out, assets = tmp_path / "w", tmp_path / "a"
    assert tw.main(["size=tiny", f"out={out}", f"assets={assets}", *TINY_FAST]) == 0
    world = json.loads((assets / "world.json").read_text())
    # the three stages ran through train.draft / train.prm, each with its exact input kept beside it
    for stage in ("target", "draft", "prm"):
        assert (out / f"{stage}.yaml").is_file() and (out / stage / "metrics.json").is_file()
        assert math.isfinite(world["stages"][stage]["train_loss"])
    draft_rows = [json.loads(line) for line in (out / "data" / "sft_draft.jsonl").read_text().splitlines()]
    assert len(draft_rows) == 64 + 4  # references + prompts whose solutions the target writes (distillation)
    assert sum("completion" not in r for r in draft_rows) == 4
    assert world["stages"]["draft"]["train_prompts"] == len(draft_rows) - 4  # 4 held out for the proxy
    # the draft's own labelled samples are in the PRM's training data, with exact labels
    rows = [json.loads(line) for line in (out / "data" / "prm_train.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["labels"] == toymath.label_steps(toymath.parse_problem(r["prompt"]), r["completions"])
    assert world["prm_data"]["rows"] == len(rows)
    # bf16 checkpoints with their tokenizer; the PRM knows how it reads steps
    for name in ("target", "draft", "prm"):
        cfg = json.loads((assets / name / "config.json").read_text())
        assert cfg["dtype"] == "bfloat16"
        assert (assets / name / "tokenizer.json").is_file()
    prm_config = json.loads((assets / "prm" / "prm_config.json").read_text())
    assert (prm_config["step_separator"], prm_config["step_reward"]) == ("\n\n", "prefix_min")  # token labels
    prm_shape = json.loads((assets / "prm" / "config.json").read_text())
    assert prm_shape["num_hidden_layers"] == 3  # the target's 2 + 1 new on top
    assert world["parameters"]["target"] > world["parameters"]["draft"] > 0
    assert world["latency_s_per_token"]["draft"] > 0 and world["latency_s_per_token"]["target"] > 0
    assert 0.0 <= world["accuracy_greedy"]["target"] <= 1.0
    fixed = world["fixed_set"]
    assert len(fixed["problems"]) == 4 and len(fixed["greedy_correct"]["target"]) == 4
    assert all(split == "test" for split in [fixed["split"]])
    assert all(toymath.split_of(toymath.parse_problem(p)) == "test" for p in fixed["problems"])
    assert tw.World.load(assets / "world.json").to_json() == world  # the typed record reads what it wrote

    # a measure-only rerun on the same checkpoints writes the same fields and, timings aside, the same numbers
    assert tw.main(["size=tiny", f"out={out}", f"assets={assets}", *TINY_FAST, "stages=[measure]"]) == 0
    again = json.loads((assets / "world.json").read_text())
    timings = {"latency_s_per_token", "latency_range_s_per_token", "latency_ratio_draft_over_target"}
    timings |= {"latency_ratio_range", "total_wall_s"}
    assert set(again) == set(world) - {"wall_s_this_run"}
    for key in set(again) - timings - {"config"}:
        assert again[key] == world[key], key
    assert again["config"] == {**world["config"], "stages": ["measure"]}


@pytest.mark.slow
def test_tiny_world_then_the_demo_on_it(tmp_path, capsys):
    out, assets = tmp_path / "w", tmp_path / "a"
    assert tw.main(["size=tiny", f"out={out}", f"assets={assets}", "report_to=none"]) == 0
    run = tmp_path / "demo"
    argv = [
        "--config", str(demo.TOYMATH_CONFIG),
        *[f"hf.{r}.name={assets / r}" for r in ("draft", "target", "prm")],
        "hf.max_step_tokens=8", "hf.max_tokens=24",  # random-ish tiny models rarely stop on their own
        "data.limit=2", "methods=[specs,beam_search_target,draft_only]", "n_grid=[2]", "seeds=[0]",
        f"out={run}", "wandb=false", "progress=false",
    ]  # fmt: skip
    assert demo.main(argv) == 0
    assert "SPECS / beam search (target), n=2: latency x" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["specs", "beam_search_target", "draft_only"]


# ------------------------------------------------------------------------------------------------------------------
# The committed world


@needs_world
def test_committed_world_is_small_bf16_and_meets_the_issue_targets():
    world = _world()
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total <= 20 * 2**20
    for name in ("target", "draft", "prm"):
        assert json.loads((ASSETS / name / "config.json").read_text())["dtype"] == "bfloat16"
    assert world["latency_ratio_draft_over_target"] <= 1 / 3  # measured at training time, not here
    assert world["latency_repeats"] >= 5 and len(world["latency_ratio_range"]) == 2
    acc = world["accuracy_greedy"]
    # the toy world's design: a target often wrong (so search has something to add), a draft clearly weaker
    assert 0.55 <= acc["target"] <= 0.80 and acc["test_problems"] >= 500
    assert acc["draft"] <= acc["target"] - 0.15
    # the PRM separates right from wrong steps of each model's own samples on held-out problems
    assert world["prm_auc_draft_samples"]["auc"] >= 0.9 and world["prm_auc_draft_samples"]["steps"] >= 1000
    assert world["prm_auc_target_samples"]["auc"] >= 0.85 and world["prm_auc_target_samples"]["steps"] >= 1000


@needs_world
def test_committed_models_load_as_plain_hf_models_and_reproduce_their_recorded_numbers():
    """Greedy accuracy and PRM AUC recomputed here, on the fixed held-out set (test-split problems the generator
    makes again from the world's config), from the committed bf16 checkpoints."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    world = _world()
    fixed = world["fixed_set"]
    cfg = tw.ToyWorldConfig(toymath=toymath.ToyMathConfig(**world["config"]["toymath"]))
    problems = tw.problems(cfg, "test", len(fixed["problems"]))
    # the generator still makes the same held-out set
    assert [p.prompt for p in problems] == fixed["problems"]
    tok = AutoTokenizer.from_pretrained(ASSETS / "target")
    prm = AutoModelForTokenClassification.from_pretrained(ASSETS / "prm", dtype=torch.float32).eval()
    fmt = PrmFormat.load(ASSETS / "prm")
    got = {}
    for name in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(ASSETS / name, dtype=torch.float32).eval()
        acc, ok, _ = tw.accuracy(model, tok, problems)
        mismatches = sum(a != b for a, b in zip(ok, fixed["greedy_correct"][name]))
        assert mismatches <= 1, (name, ok, fixed["greedy_correct"][name])
        assert acc == pytest.approx(fixed[f"accuracy_{name}"], abs=1.5 / len(problems))
        got[name] = (acc, tw.fixed_auc(model, prm, tok, problems, fmt, fixed["temperature"]))
        assert got[name][1] == pytest.approx(fixed[f"prm_auc_{name}_samples"], abs=0.01)
    # the issue's bands hold on this set too (60 problems: a few points of slack for its sampling error)
    assert 0.45 <= got["target"][0] <= 0.9 and got["draft"][0] <= got["target"][0] - 0.1
    assert got["draft"][1] >= 0.85 and got["target"][1] >= 0.8


@needs_world
def test_committed_models_search_through_the_hf_backend():
    import torch

    from specs_rl.hf.build import build_parts
    from specs_rl.models.config import ModelsConfig, ModelSpec, PrmSpec
    from specs_rl.search import SearchConfig, run_search

    world = _world()
    problems = _fixed_problems(world)[:4]
    greedy = dict(device="cpu", dtype="float32", temperature=0.0)
    parts = build_parts(
        ModelsConfig(
            draft=ModelSpec(name=str(ASSETS / "draft"), **greedy),
            target=ModelSpec(name=str(ASSETS / "target"), **greedy),
            prm=PrmSpec(name=str(ASSETS / "prm"), device="cpu", dtype="float32", prompt_field="prompt"),
            chat_template=False,
            max_step_tokens=40,
            max_tokens=160,
        )
    )
    results = run_search(
        problems, SearchConfig(strategy="target_only", max_steps=8), parts, torch.Generator()
    )
    for p, r, ok in zip(problems, results, world["fixed_set"]["greedy_correct"]["target"]):
        assert r.trace.finished
        assert (
            toymath.is_correct_solution(p, r.trace.text) == ok
        )  # the backend's greedy = transformers' greedy
        assert all(0.0 <= x <= 1.0 for s in r.steps for x in s.rewards)


@needs_world
def test_demo_runs_on_the_committed_world(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        *(f"out={out}", "data.limit=3", "methods=[specs,beam_search_target]"),
        *("n_grid=[2]", "method_n.specs=[2]", "seeds=[0]", "wandb=false"),  # the short demo, SPECS at n = 2
    ]
    assert demo.main([*argv, "progress=false"]) == 0
    assert "SPECS / beam search (target), n=2: latency x" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"specs", "beam_search_target"}
    assert all(r["problems"] == 3 and 0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert rows["specs"]["draft_step_fraction"] > 0  # SPECS did hand steps to the draft
