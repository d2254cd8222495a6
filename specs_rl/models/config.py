"""The models both model backends read: which draft, target and PRM, and how steps are sampled and read.

``ModelsConfig`` is the ``hf:`` section of a run config (the section keeps that name for now), read alike by the
in-process backend (:mod:`specs_rl.hf`) and the served one (:mod:`specs_rl.vllm`, whose own ``vllm:`` section only says
where the servers are). This module imports nothing heavy (no torch, no transformers): the runner imports it on every
run, tabular ones included.

Model sources (``ModelSpec.name`` / ``PrmSpec.name``):

- ``tiny`` / ``tiny:llama`` / ``tiny:qwen2``: a random-weight model built in-process from ``tiny:`` settings over
  the project's in-process BPE tokenizer (tests and smoke runs; no download);
- a local directory (``save_pretrained`` output), or a ``.gguf`` file (or a directory / hub id plus ``gguf_file``;
  needs the ``gguf`` and ``accelerate`` packages);
- a hub id such as ``Qwen/Qwen2.5-Math-7B-Instruct`` (downloaded by transformers unless ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from specs_rl.models.prm_format import AGGREGATES, STEP_REWARDS
from specs_rl.models.prm_kinds import CLASSIFIER_KINDS, KINDS

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ARCHS = ("llama", "qwen2")


@dataclass
class TinySpec:
    """Shape of a ``tiny:`` random model (only read when the source name starts with ``tiny``)."""

    hidden_size: int = field(default=64, metadata={"help": "width (chosen here: tiny and fast on a CPU)"})
    num_hidden_layers: int = field(default=2, metadata={"help": "depth (chosen here)"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads (chosen here)"})
    num_key_value_heads: int = field(
        default=2,
        metadata={"help": "key/value heads; fewer than query heads is GQA, as in Qwen2.5 (chosen here)"},
    )
    intermediate_size: int | None = field(
        default=None, metadata={"help": "MLP width; null = 2 x hidden_size (specs_rl.tiny default)"}
    )
    vocab_pad: int = field(
        default=0,
        metadata={"help": "unused extra embedding rows, as Qwen2.5-7B has over 1.5B (chosen here: 0)"},
    )
    tokenizer_vocab: int = field(
        default=300, metadata={"help": "vocabulary of the in-process BPE tokenizer (specs_rl.tiny default)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random weights (chosen here)"})

    def model_kwargs(self) -> dict[str, Any]:
        """The shape arguments of :func:`specs_rl.tiny.tiny_config` (``intermediate_size`` only when set)."""
        kw: dict[str, Any] = dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
        )
        if self.intermediate_size is not None:
            kw["intermediate_size"] = self.intermediate_size
        return kw

    def validate(self, key: str) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{key}.hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{key}.num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"{key}.intermediate_size must be >= 1 or null, got {self.intermediate_size}")
        if self.vocab_pad < 0:
            raise ValueError(f"{key}.vocab_pad must be >= 0, got {self.vocab_pad}")
        if self.tokenizer_vocab < 300:
            raise ValueError(
                f"{key}.tokenizer_vocab must be >= 300 (the byte alphabet + specials), got {self.tokenizer_vocab}"
            )


def tiny_arch(name: str) -> str:
    """The architecture a ``tiny[:llama|:qwen2]`` source names (``llama`` when none)."""
    return name.partition(":")[2] or "llama"


def _validate_source(key: str, name: str, gguf_file: str | None, device: str, dtype: str) -> None:
    if not name or not name.strip():
        raise ValueError(f"{key}.name must be a hub id, a local path, a .gguf file or tiny[:llama|:qwen2]")
    if name.startswith("tiny"):
        arch = tiny_arch(name)
        if name not in ("tiny", "tiny:") and arch not in ARCHS:
            raise ValueError(f"{key}.name {name!r}: tiny architecture must be one of {ARCHS}")
        if gguf_file is not None:
            raise ValueError(f"{key}.gguf_file cannot be used with a tiny model")
    if gguf_file is not None and not gguf_file.endswith(".gguf"):
        raise ValueError(f"{key}.gguf_file must name a .gguf file, got {gguf_file!r}")
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"{key}.device must be one of {DEVICES} or cuda:N, got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"{key}.dtype must be one of {DTYPES}, got {dtype!r}")


@dataclass
class ModelSpec:
    """A causal LM used as the draft or the target, and how it samples."""

    name: str = field(
        default="tiny",
        metadata={"help": "hub id | local dir | .gguf file | tiny[:llama|:qwen2] (chosen here: tiny)"},
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file inside `name` (a dir or hub repo); null = not GGUF"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer source when it differs from `name` (null: same)"}
    )
    revision: str | None = field(default=None, metadata={"help": "hub revision (null: default branch)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub repo"})
    device: str = field(
        default="auto",
        metadata={
            "help": f"one of {DEVICES} or cuda:N (GPU N); auto = cuda, then mps, then cpu (chosen here)"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={"help": f"one of {DTYPES}; auto = bfloat16 on CUDA, float32 elsewhere (chosen here)"},
    )
    temperature: float = field(
        default=0.8, metadata={"help": "sampling temperature (authors' code: 0.8; 0 = greedy)"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (authors' code: 1.0)"})
    ignore_eos: bool = field(
        default=False,
        metadata={
            "help": "never stop at end-of-sequence (benchmarks only: fixed-length steps) (chosen here)"
        },
    )
    speculative_tokens: int = field(
        default=0,
        metadata={
            "help": "target only: write its tokens by exact speculative sampling, the draft proposing this many "
            "per round (lossless: the target's own law; needs a shared tokenizer); 0 = off (chosen here)"
        },
    )
    tiny: TinySpec = field(
        default_factory=TinySpec, metadata={"help": "shape of a tiny: model (ignored otherwise)"}
    )

    def validate(self, key: str) -> None:
        _validate_source(key, self.name, self.gguf_file, self.device, self.dtype)
        if self.speculative_tokens < 0:
            raise ValueError(
                f"{key}.speculative_tokens must be >= 0 (0 = off), got {self.speculative_tokens}"
            )
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"{key}.temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"{key}.top_p must be in (0, 1], got {self.top_p}")
        if self.name.startswith("tiny"):
            self.tiny.validate(f"{key}.tiny")


PRM_KINDS = ("auto", *KINDS)


@dataclass
class PrmSpec:
    """The process reward model (or a sequence-classification reward model) and how it reads a solution.

    ``kind``, ``step_separator``, ``positive_label`` and ``step_reward`` default to the checkpoint's ``prm_config.json``
    (:class:`specs_rl.models.prm_format.PrmFormat`, written by the project's PRM trainer) when there is one, else to the
    values below.
    """

    name: str = field(
        default="tiny", metadata={"help": "hub id | local dir | tiny[:llama|:qwen2] (chosen here)"}
    )
    kind: str = field(
        default="auto",
        metadata={
            "help": f"one of {PRM_KINDS}; auto = prm_config.json, else config.json's architectures "
            "(Qwen2ForProcessRewardModel = qwen_prm, Qwen2ForPrmModel = skywork_prm, *ForCausalLM = shepherd_prm, "
            "*ForTokenClassification / *ForSequenceClassification), else token_classification"
        },
    )
    step_separator: str | None = field(
        default=None,
        metadata={
            "help": "text placed after each step; null = prm_config.json, else the kind's ('\\n\\n'; qwen_prm: "
            "'<extra_0>'; skywork_prm: '\\n'; shepherd_prm: its step_tag)"
        },
    )
    step_tag: str | None = field(
        default=None,
        metadata={
            "help": "shepherd_prm: the tag after each step, read there; null = 'ки' (Math-Shepherd's card)"
        },
    )
    good_token: str | None = field(
        default=None,
        metadata={"help": "shepherd_prm: the token meaning 'step correct'; null = '+' (its card)"},
    )
    bad_token: str | None = field(
        default=None, metadata={"help": "shepherd_prm: the token meaning 'step wrong'; null = '-' (its card)"}
    )
    positive_label: int | None = field(
        default=None,
        metadata={
            "help": "class meaning 'step is correct'; null = prm_config.json, else 1 (shepherd_prm: 0 = good)"
        },
    )
    step_reward: str | None = field(
        default=None,
        metadata={
            "help": "separator | prefix_min (the least probability over the response's tokens up to the step; "
            "PRMs trained with token labels); null = prm_config.json, else separator"
        },
    )
    aggregate: str = field(
        default="last",
        metadata={"help": f"one of {AGGREGATES} over the steps of prefix+candidate (authors' code: last)"},
    )
    prompt_field: str = field(
        default="problem",
        metadata={
            "help": "problem = the raw problem text | prompt = the templated prompt the generators see"
        },
    )
    chat: bool = field(
        default=False,
        metadata={"help": "wrap the prompt in the PRM tokenizer's chat template (kind qwen_prm always does)"},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "system message when chat is true (null: none; qwen_prm: its model card's)"},
    )
    revision: str | None = field(default=None, metadata={"help": "hub revision (null: default branch)"})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "allow model code from the hub repo (classifier kinds only; the PRM kinds load natively)"
        },
    )
    device: str = field(
        default="auto",
        metadata={"help": f"one of {DEVICES} or cuda:N; auto as for the generators (chosen here)"},
    )
    dtype: str = field(
        default="auto", metadata={"help": f"one of {DTYPES}; auto as for the generators (chosen here)"}
    )
    tiny: TinySpec = field(
        default_factory=TinySpec, metadata={"help": "shape of a tiny: model (ignored otherwise)"}
    )

    def validate(self, key: str = "hf.prm") -> None:
        _validate_source(key, self.name, None, self.device, self.dtype)
        if self.kind not in PRM_KINDS:
            raise ValueError(f"{key}.kind must be one of {PRM_KINDS}, got {self.kind!r}")
        if self.step_separator is not None and not self.step_separator:
            raise ValueError(f"{key}.step_separator must be non-empty or null")
        for name in ("step_tag", "good_token", "bad_token"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{key}.{name} must be a non-blank string or null, got {value!r}")
            if value is not None and self.kind not in ("auto", "shepherd_prm"):
                raise ValueError(f"{key}.{name} is read by kind shepherd_prm only (kind is {self.kind})")
        if self.name.startswith("tiny") and self.kind not in ("auto", *CLASSIFIER_KINDS):
            raise ValueError(f"{key}.kind {self.kind!r}: tiny PRMs are one of {CLASSIFIER_KINDS}")
        if self.positive_label is not None and self.positive_label < 0:
            raise ValueError(f"{key}.positive_label must be >= 0, got {self.positive_label}")
        if self.step_reward is not None and self.step_reward not in STEP_REWARDS:
            raise ValueError(
                f"{key}.step_reward must be one of {STEP_REWARDS} or null, got {self.step_reward!r}"
            )
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"{key}.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.prompt_field not in ("problem", "prompt"):
            raise ValueError(f"{key}.prompt_field must be problem or prompt, got {self.prompt_field!r}")
        if self.name.startswith("tiny"):
            self.tiny.validate(f"{key}.tiny")


@dataclass
class ModelsConfig:
    """Draft, target and PRM over transformers models, and the step format they share."""

    # Plain class defaults (no per-role factories): the config loader rebuilds a nested section from its class
    # defaults, so a factory default would be silently lost by any override of that section. With the defaults
    # the three roles are the same tiny model; configs/search/tiny_hf.yaml sets distinct ones.
    draft: ModelSpec = field(
        default_factory=ModelSpec,
        metadata={"help": "the small model that drafts steps (paper: Qwen2.5-Math-1.5B-Instruct)"},
    )
    target: ModelSpec = field(
        default_factory=ModelSpec,
        metadata={"help": "the large model that scores and writes steps (paper: Qwen2.5-Math-7B-Instruct)"},
    )
    prm: PrmSpec = field(
        default_factory=PrmSpec, metadata={"help": "the process reward model (paper: a 7B Qwen2.5 PRM)"}
    )
    step_delimiter: str = field(
        default="\n\n",
        metadata={"help": "a step ends with the token that completes this text (authors' code)"},
    )
    max_step_tokens: int = field(
        default=512, metadata={"help": "token limit of one step (authors' recipes: 512-2048)"}
    )
    max_tokens: int = field(
        default=2048,
        metadata={"help": "token limit of a whole response; reaching it finishes the response (chosen here)"},
    )
    chat_template: bool = field(
        default=True,
        metadata={
            "help": "wrap the prompt in the generator tokenizer's chat template when it has one (authors' code)"
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "system message in the chat template (authors' code: the paper's instruction; null: none)"
        },
    )
    judge_prompt: str | None = field(
        default=None,
        metadata={
            "help": "specreason, judge: target: the instruction the target reads after the step (null: the "
            "paper's, ruipeterpan/specreason spec_reason.py get_score)"
        },
    )
    judge_answer_prefix: str = field(
        default="I think the quality score is: ",
        metadata={
            "help": "specreason, judge: target: the start of the judge's answer, before the digit (paper)"
        },
    )
    cache_prompts: int = field(
        default=16,
        metadata={
            "help": "problems whose KV caches each model keeps (least recently used evicted) (chosen here)"
        },
    )

    def validate(self) -> None:
        """Raise ValueError naming the first invalid key (``hf.<key>``)."""
        self.draft.validate("hf.draft")
        self.target.validate("hf.target")
        if self.draft.speculative_tokens:
            raise ValueError(
                "hf.draft.speculative_tokens must be 0: speculative decoding is a setting of the target "
                "(hf.target.speculative_tokens)"
            )
        self.prm.validate("hf.prm")
        if not self.step_delimiter:
            raise ValueError("hf.step_delimiter must be a non-empty string")
        if self.max_step_tokens < 1:
            raise ValueError(f"hf.max_step_tokens must be >= 1, got {self.max_step_tokens}")
        if self.max_tokens < 1:
            raise ValueError(f"hf.max_tokens must be >= 1, got {self.max_tokens}")
        if self.cache_prompts < 1:
            raise ValueError(f"hf.cache_prompts must be >= 1, got {self.cache_prompts}")
