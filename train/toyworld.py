"""``python -m train.toyworld``: train the toy-math world (target, draft, PRM) with the project's own trainers.

    python -m train.toyworld --config configs/train/toyworld.yaml            # the committed checkpoints (~1 h, CPU)
    python -m train.toyworld size=tiny out=/tmp/tw assets=/tmp/tw/assets     # seconds: configs/train/toyworld_tiny.yaml

The recipe, top to bottom (every stage writes into ``out``; the three final checkpoints go to ``assets``):

1. data: problems of the ``train`` split of :mod:`specs_rl.toymath` (held-out ``tune`` / ``test`` problems are never
   seen in training), reference solutions as ``{prompt, completion}`` JSONL;
2. a character-level tokenizer: every byte is one token (GPT-2's byte alphabet, so the search backend reads token
   bytes exactly), plus ``"\\n\\n"`` as one token (one token ends a step) and ``<pad>`` / ``</s>`` / ``<unk>``;
3. models initialized from configs (Llama architecture, ``from_config``) and saved as local folders;
4. the target: SFT on reference solutions with ``train.draft`` (mode sft);
5. the draft: SFT with ``train.draft`` on reference solutions (plus, optionally, solutions the trained target
   writes itself: sequence-level distillation), with the trained target as the acceptance-proxy teacher;
6. the PRM: ``train.prm`` (token classification, label on each step's separator), initialized from the trained
   target's weights, on (a) the generator's exactly labelled solutions with plausible errors and (b) the draft's
   and the target's OWN samples on training problems, labelled exactly by :func:`specs_rl.toymath.label_steps`;
7. the checkpoints are saved in bf16 under ``assets`` and measured there, loaded the way the search loads them:
   per-token generation latency at batch 1 (the search backend's sampler, median of repeats), greedy accuracy on
   the ``test`` split, the PRM's AUC on the draft's own samples on ``test`` problems, and the same numbers on a
   small fixed set (what ``tests/test_toyworld.py`` checks); all into ``assets/world.json`` (:class:`World`).

Stages 1-6 are :func:`train_world`, stage 7 :func:`measure_world`; the code carries the same numbers. Sampling seeds
the global torch RNG (``generate()`` reads it) and pads on the left: :func:`generate` restores both when it returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from specs_rl import toymath
from specs_rl.cli import entry_point
from specs_rl.config import RawValue, config_from_argv, to_dict
from specs_rl.errors import SpecsError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"full": REPO / "configs/train/toyworld.yaml", "tiny": REPO / "configs/train/toyworld_tiny.yaml"}
SPECIALS = ("<pad>", "</s>", "<unk>")
STAGES = ("target", "draft", "prm", "measure")
STEP_TOKEN = "\u010a\u010a"  # "\n\n" in GPT-2's byte alphabet: one token


# ------------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Shape:
    """A Llama model's size (``LlamaConfig`` fields)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 128
    max_position_embeddings: int = 192


@dataclass
class ModelStage:
    """One model: its shape (ignored for ``init: target``) and the trainer fields passed to its recipe."""

    shape: Shape = field(default_factory=Shape)
    init: str = field(
        default="scratch", metadata={"help": "scratch (from_config) | target (the trained target)"}
    )
    train_problems: int = field(default=1000, metadata={"help": "training problems (train split)"})
    trainer: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "fields of the recipe (TRL / TrainingArguments)"}
    )


@dataclass
class DraftStage(ModelStage):
    target_written: int = field(
        default=0,
        metadata={"help": "extra training prompts whose solutions the trained target writes (distillation)"},
    )


@dataclass
class PrmStage(ModelStage):
    synthetic_rows: int = field(
        default=1000, metadata={"help": "generator rows with plausible errors (toymath.prm_rows)"}
    )
    error_rate: float = field(default=0.5, metadata={"help": "fraction of generator rows with one error"})
    draft_samples: int = field(
        default=1000, metadata={"help": "draft samples on training problems, labelled"}
    )
    target_samples: int = field(
        default=200, metadata={"help": "target samples on training problems, labelled"}
    )
    sample_temperature: float = field(default=1.0, metadata={"help": "temperature of those samples"})
    eval_samples: int = field(
        default=200, metadata={"help": "draft samples on tune problems: the trainer's held-out set"}
    )
    init_layers: int = field(
        default=0,
        metadata={
            "help": "with init: target, the PRM's depth: the target's first k layers (k < its depth), or all of "
            "them with copies of its last layer on top, starting as the identity (k > its depth); 0: the target "
            "as it is"
        },
    )


@dataclass
class MeasureConfig:
    test_problems: int = field(default=500, metadata={"help": "test-split problems for greedy accuracy"})
    auc_problems: int = field(default=200, metadata={"help": "test problems for the PRM's AUC"})
    auc_samples: int = field(default=4, metadata={"help": "draft samples per AUC problem"})
    auc_temperature: float = field(default=1.0, metadata={"help": "temperature of those draft samples"})
    fixed_problems: int = field(default=24, metadata={"help": "the small fixed set the tests recheck"})
    latency_tokens: int = field(default=48, metadata={"help": "tokens per latency repeat"})
    latency_repeats: int = field(
        default=7, metadata={"help": "latency repeats (median; the first is dropped)"}
    )


@dataclass
class ToyWorldConfig:
    size: str = field(
        default="full", metadata={"help": "full | tiny: the default config file (with no --config)"}
    )
    out: str = field(default="runs/toyworld", metadata={"help": "work folder: data, stage checkpoints, logs"})
    assets: str = field(default="specs_rl/assets/toymath", metadata={"help": "where the final models go"})
    seed: int = 0
    threads: int = field(default=2, metadata={"help": "torch threads (the machine's cores)"})
    stages: list[str] = field(
        default_factory=lambda: list(STAGES),
        metadata={
            "help": f"stages to run, from {STAGES}; the others are reused from out (after a crash, or to retrain "
            "one model: stages=[prm,measure])"
        },
    )
    trainer: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "trainer fields for every stage (e.g. report_to: none); bare use_cpu= / bf16= / "
            "report_to= on the command line land here"
        },
    )
    toymath: toymath.ToyMathConfig = field(default_factory=toymath.ToyMathConfig)
    target: ModelStage = field(default_factory=ModelStage)
    draft: DraftStage = field(default_factory=DraftStage)
    prm: PrmStage = field(default_factory=PrmStage)
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    def validate(self) -> None:
        if self.size not in CONFIGS:
            raise SpecsError(f"size must be one of {', '.join(CONFIGS)}, got {self.size!r}")
        bad = [x for x in self.stages if x not in STAGES]
        if bad or not self.stages:
            raise SpecsError(f"stages must be a non-empty list from {', '.join(STAGES)}, got {self.stages!r}")
        try:
            self.toymath.validate()
        except ValueError as e:
            raise SpecsError(str(e)) from None
        for name in ("target", "draft", "prm"):
            stage = getattr(self, name)
            if stage.init not in ("scratch", "target") or (name == "target" and stage.init != "scratch"):
                raise SpecsError(f"{name}.init must be scratch{' or target' if name != 'target' else ''}")
            s = stage.shape
            if s.hidden_size % s.num_attention_heads or s.num_attention_heads % s.num_key_value_heads:
                raise SpecsError(f"{name}.shape: heads must divide hidden_size and kv heads divide heads")
            if name == "prm":
                if stage.init_layers > 2 * self.target.shape.num_hidden_layers:
                    raise SpecsError(
                        f"prm.init_layers={stage.init_layers} is more than twice the target's "
                        f"{self.target.shape.num_hidden_layers} layers"
                    )
                if stage.init_layers < 0:
                    raise SpecsError(f"prm.init_layers must be >= 0, got {stage.init_layers}")
                depth = (
                    (stage.init_layers or self.target.shape.num_hidden_layers)
                    if stage.init == "target"
                    else stage.shape.num_hidden_layers
                )
                frozen = stage.trainer.get("freeze_layers", 0)
                if isinstance(frozen, bool) or not isinstance(frozen, int) or not 0 <= frozen <= depth:
                    raise SpecsError(
                        f"prm.trainer.freeze_layers must be an integer in [0, {depth}], got {frozen!r}"
                    )
            for bad in ("model_name_or_path", "output_dir", "dataset_name", "target_model_name_or_path"):
                if bad in stage.trainer:
                    raise SpecsError(f"{name}.trainer.{bad} is set by the recipe; remove it")


GLOBAL_TRAINER_KEYS = ("use_cpu", "bf16", "report_to")


def parse_config(argv: Sequence[str]) -> ToyWorldConfig:
    """``[--config PATH] [key=value ...]`` (``size=tiny`` picks configs/train/toyworld_tiny.yaml when no --config)."""
    argv = [f"trainer.{a}" if a.split("=", 1)[0] in GLOBAL_TRAINER_KEYS else a for a in argv]
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    size = next((a.split("=", 1)[1] for a in argv if a.startswith("size=")), "full")
    if size not in CONFIGS:
        raise SpecsError(f"size must be one of {', '.join(CONFIGS)}, got {size!r}")
    default = None if has_config else str(CONFIGS[size])
    cfg = config_from_argv(ToyWorldConfig, argv, "python -m train.toyworld", default_config=default)
    import yaml

    def typed(d: dict[str, Any]) -> dict[str, Any]:  # key=value text inside a mapping stays text: parse it
        return {k: yaml.safe_load(v) if isinstance(v, RawValue) else v for k, v in d.items()}

    cfg.trainer = typed(cfg.trainer)
    for stage in (cfg.target, cfg.draft, cfg.prm):
        stage.trainer = typed(stage.trainer)
    cfg.validate()
    return cfg


parse = parse_config  # the name tests/test_configs.py loads every train config with


# ------------------------------------------------------------------------------------------------------------------
# The record: world.json


@dataclass
class PrmData:
    """The PRM's training rows: how many, their labelled steps, the fraction of correct steps."""

    rows: int
    steps: int
    correct_fraction: float


@dataclass
class GreedyAccuracy:
    """Greedy accuracy on the first ``test_problems`` test problems: whole solutions, and the boxed answer only."""

    target: float
    target_answer_only: float
    draft: float
    draft_answer_only: float
    test_problems: int


@dataclass
class PrmAuc:
    """The PRM's AUC on one model's own samples of held-out problems (``step_accuracy_at_0.5`` in world.json)."""

    auc: float
    problems: int
    samples_per_problem: int
    temperature: float
    steps: int
    correct_fraction: float
    step_accuracy_at_half: float


@dataclass
class FixedSet:
    """The small fixed set the tests recompute: its problems, greedy correctness and AUC per model."""

    split: str
    problems: list[str]
    greedy_correct: dict[str, list[bool]]
    sample_seed: int
    temperature: float
    accuracy_target: float
    prm_auc_target_samples: float
    accuracy_draft: float
    prm_auc_draft_samples: float


# field name -> its key in world.json, where they differ
JSON_KEYS = {"step_accuracy_at_half": "step_accuracy_at_0.5"}
SECTIONS = {
    "prm_data": PrmData,
    "accuracy_greedy": GreedyAccuracy,
    "prm_auc_draft_samples": PrmAuc,
    "prm_auc_target_samples": PrmAuc,
    "fixed_set": FixedSet,
}


@dataclass
class World:
    """What a run records in ``assets/world.json``: the resolved config, each training stage's metrics, and the
    measurements of the saved checkpoints (stage 7). A field still None when the file is written (a stage that did
    not run) is left out of the file."""

    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> the recipe's metrics.json
    prm_data: PrmData | None = None
    train_wall_s: float | None = None
    wall_s_this_run: float | None = None
    checkpoint_bytes: dict[str, int] | None = None
    parameters: dict[str, int] | None = None
    shapes: dict[str, dict[str, int]] | None = None
    latency_s_per_token: dict[str, float] | None = None
    latency_range_s_per_token: dict[str, list[float]] | None = None
    latency_ratio_draft_over_target: float | None = None  # paired: median of the per-repeat ratios
    latency_ratio_range: list[float] | None = None
    latency_repeats: int | None = None
    accuracy_greedy: GreedyAccuracy | None = None
    prm_auc_draft_samples: PrmAuc | None = None
    prm_auc_target_samples: PrmAuc | None = None
    fixed_set: FixedSet | None = None
    total_wall_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The world.json object (its keys as they have always been)."""

        def plain(x: Any) -> Any:
            if dataclasses.is_dataclass(x):
                return {JSON_KEYS.get(f.name, f.name): plain(getattr(x, f.name)) for f in fields(x)}
            return x

        return {
            f.name: plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> World:
        """A world.json object as a :class:`World`; an unknown or missing key is a :class:`SpecsError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise SpecsError(f"world.json: unknown key {unknown[0]!r}")
        if "config" not in obj:
            raise SpecsError("world.json: missing key 'config'")
        kwargs = dict(obj)
        back = {v: k for k, v in JSON_KEYS.items()}
        for key, section in SECTIONS.items():
            if kwargs.get(key) is not None:
                try:
                    kwargs[key] = section(**{back.get(k, k): v for k, v in kwargs[key].items()})
                except TypeError as e:
                    raise SpecsError(f"world.json: {key}: {e}") from None
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> World:
        return cls.from_json(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))


# ------------------------------------------------------------------------------------------------------------------
# Tokenizer and models


def make_tokenizer() -> Any:
    """Character-level tokenizer: the 256 byte characters (GPT-2's printable byte alphabet), ``"\\n\\n"`` merged into
    one token, and ``<pad>`` / ``</s>`` (eos) / ``<unk>``; no BOS is added. Decoding is byte-exact.

    >>> tok = make_tokenizer()
    >>> ids = tok("4*4=16\\n\\n")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (7, '4*4=16\\n\\n')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from specs_rl.models.text import bytes_to_unicode

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for _, ch in sorted(bytes_to_unicode().items()):  # byte order: id = 3 + byte
        vocab[ch] = len(vocab)
    vocab[STEP_TOKEN] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u010a", "\u010a")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def init_model(shape: Shape, tokenizer: Any, seed: int, path: Path) -> int:
    """A random Llama causal LM of ``shape`` saved (with the tokenizer) at ``path``; returns its parameter count."""
    from specs_rl.tiny import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, seed=seed, bos_token_id=None, **to_dict(shape))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def resized_copy(src: Path, layers: int, path: Path) -> int:
    """The causal LM at ``src`` with ``layers`` decoder layers, saved with its tokenizer at ``path``; returns its
    parameter count. Fewer layers than ``src``: its first ``layers`` (a cheaper PRM); more: copies of its last
    layer appended with their residual outputs (attention ``o_proj``, MLP ``down_proj``) zeroed, so that the copy
    starts as exactly ``src`` and the new layers learn from there. They matter for a PRM: the target writes its
    prediction of a token only at the position before it, in its last layers, so judging the written token against
    that prediction needs layers above them (train/TOYWORLD.md, "The PRM")."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    stack = model.model.layers
    if layers <= len(stack):
        model.model.layers = stack[:layers]
    else:
        for _ in range(layers - len(stack)):
            layer = copy.deepcopy(stack[-1])
            layer.self_attn.o_proj.weight.data.zero_()
            layer.mlp.down_proj.weight.data.zero_()
            stack.append(layer)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        kinds = list(model.config.layer_types)
        model.config.layer_types = (kinds + [kinds[-1]] * layers)[:layers]
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------------------
# Data


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def problems(cfg: ToyWorldConfig, split: str, count: int, offset: int = 0) -> list[Any]:
    """``count`` problems of ``split`` (as :class:`specs_rl.types.Problem`), skipping the first ``offset``."""
    from dataclasses import replace

    toys = toymath.generate(replace(cfg.toymath, problems=offset + count), split)[offset:]
    return [toymath.to_problem(p, f"{split}-{offset + i}") for i, p in enumerate(toys)]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    temperature: float,
    seed: int,
    batch: int = 64,
    max_new_tokens: int = 96,
) -> list[str]:
    """Completions of ``prompts`` (greedy at temperature 0), left-padded batches, eos removed. ``generate()`` samples
    from the global torch RNG, so each batch seeds it (from ``seed``); the global RNG state and the tokenizer's
    ``padding_side`` are restored on return, whatever happens."""
    import torch

    rng_state, padding_side = torch.get_rng_state(), tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(list(prompts[i : i + batch]), return_tensors="pt", padding=True)
            kw: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                kw = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            with torch.inference_mode():
                ids = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **kw,
                )  # [B, L + new]
            new = ids[:, enc["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        torch.set_rng_state(rng_state)
    return out


def labelled_samples(
    model: Any, tokenizer: Any, probs: Sequence[Any], *, temperature: float, seed: int
) -> list[dict[str, Any]]:
    """Stepwise rows ``{prompt, completions, labels, error_chars}`` of the model's own samples, labelled exactly."""
    texts = generate(model, tokenizer, [p.prompt for p in probs], temperature=temperature, seed=seed)
    rows = []
    for p, text in zip(probs, texts):
        steps = toymath.split_steps(text)
        if steps:
            rows.append(toymath.stepwise_row(p, p.prompt, steps))
    return rows


# ------------------------------------------------------------------------------------------------------------------
# Measurements


def accuracy(model: Any, tokenizer: Any, probs: Sequence[Any]) -> tuple[float, list[bool], float]:
    """Greedy accuracy: ``(solution accuracy, per-problem solution correctness, answer accuracy)``; a solution is
    correct when every step is right and the answer boxed (:func:`toymath.is_correct_solution`); the answer
    accuracy only compares the last ``\\boxed{}`` with the gold answer (what the search's grader checks)."""
    from specs_rl.grading import extract_boxed

    texts = generate(model, tokenizer, [p.prompt for p in probs], temperature=0.0, seed=0)
    ok = [toymath.is_correct_solution(p, t) for p, t in zip(probs, texts)]
    answer_ok = [(extract_boxed(t) or "").strip() == p.answer for p, t in zip(probs, texts)]
    return float(np.mean(ok)), ok, float(np.mean(answer_ok))


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC (Mann-Whitney): P(score of a correct step > score of a wrong one), ties counted half.

    >>> auc([0.9, 0.8, 0.3, 0.1], [True, True, False, True])
    0.6666666666666666
    """
    from scipy.stats import rankdata

    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def prm_step_scores(
    prm: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], fmt: Any = None
) -> list[list[float]]:
    """The PRM's reward of every step of every row (the inference encoding of :mod:`specs_rl.models.prm_format`, read the
    way ``fmt``, the checkpoint's ``prm_config.json``, says)."""
    from specs_rl.training.prm import score_steps

    return [score_steps(prm, tokenizer, r["prompt"], r["completions"], fmt) for r in rows]


def step_latency(paths: dict[str, Path], probs: Sequence[Any], tokens: int, repeats: int) -> dict[str, Any]:
    """Seconds per generated token at batch 1 through the search backend (``HFSampler``, n = 1), each model loaded
    from its path exactly as ``backend: hf`` loads it (float32 on the CPU); eos ignored, so every repeat generates
    ``tokens`` tokens after the prompt of a different problem. The models take turns within each repeat, so a slow
    spell of a shared machine hits all of them alike; the first repeat is dropped (warm-up). Returns
    ``{"per_token_s": {name: median}, "per_token_range_s": {name: [min, max]}, "ratios": {"a/b": median of the
    per-repeat ratios}, "ratio_ranges": {"a/b": [min, max]}, "repeats": k}``."""
    import torch

    from specs_rl.hf.load import load_causal_lm
    from specs_rl.hf.sampler import HFLM, HFSampler
    from specs_rl.models.config import ModelSpec
    from specs_rl.types import Trace

    samplers = {}
    for name, path in paths.items():
        model, tok = load_causal_lm(ModelSpec(name=str(path), device="cpu"), "latency")
        lm = HFLM(model, tok, name=path.name)
        samplers[name] = (
            lm,
            HFSampler(lm, temperature=1.0, max_step_tokens=tokens, max_tokens=tokens, ignore_eos=True),
        )
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(repeats + 1):
        for name, (lm, sampler) in samplers.items():
            lm.stack.clear()
            trace = Trace(probs[r % len(probs)])
            lm.prompt_ids(trace.problem)
            t0 = time.perf_counter()
            cand = sampler.propose([trace], 1, gen, to_end=True)[0][0]
            times[name].append((time.perf_counter() - t0) / len(cand.token_ids))
    names = list(paths)
    pairs = {
        f"{a}/{b}": [x / y for x, y in zip(times[a][1:], times[b][1:])]
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return {
        "per_token_s": {n: statistics.median(times[n][1:]) for n in names},
        "per_token_range_s": {n: [min(times[n][1:]), max(times[n][1:])] for n in names},
        "ratios": {k: statistics.median(v) for k, v in pairs.items()},
        "ratio_ranges": {k: [min(v), max(v)] for k, v in pairs.items()},
        "repeats": repeats,
    }


def save_bf16(src: Path, dst: Path, head: str) -> int:
    """Copy a trained checkpoint to ``dst`` in bfloat16 (+ tokenizer, + prm_config.json); returns bytes written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForTokenClassification
    model = cls.from_pretrained(src, dtype=torch.float32).to(torch.bfloat16)
    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    if (src / "prm_config.json").is_file():
        shutil.copy(src / "prm_config.json", dst / "prm_config.json")
    return sum(f.stat().st_size for f in dst.iterdir())


# ------------------------------------------------------------------------------------------------------------------
# The recipe


def run_recipe(
    module: Any, out: Path, name: str, fields: dict[str, Any], *, reuse: bool = False
) -> dict[str, Any]:
    """Write the stage's flat YAML (the exact input of the recipe), run ``module.main`` on it, return its metrics
    (also kept in ``out/<name>.done.json``). ``reuse``: return the metrics of the earlier run instead."""
    import yaml

    done = out / f"{name}.done.json"
    if reuse:
        if not done.is_file():
            raise SpecsError(f"stages skips {name}, but {done} is missing: run that stage first")
        print(f"[toyworld] {name}: reusing {fields['output_dir']}", flush=True)
        return {**json.loads(done.read_text()), "reused": True}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    print(f"[toyworld] {name}: python -m {module.__name__} --config {path}", flush=True)
    t0 = time.perf_counter()
    rc = module.main(["--config", str(path)])
    if rc:
        raise SpecsError(f"{name}: {module.__name__} exited with {rc}")
    metrics = json.loads((Path(fields["output_dir"]) / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - t0
    print(f"[toyworld] {name}: done in {metrics['wall_s']:.0f} s", flush=True)
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def stage_fields(cfg: ToyWorldConfig, out: Path, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A stage's recipe input: its own ``fields``, its output folder and seed, then the trainer fields (common ones,
    those for every stage, the stage's own: later ones win)."""
    trainer = getattr(cfg, name).trainer
    return {
        **fields,
        "output_dir": str(out / name),
        "seed": cfg.seed,
        **COMMON_TRAINER,
        **cfg.trainer,
        **trainer,
    }


COMMON_TRAINER = {
    "use_cpu": True,
    "bf16": False,  # this CPU has no native bf16: fp32 trains faster (checkpoints are cast to bf16 afterwards)
    "save_strategy": "no",
    "disable_tqdm": True,
    "gradient_checkpointing": False,
    "report_to": "wandb",  # offline (WANDB_DIR = out); WANDB_MODE=disabled skips it
}


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(cfg.threads)
    out, assets = Path(cfg.out), Path(cfg.assets)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(out.resolve()))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    (out / "toyworld_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    t_start = time.perf_counter()
    world = World(config=to_dict(cfg))
    if not set(cfg.stages) & {"target", "draft", "prm"}:
        # measure only: the training record of the run in `out` that made the checkpoints
        world.stages = {
            name: json.loads((out / f"{name}.done.json").read_text())
            for name in ("target", "draft", "prm")
            if (out / f"{name}.done.json").is_file()
        }
        data = out / "data/prm_train.jsonl"
        if data.is_file():
            world.prm_data = prm_data_summary([json.loads(line) for line in data.read_text().splitlines()])
        if world.stages:
            world.train_wall_s = sum(st["wall_s"] for st in world.stages.values())
    else:
        train_world(cfg, out, world)
        world.train_wall_s = sum(st["wall_s"] for st in world.stages.values())
        world.wall_s_this_run = time.perf_counter() - t_start
    if "measure" not in cfg.stages:
        return 0
    measure_world(cfg, out, assets, world)
    world.total_wall_s = time.perf_counter() - t_start
    world.save(assets / "world.json")
    record = world.to_json()
    summary = {
        k: record.get(k)
        for k in (
            "parameters",
            "latency_s_per_token",
            "latency_ratio_draft_over_target",
            "accuracy_greedy",
            "checkpoint_bytes",
            "train_wall_s",
            "total_wall_s",
        )
    }
    summary["prm_auc_draft_samples"] = record["prm_auc_draft_samples"]["auc"]
    summary["prm_auc_target_samples"] = record["prm_auc_target_samples"]["auc"]
    summary["latency_ratio_range"] = record["latency_ratio_range"]
    print(json.dumps(summary, indent=1))
    return 0


def train_world(cfg: ToyWorldConfig, out: Path, world: World) -> None:
    """Stages 1-6: data, tokenizer, models, and the three trainings (checkpoints in ``out/{target,draft,prm}``);
    each stage's metrics into ``world.stages``."""
    from transformers import AutoModelForCausalLM

    from train import draft as draft_recipe
    from train import prm as prm_recipe

    # 1. Data: train-split problems only (disjoint from tune / test by construction).
    n_train = max(cfg.target.train_problems, cfg.draft.train_problems + cfg.draft.target_written)
    train = problems(
        cfg, "train", n_train + cfg.prm.synthetic_rows + cfg.prm.draft_samples + cfg.prm.target_samples
    )
    sft = write_jsonl(out / "data/sft_target.jsonl", toymath.sft_rows(train[: cfg.target.train_problems]))

    # 2. The character-level tokenizer.  3. Random models from configs, saved as local folders.
    tok = make_tokenizer()
    params = {
        "target": init_model(cfg.target.shape, tok, cfg.seed + 1, out / "init/target"),
        "draft": init_model(cfg.draft.shape, tok, cfg.seed + 2, out / "init/draft"),
    }
    print(f"[toyworld] vocabulary {len(tok)}; parameters {params}", flush=True)

    # 4. Target: SFT on reference solutions (train.draft, mode sft, the target as its own proxy teacher).
    proxy = {"eval_prompts": 4, "proxy_max_new_tokens": 32, "proxy_batch_size": 4}
    world.stages["target"] = run_recipe(
        draft_recipe,
        out,
        "target",
        stage_fields(
            cfg,
            out,
            "target",
            {
                "mode": "sft",
                "model_name_or_path": str(out / "init/target"),
                "target_model_name_or_path": str(out / "init/target"),
                "dataset_name": str(sft),
                **proxy,
            },
        ),
        reuse="target" not in cfg.stages,
    )

    # 5. Draft: SFT on reference solutions (+ target-written ones: the recipe has the target write every prompt
    # that comes without a completion), the trained target as the acceptance-proxy teacher.
    k = cfg.draft.train_problems
    rows = toymath.sft_rows(train[:k]) + [
        {"prompt": p.prompt} for p in train[k : k + cfg.draft.target_written]
    ]
    draft_data = write_jsonl(out / "data/sft_draft.jsonl", rows)
    world.stages["draft"] = run_recipe(
        draft_recipe,
        out,
        "draft",
        stage_fields(
            cfg,
            out,
            "draft",
            {
                "mode": "sft",
                "model_name_or_path": str(out / "init/draft"),
                "target_model_name_or_path": str(out / "target"),
                "dataset_name": str(draft_data),
                "gen_temperature": 0.5,
                "gen_max_new_tokens": 96,
                **proxy,
            },
        ),
        reuse="draft" not in cfg.stages,
    )

    # 6. The PRM. Its data: generator rows with plausible errors + the draft's and target's own samples, labelled
    # exactly.
    rng = np.random.default_rng(cfg.seed)
    pool = train[n_train:]
    syn = pool[: cfg.prm.synthetic_rows]
    d_probs = pool[len(syn) : len(syn) + cfg.prm.draft_samples]
    t_probs = pool[len(syn) + len(d_probs) :][: cfg.prm.target_samples]
    draft_m = AutoModelForCausalLM.from_pretrained(out / "draft").eval()
    target_m = AutoModelForCausalLM.from_pretrained(out / "target").eval()
    temp = cfg.prm.sample_temperature
    prm_train = toymath.prm_rows(syn, rng, error_rate=cfg.prm.error_rate)
    prm_train += labelled_samples(draft_m, tok, d_probs, temperature=temp, seed=cfg.seed + 10)
    prm_train += labelled_samples(target_m, tok, t_probs, temperature=temp, seed=cfg.seed + 11)
    tune = problems(cfg, "tune", cfg.prm.eval_samples)
    prm_eval = labelled_samples(draft_m, tok, tune, temperature=temp, seed=cfg.seed + 12)
    order = rng.permutation(len(prm_train))
    prm_train_path = write_jsonl(out / "data/prm_train.jsonl", [prm_train[i] for i in order])
    prm_eval_path = write_jsonl(out / "data/prm_eval.jsonl", prm_eval)
    world.prm_data = prm_data_summary(prm_train)
    print(f"[toyworld] PRM data: {world.prm_data}", flush=True)
    # Its training: token classification on those rows, initialized from the trained target (or from scratch).
    if cfg.prm.init == "target" and cfg.prm.init_layers:
        params["prm"] = resized_copy(out / "target", cfg.prm.init_layers, out / "init/prm")
        prm_init = out / "init/prm"
    elif cfg.prm.init == "target":
        prm_init = out / "target"
    else:
        params["prm"] = init_model(cfg.prm.shape, tok, cfg.seed + 3, out / "init/prm")
        prm_init = out / "init/prm"
    world.stages["prm"] = run_recipe(
        prm_recipe,
        out,
        "prm",
        stage_fields(
            cfg,
            out,
            "prm",
            {
                "model_name_or_path": str(prm_init),
                "dataset_name": str(prm_train_path),
                "eval_dataset_name": str(prm_eval_path),
                "dataset_format": "stepwise",
                "max_length": 192,
                "step_separator": "\n\n",
            },
        ),
        reuse="prm" not in cfg.stages,
    )
    world.parameters = params  # at initialization; stage 7 counts the saved checkpoints


def prm_data_summary(rows: Sequence[dict[str, Any]]) -> PrmData:
    """Rows, labelled steps and the fraction of correct steps of the PRM's training rows."""
    labels = [y for r in rows for y in r["labels"]]
    return PrmData(rows=len(rows), steps=len(labels), correct_fraction=float(np.mean(labels)))


def measure_world(cfg: ToyWorldConfig, out: Path, assets: Path, world: World) -> None:
    """Stage 7: save the checkpoints in bf16 under ``assets`` and measure them as the search loads them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from specs_rl.models.prm_format import PrmFormat

    # 7. Save in bf16 and measure the saved checkpoints the way the search loads them (float32 on the CPU).
    assets.mkdir(parents=True, exist_ok=True)
    sizes = {
        name: save_bf16(out / name, assets / name, head)
        for name, head in (("target", "causal_lm"), ("draft", "causal_lm"), ("prm", "token_classification"))
    }
    world.checkpoint_bytes = sizes
    models = {
        n: AutoModelForCausalLM.from_pretrained(assets / n, dtype=torch.float32).eval()
        for n in ("target", "draft")
    }
    prm = AutoModelForTokenClassification.from_pretrained(assets / "prm", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(assets / "target")
    world.parameters = {
        n: sum(p.numel() for p in m.parameters()) for n, m in {**models, "prm": prm}.items()
    }  # of the saved checkpoints: right whichever stages this run trained
    world.shapes = {n: to_dict(getattr(cfg, n).shape) for n in ("target", "draft")}
    world.shapes["prm"] = {
        k: getattr(prm.config, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")
    }

    test = problems(
        cfg, "test", max(cfg.measure.test_problems, cfg.measure.auc_problems, cfg.measure.fixed_problems)
    )
    m = cfg.measure
    lat = step_latency(
        {n: assets / n for n in ("draft", "target")}, test, m.latency_tokens, m.latency_repeats
    )
    world.latency_s_per_token = lat["per_token_s"]
    world.latency_range_s_per_token = lat["per_token_range_s"]
    world.latency_ratio_draft_over_target = lat["ratios"][
        "draft/target"
    ]  # paired: median of per-repeat ratios
    world.latency_ratio_range = lat["ratio_ranges"]["draft/target"]
    world.latency_repeats = lat["repeats"]
    acc = {n: accuracy(model, tok, test[: m.test_problems]) for n, model in models.items()}
    world.accuracy_greedy = GreedyAccuracy(
        target=acc["target"][0],
        target_answer_only=acc["target"][2],
        draft=acc["draft"][0],
        draft_answer_only=acc["draft"][2],
        test_problems=m.test_problems,
    )
    # PRM AUC on each model's own samples (the steps SPECS and beam search propose) on held-out problems.
    fmt = PrmFormat.load(assets / "prm")
    auc_probs = [p for p in test[: m.auc_problems] for _ in range(m.auc_samples)]
    for name, seed in (("draft", cfg.seed + 13), ("target", cfg.seed + 14)):
        flat_s, flat_y = scored_samples(models[name], prm, tok, auc_probs, fmt, m.auc_temperature, seed)
        record = PrmAuc(
            auc=auc(flat_s, flat_y),
            problems=m.auc_problems,
            samples_per_problem=m.auc_samples,
            temperature=m.auc_temperature,
            steps=len(flat_y),
            correct_fraction=float(np.mean(flat_y)),
            step_accuracy_at_half=float(np.mean((np.asarray(flat_s) >= 0.5) == np.asarray(flat_y))),
        )
        if name == "draft":
            world.prm_auc_draft_samples = record
        else:
            world.prm_auc_target_samples = record

    # The fixed set the tests recompute: greedy correctness, and each model's samples (seeded) with their AUC.
    fixed = test[: m.fixed_problems]
    correct = {n: accuracy(models[n], tok, fixed)[1] for n in ("target", "draft")}
    fixed_aucs = {
        n: fixed_auc(models[n], prm, tok, fixed, fmt, m.auc_temperature) for n in ("target", "draft")
    }
    world.fixed_set = FixedSet(
        split="test",
        problems=[p.prompt for p in fixed],
        greedy_correct=correct,
        sample_seed=FIXED_SAMPLE_SEED,
        temperature=m.auc_temperature,
        accuracy_target=float(np.mean(correct["target"])),
        prm_auc_target_samples=fixed_aucs["target"],
        accuracy_draft=float(np.mean(correct["draft"])),
        prm_auc_draft_samples=fixed_aucs["draft"],
    )


FIXED_SAMPLE_SEED = 1234


def scored_samples(
    model: Any, prm: Any, tokenizer: Any, probs: Sequence[Any], fmt: Any, temperature: float, seed: int
) -> tuple[list[float], list[bool]]:
    """``model``'s own samples of ``probs`` (seeded), every step's PRM score and exact label, flattened."""
    rows = labelled_samples(model, tokenizer, probs, temperature=temperature, seed=seed)
    scores = prm_step_scores(prm, tokenizer, rows, fmt)
    return [s for ss in scores for s in ss], [y for r in rows for y in r["labels"]]


def fixed_auc(
    model: Any, prm: Any, tokenizer: Any, probs: Sequence[Any], fmt: Any, temperature: float
) -> float:
    """PRM AUC on one seeded sample of ``model`` per problem of the fixed set (what the tests recompute)."""
    return auc(*scored_samples(model, prm, tokenizer, probs, fmt, temperature, FIXED_SAMPLE_SEED))


if __name__ == "__main__":
    sys.exit(main())
