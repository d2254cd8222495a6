"""PRM kinds loaded natively: tiny checkpoints with each kind's real architecture name, config and weight names, read
through the backend's loader and compared with a direct computation of each kind's published recipe.

Tolerance: float32 on CPU, the cached-prefix path against one plain forward: 1e-5 absolute on rewards in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specs_rl.errors import SpecsError
from specs_rl.hf import PrmSpec
from specs_rl.hf.models import load_reward_model
from specs_rl.hf.prm import HFRewardModel
from specs_rl.prm_format import PrmFormat
from specs_rl.prm_kinds import (
    QWEN_PRM_SYSTEM,
    StepText,
    encode,
    kind_of_architectures,
    resolve_format,
    whole_text_mismatch,
)
from specs_rl.tiny import make_tokenizer, tiny_config
from specs_rl.types import Candidate, Problem, Trace

TOL = 1e-5
PROBLEM = Problem("p", "What is 2 + 3?\n\nPlease reason step by step.", meta={"problem": "What is 2 + 3?"})
STEPS = ["Step 1: add 2 and 3.", "So x = 5.\nThen x + 0 = 5.", "The answer is \\boxed{5}"]
SHAPE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64
)


def tokenizer(extra: list[str] = ()):
    tok = make_tokenizer()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def qwen2_body_weights(config, seed: int) -> dict[str, torch.Tensor]:
    """A random Qwen2 body's weights under the checkpoint names ``model.*``."""
    from transformers import Qwen2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = Qwen2Model(config)
        for p in body.parameters():  # norms start at 1: perturb them too so every weight matters
            p.data.add_(0.05 * torch.randn_like(p))
    return {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}


def save_checkpoint(
    path: Path, tok, config, weights: dict[str, torch.Tensor], architectures: list[str], **extra
):
    path.mkdir(parents=True, exist_ok=True)
    data = config.to_dict()
    data.update(architectures=architectures, **extra)
    (path / "config.json").write_text(json.dumps(data, indent=1))
    save_file(weights, str(path / "model.safetensors"))
    tok.save_pretrained(path)
    return path


def qwen_prm_checkpoint(
    path: Path, seed: int = 0, drop: str | None = None, add: str | None = None, shape: dict | None = None
) -> Path:
    tok = tokenizer(["<extra_0>"])
    config = tiny_config(tok, "qwen2", **(shape or SHAPE))
    w = qwen2_body_weights(config, seed)
    g = torch.Generator().manual_seed(seed + 1)
    h = config.hidden_size
    w.update(
        {
            "score.0.weight": torch.randn(h, h, generator=g) / h**0.5,
            "score.0.bias": torch.randn(h, generator=g) * 0.1,
            "score.2.weight": torch.randn(2, h, generator=g) / h**0.5,
            "score.2.bias": torch.randn(2, generator=g) * 0.1,
        }
    )
    if drop:
        del w[drop]
    if add:
        w[add] = torch.zeros(3)
    # the hub config's remote-code pointers stay in the file: they must be ignored, never run
    auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    return save_checkpoint(path, tok, config, w, ["Qwen2ForProcessRewardModel"], auto_map=auto_map)


def skywork_checkpoint(path: Path, seed: int = 0, lm_head: bool = True) -> Path:
    tok = tokenizer()
    config = tiny_config(tok, "qwen2", **SHAPE)
    w = qwen2_body_weights(config, seed)
    g = torch.Generator().manual_seed(seed + 1)
    h = config.hidden_size
    w.update(
        {
            "v_head.summary.weight": torch.randn(1, h, generator=g),
            "v_head.summary.bias": torch.randn(1, generator=g),
        }
    )
    if lm_head:  # the causal LM's head is in Skywork's checkpoints and never read
        w["lm_head.weight"] = torch.randn(config.vocab_size, h, generator=g)
    return save_checkpoint(path, tok, config, w, ["Qwen2ForPrmModel"])


def shepherd_checkpoint(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM

    tok = tokenizer(["ки"])
    config = tiny_config(tok, "llama", **SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def body_hidden(path: Path, ids: list[int], arch: str = "qwen2") -> torch.Tensor:
    """The last hidden states ``[L, h]`` of the checkpoint's body: transformers' reference model with the saved
    ``model.*`` tensors, one plain forward, no cache."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    raw = json.loads((path / "config.json").read_text())
    raw.pop("architectures"), raw.pop("auto_map", None), raw.pop("model_type", None)
    cfg_cls, model_cls = (Qwen2Config, Qwen2Model) if arch == "qwen2" else (LlamaConfig, LlamaModel)
    body = model_cls(cfg_cls(**raw))
    w = load_file(str(path / "model.safetensors"))
    body.load_state_dict({k[len("model.") :]: v for k, v in w.items() if k.startswith("model.")}, strict=True)
    with torch.no_grad():
        return body.eval()(input_ids=torch.tensor([ids])).last_hidden_state[0]


def rewards_through_backend(path: Path, **spec) -> tuple[list[float], HFRewardModel]:
    model, tok, fmt = load_reward_model(PrmSpec(name=str(path), device="cpu", dtype="float32", **spec))
    prm = HFRewardModel(model, tok, fmt, system_prompt=spec.get("system_prompt"))
    trace = Trace(PROBLEM)
    for s in STEPS:
        trace = trace.extend(Candidate((), s, (), False))
    return prm.step_rewards(trace), prm


def test_kinds_from_architectures_and_defaults():
    assert kind_of_architectures(["Qwen2ForProcessRewardModel"]) == "qwen_prm"
    assert kind_of_architectures(["Qwen2ForPrmModel"]) == "skywork_prm"
    assert kind_of_architectures(["MistralForCausalLM"]) == "shepherd_prm"
    assert kind_of_architectures(["LlamaForTokenClassification"]) == "token_classification"
    assert kind_of_architectures(["Foo"]) is None
    f = resolve_format(architectures=["Qwen2ForPrmModel"])
    assert (f.kind, f.step_separator) == ("skywork_prm", "\n")
    f = resolve_format(kind="shepherd_prm", step_tag="<tag>", good_token="Y", bad_token="N")
    assert (f.step_separator, f.good_token, f.bad_token, f.positive_label) == ("<tag>", "Y", "N", 0)
    # prm_config.json wins over the architectures (the project's own PRMs)
    saved = PrmFormat(step_separator="\n", step_reward="prefix_min")
    assert resolve_format(saved=saved, architectures=["LlamaForCausalLM"]) == saved
    with pytest.raises(ValueError, match="step_tag is read by kind shepherd_prm only"):
        resolve_format(kind="qwen_prm", step_tag="x")


def test_qwen_prm_gives_the_model_cards_rewards(tmp_path):
    """Qwen2.5-Math-PRM's card: system + user + assistant ("<extra_0>".join(steps) + "<extra_0>") through the chat
    template; reward = softmax(score(h))[1] at each <extra_0>."""
    path = qwen_prm_checkpoint(tmp_path / "qwen")
    got, prm = rewards_through_backend(path)
    assert prm.fmt.kind == "qwen_prm" and prm.text.system() == QWEN_PRM_SYSTEM
    tok = prm.tokenizer
    messages = [
        {"role": "system", "content": QWEN_PRM_SYSTEM},
        {"role": "user", "content": PROBLEM.meta["problem"]},
        {"role": "assistant", "content": "<extra_0>".join(STEPS) + "<extra_0>"},
    ]
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))["input_ids"]
    tag = tok.convert_tokens_to_ids("<extra_0>")
    at = [i for i, t in enumerate(ids) if t == tag]
    assert len(at) == len(STEPS)
    w = load_file(str(path / "model.safetensors"))
    h = body_hidden(path, ids)[at]
    logits = (
        torch.relu(h @ w["score.0.weight"].T + w["score.0.bias"]) @ w["score.2.weight"].T + w["score.2.bias"]
    )
    want = torch.softmax(logits, -1)[:, 1].tolist()
    assert got == pytest.approx(want, abs=TOL)
    assert len(set(round(x, 4) for x in got)) == len(got)  # distinct values: a wrong position would show


def test_skywork_prm_gives_prepare_input_rewards(tmp_path):
    """Skywork's prepare_input: encode(bos + problem + "\\n"), the response split at "\\n" with every piece encoded
    alone and followed by the step token; reward = sigmoid(v_head(h)) at the step tokens."""
    path = skywork_checkpoint(tmp_path / "sky")
    got, prm = rewards_through_backend(path)
    assert prm.fmt.kind == "skywork_prm"
    tok = prm.tokenizer
    # the recipe, written out (io_utils.prepare_input with step_token="\n")
    ids = tok.encode(tok.bos_token + PROBLEM.meta["problem"] + "\n")
    step_token_id = tok.encode("\n")[-1]
    flags = []
    for piece in "\n".join(STEPS).split("\n"):
        ids += (tok.encode(piece) if piece else []) + [step_token_id]
        flags.append(len(ids) - 1)
    w = load_file(str(path / "model.safetensors"))
    values = body_hidden(path, ids)[flags] @ w["v_head.summary.weight"].T + w["v_head.summary.bias"]
    per_line = torch.sigmoid(values[:, 0]).tolist()
    # our steps: the second holds two lines; its reward is the one at its last step token
    want = [per_line[0], per_line[2], per_line[3]]
    assert got == pytest.approx(want, abs=TOL)


def test_shepherd_prm_gives_the_cards_rewards(tmp_path):
    """Math-Shepherd's card: f"{question} {output}", steps ending " ки" joined by "\\n"; reward =
    softmax(logits[tag, [good, bad]])[0]."""
    path = shepherd_checkpoint(tmp_path / "shep")
    got, prm = rewards_through_backend(path, kind="shepherd_prm", step_tag="ки")
    tok = prm.tokenizer
    output = "\n".join(s + " ки" for s in STEPS)
    ids = tok.encode(f"{PROBLEM.meta['problem']} {output}")
    tag = tok.encode("ки", add_special_tokens=False)[-1]
    good, bad = tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]
    w = load_file(str(path / "model.safetensors"))
    h = body_hidden(path, ids, arch="llama")[[i for i, t in enumerate(ids) if t == tag]]
    logits = h @ w["lm_head.weight"][[good, bad]].T
    want = torch.softmax(logits, -1)[:, 0].tolist()
    assert len(want) == len(STEPS)
    assert got == pytest.approx(want, abs=TOL)
    # tag and tokens are settings: other good/bad tokens give other rewards
    other, _ = rewards_through_backend(path, kind="shepherd_prm", good_token="Y", bad_token="N")
    assert other != pytest.approx(got, abs=1e-3)


def test_a_tag_the_tokenizer_merges_is_refused(tmp_path):
    """ " is" is one token of the tiny BPE, so the tag "is" after a space is never read as "is"'s token."""
    path = shepherd_checkpoint(tmp_path / "shep")
    with pytest.raises(ValueError, match="does not end the encoding"):
        rewards_through_backend(path, kind="shepherd_prm", step_tag="is")


@pytest.mark.parametrize(
    "drop, add, words",
    [
        ("score.2.bias", None, ["missing 1 weight", "score.2.bias"]),
        (None, "score.9.weight", ["unexpected 1 weight", "score.9.weight"]),
        (
            "model.layers.1.mlp.up_proj.weight",
            "v_head.summary.weight",
            ["mlp.up_proj", "v_head.summary.weight"],
        ),
    ],
)
def test_a_checkpoint_with_missing_or_unexpected_weights_is_refused_in_one_line(tmp_path, drop, add, words):
    path = qwen_prm_checkpoint(tmp_path / "bad", drop=drop, add=add)
    with pytest.raises(SpecsError) as e:
        load_reward_model(PrmSpec(name=str(path), device="cpu"))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_the_names_are_checked_before_any_weight_loads(tmp_path, monkeypatch):
    """The header check refuses before transformers is asked to load anything."""
    from specs_rl.hf import prm_arch

    path = qwen_prm_checkpoint(tmp_path / "bad", drop="score.0.weight")

    def no_load(*a, **k):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(prm_arch.qwen2_prm_class("qwen_prm"), "from_pretrained", no_load)
    with pytest.raises(SpecsError, match="missing 1 weight"):
        load_reward_model(PrmSpec(name=str(path), device="cpu"))


def test_skywork_without_lm_head_loads_and_extra_lm_head_is_ignored(tmp_path):
    a, _ = rewards_through_backend(skywork_checkpoint(tmp_path / "a", seed=3, lm_head=False))
    b, _ = rewards_through_backend(skywork_checkpoint(tmp_path / "b", seed=3, lm_head=True))
    assert a == pytest.approx(b, abs=TOL)


def test_a_kind_that_contradicts_the_architecture_is_refused(tmp_path):
    path = skywork_checkpoint(tmp_path / "sky")
    with pytest.raises(SpecsError, match="kind qwen_prm was set, but .* Qwen2ForPrmModel"):
        load_reward_model(PrmSpec(name=str(path), device="cpu", kind="qwen_prm"))


def test_piecewise_encoding_matches_the_whole_text_for_each_kind():
    for kind, extra in (("qwen_prm", ["<extra_0>"]), ("shepherd_prm", ["ки"])):
        tok = tokenizer(extra)
        st = StepText(resolve_format(kind=kind))
        assert whole_text_mismatch(st, tok, PROBLEM, STEPS) is None, kind
        ids, ends, plen = encode(st, tok, PROBLEM, STEPS)
        assert len(ends) == len(STEPS) and plen < ends[0]


def test_a_merge_across_pieces_is_reported():
    class MergesTagNewline:  # one id per character, but "T\n" is one token
        def __call__(self, text, add_special_tokens=True):
            out, i = [], 0
            while i < len(text):
                two = text[i : i + 2] == "T\n"
                out.append(1000 if two else ord(text[i]))
                i += 2 if two else 1
            return {"input_ids": out}

    st = StepText(resolve_format(kind="shepherd_prm", step_tag="T"))
    msg = whole_text_mismatch(st, MergesTagNewline(), Problem("p", "Q"), ["a", "b"])
    assert msg is not None and "from token 4" in msg, msg  # "Q", " ", "a", " ", then "T" vs "T\n"


# -- specs-rl prm score -------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def run_score(capsys, *args: str) -> tuple[int, list[list[float]], str]:
    from specs_rl.cli import main

    rc = main(["prm", "score", *args])
    out, err = capsys.readouterr()
    return rc, [json.loads(line)["rewards"] for line in out.splitlines() if line.strip()], err


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "not JSON"),
        ('["a"]', "must be an object"),
        ('{"problem": "p"}', "missing key(s) steps"),
        ('{"problem": 3, "steps": ["a"]}', "problem must be a string"),
        ('{"problem": "p", "steps": "a"}', "steps must be a list of strings"),
        ('{"problem": "p", "steps": ["a", 2]}', "steps must be a list of strings"),
        ('{"problem": "p", "steps": []}', "steps is empty"),
    ],
)
def test_prm_score_refuses_a_malformed_row_by_line_before_loading(tmp_path, capsys, monkeypatch, line, why):
    import specs_rl.hf.models as models

    monkeypatch.setattr(models, "load_reward_model", lambda *a, **k: pytest.fail("a model was loaded"))
    good = {"problem": "p", "steps": ["a"]}
    rows = write_rows(tmp_path / "rows.jsonl", [good, "", line])
    rc, out, err = run_score(capsys, "model=tiny", f"input={rows}", "device=cpu")
    assert rc == 2 and out == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {rows}:3: ") and why in lines[0], err


def test_prm_score_needs_model_and_an_existing_input(tmp_path, capsys):
    rc, _, err = run_score(capsys, f"input={tmp_path / 'x.jsonl'}")
    assert rc == 2 and "model is required" in err
    rc, _, err = run_score(capsys, "model=tiny", f"input={tmp_path / 'x.jsonl'}")
    assert rc == 2 and "file not found" in err


@pytest.mark.parametrize("kind", ["qwen_prm", "skywork_prm", "shepherd_prm"])
def test_prm_score_gives_each_kinds_step_rewards(tmp_path, capsys, kind):
    make = {
        "qwen_prm": qwen_prm_checkpoint,
        "skywork_prm": skywork_checkpoint,
        "shepherd_prm": shepherd_checkpoint,
    }
    path = make[kind](tmp_path / kind)
    spec = {"kind": "shepherd_prm"} if kind == "shepherd_prm" else {}
    want, prm = rewards_through_backend(path, **spec)  # checked against the recipes above
    rows = write_rows(tmp_path / "rows.jsonl", [{"problem": PROBLEM.meta["problem"], "steps": STEPS}] * 2)
    args = [
        f"model={path}",
        f"input={rows}",
        "device=cpu",
        "dtype=float32",
        *(f"{k}={v}" for k, v in spec.items()),
    ]
    rc, out, err = run_score(capsys, *args)
    assert rc == 0 and len(out) == 2
    assert out[0] == pytest.approx(want, abs=TOL) and out[1] == pytest.approx(want, abs=TOL)
    assert f"read as kind {kind}" in err
    text = prm.text.text(prm.tokenizer, PROBLEM, STEPS)
    assert text in err and err.count("the text scored") == 1  # the first row only, unless --show
    rc, _, err = run_score(capsys, *args, "--show")
    assert rc == 0 and err.count("the text scored") == 2


def test_prm_score_reads_the_toy_worlds_prm_as_the_search_does(tmp_path, capsys):
    """The project's own PRM (specs_rl/assets/toymath/prm, prefix_min token labels): the rewards of the toy world's
    correct and corrupted solutions, equal to the search's reading of the same traces; the corrupted step scores
    below the correct one."""
    import numpy as np

    from specs_rl.toymath import ToyMathConfig, corrupted_solution, generate, to_problem

    toy = Path(__file__).resolve().parents[1] / "specs_rl" / "assets" / "toymath" / "prm"
    problems = generate(ToyMathConfig(problems=3), "test")
    rng = np.random.default_rng(0)
    solutions = [(p, p.steps()) for p in problems] + [
        (p, corrupted_solution(p, rng, at=1)[0]) for p in problems
    ]
    rows = write_rows(
        tmp_path / "toy.jsonl", [{"problem": p.text + "\n\n", "steps": s} for p, s in solutions]
    )
    rc, out, err = run_score(capsys, f"model={toy}", f"input={rows}", "device=cpu", "dtype=float32")
    assert rc == 0 and len(out) == len(solutions) and "read as kind token_classification" in err
    model, tok, fmt = load_reward_model(PrmSpec(name=str(toy), device="cpu", dtype="float32"))
    prm = HFRewardModel(model, tok, fmt, prompt_field="prompt")  # the toy configs' reading
    for (p, steps), got in zip(solutions, out):
        trace = Trace(to_problem(p, "x"))
        for s in steps:
            trace = trace.extend(Candidate((), s, (), False))
        assert got == pytest.approx(prm.step_rewards(trace), abs=TOL)
    n = len(problems)
    assert out[n + 2][1] < out[2][1]  # the third problem: its corrupted second step reads as wrong


def test_prm_score_on_a_tiny_prm(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", [{"problem": "What is 2 + 3?", "steps": STEPS}])
    rc, out, err = run_score(capsys, "model=tiny", f"input={rows}", "device=cpu")
    assert rc == 0 and len(out[0]) == len(STEPS) and all(0 <= r <= 1 for r in out[0])


def test_a_bad_prm_checkpoint_is_refused_before_the_generators_load(tmp_path, monkeypatch):
    import specs_rl.hf.parts as hf_parts
    from specs_rl.hf import HFConfig, build_parts

    path = qwen_prm_checkpoint(tmp_path / "bad", drop="score.0.bias")
    monkeypatch.setattr(hf_parts, "load_causal_lm", lambda *a, **k: pytest.fail("a generator was loaded"))
    with pytest.raises(SpecsError, match=r"hf.prm: .*missing 1 weight\(s\): score.0.bias"):
        build_parts(HFConfig(prm=PrmSpec(name=str(path), device="cpu")))


def test_prm_backend_auto_serves_only_qwen_prm(tmp_path):
    """vLLM serves Qwen2ForProcessRewardModel; a Skywork PRM or a tag-read causal LM runs in-process."""
    from specs_rl.hf import HFConfig
    from specs_rl.vllm.config import VLLMConfig
    from specs_rl.vllm.task import prm_backend

    qwen = qwen_prm_checkpoint(tmp_path / "qwen")
    sky = skywork_checkpoint(tmp_path / "sky")
    shep = shepherd_checkpoint(tmp_path / "shep")
    assert prm_backend(VLLMConfig(), HFConfig(prm=PrmSpec(name=str(qwen)))) == "vllm"
    assert prm_backend(VLLMConfig(), HFConfig(prm=PrmSpec(name=str(sky)))) == "hf"
    assert prm_backend(VLLMConfig(), HFConfig(prm=PrmSpec(name=str(shep), kind="shepherd_prm"))) == "hf"
