"""PRM architectures loaded natively (no hub code): the published PRMs as transformers modules, and their loader.

- ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM): transformers' ``Qwen2Model`` plus the two-layer score head
  ``score = Sequential(Linear(h, h), ReLU(), Linear(h, 2))``, logits at every token. Weight names ``model.*``,
  ``score.0.{weight,bias}``, ``score.2.{weight,bias}``: the hub repo's ``modeling_qwen2_rm.py`` as vLLM re-implements
  it (vllm ``model_executor/models/qwen2_rm.py``, ``Qwen2RewardBaseModel``: ColumnParallelLinear(h, h) with bias,
  ReLU, RowParallelLinear(h, num_labels = 2) with bias).
- ``Qwen2ForPrmModel`` (Skywork-o1-Open-PRM-Qwen-2.5): ``Qwen2Model`` plus the value head ``v_head.summary =
  Linear(h, 1)`` on the last (normed) hidden state (skywork-o1-prm-inference ``model_utils/prm_model.py``,
  ``ValueHead`` / ``PRM_MODEL.forward``; its dropout is inactive in eval). Its checkpoints may also hold the causal
  LM's ``lm_head.weight``, which the value model never reads: skipped, as the authors' vLLM plugin does
  (``vllm_add_dummy_model/prm_model.py``, ``ignore_unexpected_prefixes=["lm_head."]``).
- ``shepherd_prm``: the checkpoint's own transformers causal LM (``LlamaForCausalLM``, ``MistralForCausalLM``, ...),
  read through a two-row head: the ``lm_head`` rows of the good and bad tokens, ``[good, bad]`` logits.
- ``token_classification`` / ``sequence_classification``: transformers' classes, as before.

Every checkpoint is checked before its weights load: the tensor names in its safetensors headers (or index) must be
exactly the module's (tied and documented-ignorable ones aside); a missing or unexpected weight is a
:class:`~specs_rl.errors.SpecsError` naming them. transformers' own loading report is checked again after loading.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import PrmFormat
from specs_rl.models.prm_kinds import StepText, kind_of_architectures, spec_format

_QWEN2_CLASSES: dict[str, type] = {}


def _qwen2_classes() -> dict[str, type]:
    """The two Qwen2 PRM classes (built on first use: transformers is imported only when a model loads)."""
    if _QWEN2_CLASSES:
        return _QWEN2_CLASSES
    from transformers.modeling_outputs import TokenClassifierOutput
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2PreTrainedModel

    class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
        """Qwen2.5-Math-PRM: logits ``[B, L, 2]``; p(step correct) = softmax(logits)[..., 1] at each ``<extra_0>``."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.model = Qwen2Model(config)
            h = config.hidden_size
            self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):  # noqa: ANN001
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
            return TokenClassifierOutput(logits=self.score(out.last_hidden_state))

    class ValueHead(nn.Module):
        """Skywork's value head: one value per token (``summary``)."""

        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.summary = nn.Linear(hidden, 1)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.summary(hidden.to(self.summary.weight.dtype))

    class Qwen2ForPrmModel(Qwen2PreTrainedModel):
        """Skywork-o1-Open-PRM: values ``[B, L, 1]``; p(step correct) = sigmoid(value) at each step token."""

        _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.model = Qwen2Model(config)
            self.v_head = ValueHead(config.hidden_size)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):  # noqa: ANN001
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
            return TokenClassifierOutput(logits=self.v_head(out.last_hidden_state))

    _QWEN2_CLASSES.update(qwen_prm=Qwen2ForProcessRewardModel, skywork_prm=Qwen2ForPrmModel)
    return _QWEN2_CLASSES


def qwen2_prm_class(kind: str) -> type:
    """``Qwen2ForProcessRewardModel`` (``qwen_prm``) or ``Qwen2ForPrmModel`` (``skywork_prm``)."""
    return _qwen2_classes()[kind]


IGNORED_UNEXPECTED = {"skywork_prm": (r"^lm_head\.",)}
ALWAYS_IGNORED = (
    r"rotary_emb\.inv_freq$",
    r"(^|\.)position_ids$",
)  # old checkpoints' buffers (transformers too)


class TagHead(nn.Module):
    """``[good, bad]`` logits of a causal LM's head at a step tag: its ``lm_head`` rows of the two tokens."""

    def __init__(self, lm_head: nn.Module, good: int, bad: int) -> None:
        super().__init__()
        w = lm_head.weight.detach()[[good, bad]].clone()  # [2, hidden]
        b = getattr(lm_head, "bias", None)
        self.proj = nn.Linear(w.shape[1], 2, bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(w)
            if b is not None:
                self.proj.bias.copy_(b.detach()[[good, bad]])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


# -- reading a checkpoint ---------------------------------------------------------------------------------------------


def read_config(source: str, revision: str | None, key: str) -> dict[str, Any]:
    """A checkpoint's ``config.json`` as a dict (a local directory, or the hub's copy), without any model code."""
    path = Path(source)
    try:
        if path.is_dir():
            return json.loads((path / "config.json").read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, "config.json", revision=revision)).read_text())
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecsError(f"{key}: cannot read config.json of {source!r}: {first[:200]}") from None
    except Exception as e:  # noqa: BLE001 (huggingface_hub's errors: offline, unknown repo, gated)
        raise SpecsError(
            f"{key}: cannot read config.json of {source!r}: {type(e).__name__}: {e}"[:400]
        ) from None


def safetensors_names(path: str | Path) -> set[str]:
    """Tensor names in one safetensors file, from its header (8-byte length + JSON), no tensor read."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k for k in header if k != "__metadata__"}


def checkpoint_names(source: str, revision: str | None = None) -> set[str] | None:
    """The weight names a checkpoint holds, read without loading it (safetensors headers or index; the hub's
    headers over HTTP for a hub id); None when they cannot be read that way (``.bin`` files, offline)."""
    path = Path(source)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            return set(json.loads(index.read_text()).get("weight_map", {}))
        files = sorted(path.glob("*.safetensors"))
        if not files:
            return None
        names: set[str] = set()
        for f in files:
            names |= safetensors_names(f)
        return names
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(source, revision=revision)
        return set(meta.weight_map)
    except Exception:  # noqa: BLE001 (offline, no safetensors, gated: the loading report still checks)
        return None


def _listing(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_names(
    expected: set[str], found: set[str], *, tied: set[str], ignored: tuple[str, ...], key: str, name: str
) -> None:
    """Raise SpecsError naming the missing and unexpected weights (tied ones may be absent; ``ignored`` patterns
    may be extra)."""
    pattern = re.compile("|".join(f"({p})" for p in (*ALWAYS_IGNORED, *ignored)))
    missing = sorted(expected - found - tied)
    unexpected = sorted(n for n in found - expected if not pattern.search(n))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weight(s): {_listing(unexpected)}")
        raise SpecsError(f"{key}: the checkpoint {name!r} does not fit its architecture: {'; '.join(parts)}")


def _model_class(kind: str, config: Any) -> Any:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if kind in ("qwen_prm", "skywork_prm"):
        return qwen2_prm_class(kind)
    return {
        "shepherd_prm": AutoModelForCausalLM,
        "token_classification": AutoModelForTokenClassification,
        "sequence_classification": AutoModelForSequenceClassification,
    }[kind]


def _expected_names(cls: Any, config: Any) -> tuple[set[str], set[str]]:
    """``(state-dict names, tied names)`` of the module ``cls`` builds from ``config`` (on the meta device)."""
    with torch.device("meta"):
        model = (
            cls(config) if isinstance(cls, type) and issubclass(cls, nn.Module) else cls.from_config(config)
        )
    names = set(model.state_dict())
    tied: set[str] = set()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "tie_word_embeddings", False):
        tied = {n for n in names if n.startswith("lm_head.")}
    return names, tied


def build_config(kind: str, raw: dict[str, Any], source: str, key: str, spec: Any) -> Any:
    """The transformers config of a checkpoint (its ``model_type``'s native class; Qwen2Config for the Qwen2 PRMs;
    a classifier's own config class with ``trust_remote_code``, as before)."""
    from transformers import AutoConfig, Qwen2Config

    if spec.trust_remote_code and kind in ("token_classification", "sequence_classification"):
        kw = {"revision": spec.revision} if spec.revision is not None else {}
        try:
            return AutoConfig.from_pretrained(source, trust_remote_code=True, **kw)
        except (OSError, ValueError, ImportError, KeyError) as e:
            raise SpecsError(f"{key}: cannot read the config of {source!r}: {e}"[:300]) from None

    data = {k: v for k, v in raw.items() if k not in ("auto_map", "architectures")}
    if kind in ("qwen_prm", "skywork_prm"):
        if raw.get("model_type", "qwen2") != "qwen2":
            raise SpecsError(
                f"{key}: kind {kind} is a Qwen2 body, but {source!r} has model_type {raw['model_type']!r}"
            )
        data.pop("model_type", None)
        return Qwen2Config(**data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise SpecsError(f"{key}: config.json of {source!r} has no model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as e:
        raise SpecsError(f"{key}: transformers has no native model_type {model_type!r} ({e})"[:300]) from None


def check_checkpoint(spec: Any, source: str, key: str) -> tuple[PrmFormat, Any, Any, bool]:
    """Resolve a PRM checkpoint's reading and module, and check its weight names from the safetensors headers, no
    weight loaded (the backends call it before loading any model). Returns ``(format, config, class, remote)``."""
    raw = read_config(source, spec.revision, key)
    archs = list(raw.get("architectures") or [])
    saved = PrmFormat.load(source) if os.path.isdir(source) else None
    try:
        fmt = spec_format(spec, saved, archs)
    except ValueError as e:
        raise SpecsError(f"{key}: {e}") from None
    kind = fmt.kind
    detected = kind_of_architectures(archs)
    if kind in ("qwen_prm", "skywork_prm") and detected not in (kind, None):
        raise SpecsError(f"{key}: kind {kind} was set, but {source!r} is a {', '.join(archs)} checkpoint")
    config = build_config(kind, raw, source, key, spec)
    cls = _model_class(kind, config)
    remote = spec.trust_remote_code and kind in ("token_classification", "sequence_classification")
    found = None if remote else checkpoint_names(source, spec.revision)  # hub code: its names are its own
    if found is not None:
        expected, tied = _expected_names(cls, config)
        check_names(
            expected, found, tied=tied, ignored=IGNORED_UNEXPECTED.get(kind, ()), key=key, name=spec.name
        )
    return fmt, config, cls, remote


def load_native_prm(
    spec: Any, source: str, device: torch.device, dtype: torch.dtype, key: str
) -> tuple[nn.Module, Any, PrmFormat]:
    """``(model, tokenizer, format)`` of a PRM checkpoint (``spec``: a :class:`specs_rl.models.config.PrmSpec`), its
    weights read by name into the kind's native module, refused in one line when names do not fit."""
    from transformers import AutoTokenizer

    fmt, config, cls, remote = check_checkpoint(spec, source, key)
    kind = fmt.kind
    kw: dict[str, Any] = {"trust_remote_code": remote}
    if spec.revision is not None:
        kw["revision"] = spec.revision
    model_kw: dict[str, Any] = dict(kw, dtype=dtype, config=config, output_loading_info=True)
    if device.type == "cuda":
        model_kw["device_map"] = str(device)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
        model, info = cls.from_pretrained(source, **model_kw)
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecsError(f"could not load {key} {spec.name!r}: {first[:300]}") from None
    bad = [
        (what, sorted(info.get(what) or []))
        for what in ("missing_keys", "unexpected_keys", "mismatched_keys")
    ]
    bad = [(what, names) for what, names in bad if names]
    if bad:
        detail = "; ".join(
            f"{what.replace('_keys', '')} {_listing([str(n) for n in names])}" for what, names in bad
        )
        raise SpecsError(f"{key}: the checkpoint {spec.name!r} does not fit its architecture: {detail}")
    if device.type != "cuda":
        model = model.to(device=device, dtype=dtype)
    if kind == "shepherd_prm":
        st = StepText(fmt)
        try:
            st.check(tok)
        except ValueError as e:
            raise SpecsError(f"{key}: {e}") from None
        good, bad_id = st.good_bad_ids(tok)
        head = model.get_output_embeddings()
        model.score = TagHead(head, good, bad_id)  # the reader looks for `score`
    return model.eval(), tok, fmt
