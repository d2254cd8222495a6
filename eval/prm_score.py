"""``specs-rl prm score``: a PRM's reward for every step of given solutions, to check how it reads steps before a
long run.

    specs-rl prm score model=Qwen/Qwen2.5-Math-PRM-7B input=steps.jsonl [kind=auto device=auto dtype=auto] [--show]

``input``: one JSON object a line, ``{"problem": str, "steps": [str, ...]}`` (blank lines skipped). Every line is
checked before any model loads; a malformed one is refused in one line naming its number. Output: one JSON line per
row on stdout, ``{"rewards": [float, ...]}`` (one per step, in order); on stderr the kind the PRM was read as, and for
the first row (every row with ``show=true`` / ``--show``) the exact text it scored. Where the kind's recipe encodes
the whole text at once and the piecewise encoding differs from it, stderr says so.

The PRM's other settings are those of ``hf.prm`` (:class:`specs_rl.models.config.PrmSpec`): ``kind``, ``chat``,
``system_prompt``, ``step_separator``, ``step_tag``, ``good_token``, ``bad_token``, ``positive_label``,
``step_reward``, ``revision``. ``backend``: ``hf`` (in-process, every kind), ``vllm`` (a running vLLM server at
``url`` serving the PRM's ``/pooling``: kinds qwen_prm and token_classification), ``auto`` (vllm when ``url`` is
set, else hf).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.errors import SpecsError
from specs_rl.models.config import DEVICES, DTYPES, PRM_KINDS, PrmSpec
from specs_rl.types import Candidate, Problem, Trace

BACKENDS = ("auto", "hf", "vllm")


@dataclass
class PrmScoreConfig:
    """``specs-rl prm score`` settings."""

    model: str = field(
        default="", metadata={"help": "the PRM: hub id | local dir | tiny[:llama|:qwen2] (required)"}
    )
    input: str = field(
        default="", metadata={"help": 'JSONL rows {"problem": str, "steps": [str, ...]} (required)'}
    )
    kind: str = field(default="auto", metadata={"help": f"one of {PRM_KINDS} (as hf.prm.kind)"})
    device: str = field(default="auto", metadata={"help": f"one of {DEVICES}"})
    dtype: str = field(default="auto", metadata={"help": f"one of {DTYPES}"})
    backend: str = field(
        default="auto",
        metadata={"help": f"one of {BACKENDS}; auto = vllm when url is set, else hf (in-process)"},
    )
    url: str | None = field(
        default=None, metadata={"help": "backend vllm: the URL of a vLLM server of the PRM"}
    )
    served_name: str | None = field(
        default=None, metadata={"help": "backend vllm: its served name (null: model)"}
    )
    show: bool = field(default=False, metadata={"help": "print the scored text of every row on stderr"})
    prompt_field: str = field(default="problem", metadata={"help": "as hf.prm.prompt_field"})
    chat: bool = field(default=False, metadata={"help": "as hf.prm.chat"})
    system_prompt: str | None = field(default=None, metadata={"help": "as hf.prm.system_prompt"})
    step_separator: str | None = field(default=None, metadata={"help": "as hf.prm.step_separator"})
    step_tag: str | None = field(default=None, metadata={"help": "as hf.prm.step_tag"})
    good_token: str | None = field(default=None, metadata={"help": "as hf.prm.good_token"})
    bad_token: str | None = field(default=None, metadata={"help": "as hf.prm.bad_token"})
    positive_label: int | None = field(default=None, metadata={"help": "as hf.prm.positive_label"})
    step_reward: str | None = field(default=None, metadata={"help": "as hf.prm.step_reward"})
    revision: str | None = field(default=None, metadata={"help": "as hf.prm.revision"})

    def spec(self) -> PrmSpec:
        return PrmSpec(
            name=self.model,
            kind=self.kind,
            step_separator=self.step_separator,
            step_tag=self.step_tag,
            good_token=self.good_token,
            bad_token=self.bad_token,
            positive_label=self.positive_label,
            step_reward=self.step_reward,
            prompt_field=self.prompt_field,
            chat=self.chat,
            system_prompt=self.system_prompt,
            revision=self.revision,
            device=self.device,
            dtype=self.dtype,
        )

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model is required (model=PATH_OR_HUB_ID)")
        if not self.input:
            raise ValueError("input is required (input=FILE.jsonl)")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "vllm" and not self.url:
            raise ValueError(
                "backend vllm needs url= (a running vLLM server of the PRM; `specs-rl serve` starts one)"
            )
        self.spec().validate("prm")


def read_rows(path: str) -> list[tuple[int, str, list[str]]]:
    """``(line number, problem, steps)`` of every non-blank line; the first malformed line is a SpecsError."""
    p = Path(path)
    if not p.is_file():
        raise SpecsError(f"input: file not found: {path}")
    rows = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecsError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise SpecsError(f"{path}:{n}: a row must be an object with problem and steps")
            missing = [k for k in ("problem", "steps") if k not in row]
            if missing:
                raise SpecsError(f"{path}:{n}: missing key(s) {', '.join(missing)}")
            if not isinstance(row["problem"], str):
                raise SpecsError(f"{path}:{n}: problem must be a string")
            steps = row["steps"]
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
                raise SpecsError(f"{path}:{n}: steps must be a list of strings")
            if not steps:
                raise SpecsError(f"{path}:{n}: steps is empty (at least one step to score)")
            rows.append((n, row["problem"], steps))
    if not rows:
        raise SpecsError(f"input: {path} holds no rows")
    return rows


def trace_of(problem: str, steps: Sequence[str]) -> Trace:
    trace = Trace(Problem("row", problem, meta={"problem": problem}))
    for s in steps:
        trace = trace.extend(Candidate((), s, (), False))
    return trace


def build_reader(cfg: PrmScoreConfig) -> Any:
    """The PRM, in-process or served, with ``step_rewards(trace)``, ``text`` (its StepText) and ``tokenizer``."""
    spec = cfg.spec()
    backend = cfg.backend if cfg.backend != "auto" else ("vllm" if cfg.url else "hf")
    if backend == "hf":
        from specs_rl.hf.load import check_sources, load_reward_model
        from specs_rl.hf.prm import HFRewardModel

        check_sources({"model": spec})
        model, tok, fmt = load_reward_model(spec, "model")
        try:
            return HFRewardModel(
                model,
                tok,
                fmt,
                prompt_field=spec.prompt_field,
                chat=spec.chat,
                system_prompt=spec.system_prompt,
            )
        except ValueError as e:
            raise SpecsError(f"model: {e}") from None
    from specs_rl.vllm.build import _load_tokenizer, _prm_format
    from specs_rl.vllm.client import Endpoint, ServedClient
    from specs_rl.vllm.config import API_KEY_ENV
    from specs_rl.vllm.prm import VLLMRewardModel
    from specs_rl.vllm.probe import check_endpoint

    tok = _load_tokenizer(spec, "model")
    fmt = _prm_format(spec)
    client = ServedClient(api_key=os.environ.get(API_KEY_ENV) or None)
    ep = Endpoint("prm", cfg.url or "", cfg.served_name or cfg.model)
    check_endpoint(client, ep)
    try:
        return VLLMRewardModel(
            client,
            ep,
            tok,
            fmt,
            pooling="auto",
            prompt_field=spec.prompt_field,
            chat=spec.chat,
            system_prompt=spec.system_prompt,
        )
    except ValueError as e:
        raise SpecsError(f"model: {e}") from None


def parse(argv: Sequence[str]) -> PrmScoreConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return config_from_argv(PrmScoreConfig, argv, "specs-rl prm score")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(list(sys.argv[1:] if argv is None else argv))
    rows = read_rows(cfg.input)  # every line checked before any model loads
    from specs_rl.models.prm_kinds import whole_text_mismatch

    prm = build_reader(cfg)
    st, tok = prm.text, prm.tokenizer
    extra = ""
    if st.kind == "shepherd_prm":
        good, bad = st.good_bad_ids(tok)
        extra = f", tag {st.separator!r}, good {st.fmt.good_token!r} (id {good}), bad {st.fmt.bad_token!r} (id {bad})"
    print(
        f"prm: {cfg.model} read as kind {st.kind} (step separator {st.separator!r}{extra})", file=sys.stderr
    )
    for i, (n, problem, steps) in enumerate(rows):
        trace = trace_of(problem, steps)
        try:
            rewards = prm.step_rewards(trace)
        except ValueError as e:
            raise SpecsError(f"{cfg.input}:{n}: {e}") from None
        if cfg.show or i == 0:
            print(
                f"--- line {n}: the text scored ---\n{st.text(tok, trace.problem, steps)}\n---",
                file=sys.stderr,
            )
            note = whole_text_mismatch(st, tok, trace.problem, steps)
            if note:
                print(f"warning: line {n}: {note}", file=sys.stderr)
        print(json.dumps({"rewards": [float(r) for r in rewards]}), flush=True)
    return 0
