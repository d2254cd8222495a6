"""PRM kinds: how each kind of process reward model writes a problem and its steps (pure Python, no torch).

Both backends read a PRM through these functions (the in-process one in :mod:`specs_rl.hf.prm`, the served one in
:mod:`specs_rl.vllm.prm`), so a served PRM and an in-process one see the same token ids. A solution is encoded
piece by piece,

    ids = encode(prompt_text, special tokens) + Σ_k step_ids(step_k, first = k == 0)

and the reward of step ``k`` is read at the **last token of** ``step_ids(step_k)`` (the kind's step token). The
kinds (``prm.kind``; ``auto`` reads ``prm_config.json``, else the checkpoint's ``config.json`` ``architectures``):

- ``token_classification`` / ``sequence_classification``: the project's PRMs (and any transformers classifier):
  prompt = the problem (through the PRM tokenizer's chat template with ``chat: true``), a step =
  ``strip(step) + separator`` (:func:`specs_rl.models.prm_format.encode_steps`).
- ``qwen_prm`` (architecture ``Qwen2ForProcessRewardModel``, Qwen2.5-Math-PRM-7B/72B). Its model card
  (huggingface.co/Qwen/Qwen2.5-Math-PRM-7B, README.md): messages = system ("Please reason step by step, and put your
  final answer within \\boxed{}."), user = the problem, assistant = ``"<extra_0>".join(steps) + "<extra_0>"``,
  through ``apply_chat_template(add_generation_prompt=False)``; reward = ``softmax(logits)[1]`` at each
  ``<extra_0>`` (``make_step_rewards``). Here: prompt = the chat template up to the assistant turn (the generation
  prompt), a step = ``strip(step) + "<extra_0>"``. The text after the last tag (``<|im_end|>``) changes no reward
  of a causal model, so the rewards are the card's.
- ``skywork_prm`` (architecture ``Qwen2ForPrmModel``, Skywork-o1-Open-PRM-Qwen-2.5-1.5B/7B). Skywork's inference
  code (github.com/SkyworkAI/skywork-o1-prm-inference, ``model_utils/io_utils.py``, ``prepare_input`` with
  ``step_token="\\n"`` as its README calls it): prompt ids = ``encode(bos_token + problem + "\\n")``; the response is
  split at ``"\\n"`` and each piece is encoded on its own followed by the step token id (``encode("\\n")[-1]``; an
  empty piece is the step token alone); reward = ``sigmoid(value)`` at each step token (``derive_step_rewards``
  with ``return_probs=True``). Here a step is one of its pieces *or several*: a step holding newlines is split the
  same way, and its reward is the one at its last step token.
- ``shepherd_prm`` (a causal LM read at a step tag, Math-Shepherd style, e.g. peiyi9979/math-shepherd-mistral-7b-prm).
  Its model card: ``input = f"{question} {output}"`` with ``output = "Step 1: ... ки\\nStep 2: ... ки"``, reward =
  ``softmax(logits[tag, [good, bad]])[0]`` at each tag ``ки`` with good ``+`` and bad ``-``
  (huggingface/search-and-learn ``src/sal/models/reward_models.py``, ``MathShepherd`` / ``CANDIDATE_TOKENS =
  [648, 387]``, ``STEP_TAG_ID = 12902`` for that tokenizer). Here: prompt = the problem, step ``k`` =
  ``(" " if k == 0 else "\\n") + strip(step) + " " + tag``, whose last token must be the tag's (checked). Tag, good
  and bad tokens are settings (``prm.step_tag``, ``prm.good_token``, ``prm.bad_token``); steps are written as given
  (the card's "Step k: " prefixes are not added).

For qwen_prm and shepherd_prm, whose recipes encode the whole text at once, encoding piece by piece gives the same ids
when the pieces meet at special tokens or where the tokenizer splits anyway (byte-level BPE before a newline, a
space-led word); :func:`whole_text_mismatch` says where it does not (``specs-rl prm score`` prints it). A
sentencepiece tokenizer that adds a prefix space to every piece (Llama/Mistral) is such a case: check it there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specs_rl.models.cache import LRU
from specs_rl.models.prm_format import PrmFormat, strip_step
from specs_rl.models.prompts import chat_text
from specs_rl.types import Problem, Trace

CLASSIFIER_KINDS = ("token_classification", "sequence_classification")
KINDS = (*CLASSIFIER_KINDS, "qwen_prm", "skywork_prm", "shepherd_prm")

# config.json "architectures" -> kind. The first two are the checkpoints' own names (Qwen/Qwen2.5-Math-PRM-7B
# config.json; Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B config.json, the name its vLLM plugin registers in
# skywork-o1-prm-inference vllm_add_dummy_model/__init__.py). The suffixes follow transformers' class names.
ARCHITECTURES = {"Qwen2ForProcessRewardModel": "qwen_prm", "Qwen2ForPrmModel": "skywork_prm"}
SUFFIXES = (
    ("ForTokenClassification", "token_classification"),
    ("ForSequenceClassification", "sequence_classification"),
    ("ForCausalLM", "shepherd_prm"),  # a causal LM can only be read as a PRM at a step tag
)

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."  # its model card
QWEN_PRM_TAG = "<extra_0>"
SKYWORK_STEP_TOKEN = "\n"  # skywork-o1-prm-inference README: prepare_input(..., step_token="\n")
SHEPHERD_TAG, SHEPHERD_GOOD, SHEPHERD_BAD = "ки", "+", "-"  # math-shepherd-mistral-7b-prm's card

# Per kind: (step separator, positive label). The separator of a tag kind is its tag.
DEFAULTS: dict[str, tuple[str, int]] = {
    "token_classification": ("\n\n", 1),
    "sequence_classification": ("\n\n", 1),
    "qwen_prm": (QWEN_PRM_TAG, 1),  # softmax(logits)[1] (make_step_rewards in its card)
    "skywork_prm": (SKYWORK_STEP_TOKEN, 0),  # one value: the label is unused (sigmoid)
    "shepherd_prm": (SHEPHERD_TAG, 0),  # the head's logits are [good, bad]: p(good) = softmax[0], as the card
}


def kind_of_architectures(architectures: Sequence[str]) -> str | None:
    """The kind a checkpoint's ``architectures`` names, or None.

    >>> kind_of_architectures(["Qwen2ForProcessRewardModel"]), kind_of_architectures(["LlamaForCausalLM"])
    ('qwen_prm', 'shepherd_prm')
    """
    for arch in architectures:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
        for suffix, kind in SUFFIXES:
            if arch.endswith(suffix):
                return kind
    return None


def resolve_format(
    *,
    kind: str = "auto",
    saved: PrmFormat | None = None,
    architectures: Sequence[str] = (),
    step_separator: str | None = None,
    step_tag: str | None = None,
    positive_label: int | None = None,
    step_reward: str | None = None,
    good_token: str | None = None,
    bad_token: str | None = None,
) -> PrmFormat:
    """The reading of a PRM: ``kind`` (``auto``: ``prm_config.json``'s, else the architectures', else
    token_classification), then each field from the setting, else ``prm_config.json``, else the kind's default.

    >>> resolve_format(architectures=["Qwen2ForProcessRewardModel"]).step_separator
    '<extra_0>'
    """
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"prm kind must be one of auto, {', '.join(KINDS)}; got {kind!r}")
    if kind == "auto":
        kind = (
            saved.kind
            if saved is not None
            else kind_of_architectures(architectures) or "token_classification"
        )
    if kind not in KINDS:
        raise ValueError(f"prm_config.json: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if step_tag is not None and kind != "shepherd_prm":
        raise ValueError(f"step_tag is read by kind shepherd_prm only (this PRM's kind is {kind})")
    if step_tag is not None and step_separator is not None and step_tag != step_separator:
        raise ValueError("step_tag and step_separator differ; a shepherd_prm's separator is its tag: set one")
    base = saved if saved is not None and saved.kind == kind else None
    sep, label = DEFAULTS[kind]

    def pick(given: Any, field: str, default: Any) -> Any:
        return given if given is not None else getattr(base, field) if base is not None else default

    return PrmFormat(
        kind=kind,
        step_separator=pick(step_tag if step_tag is not None else step_separator, "step_separator", sep),
        positive_label=pick(positive_label, "positive_label", label),
        step_reward=pick(step_reward, "step_reward", "separator"),
        good_token=pick(good_token, "good_token", SHEPHERD_GOOD),
        bad_token=pick(bad_token, "bad_token", SHEPHERD_BAD),
    )


@dataclass(frozen=True)
class StepText:
    """How one PRM writes a problem and its steps (see the module docstring per kind)."""

    fmt: PrmFormat
    chat: bool = False
    system_prompt: str | None = None
    prompt_field: str = "problem"

    @property
    def kind(self) -> str:
        return self.fmt.kind

    @property
    def separator(self) -> str:
        return self.fmt.step_separator

    def uses_chat(self) -> bool:
        return self.chat or self.kind == "qwen_prm"

    def system(self) -> str | None:
        if self.kind == "qwen_prm" and self.system_prompt is None:
            return QWEN_PRM_SYSTEM
        return self.system_prompt

    def problem_text(self, problem: Problem) -> str:
        if self.prompt_field == "problem":
            return str(problem.meta.get("problem", problem.prompt))
        return problem.prompt

    def prompt_text(self, tokenizer: Any, problem: Problem) -> str:
        text = self.problem_text(problem)
        if self.kind == "skywork_prm":
            return (getattr(tokenizer, "bos_token", None) or "") + text + "\n"
        if self.uses_chat():
            return chat_text(tokenizer, text, self.system())
        return text

    def check(self, tokenizer: Any) -> None:
        """Raise ValueError when the tokenizer cannot write this kind's text."""
        if self.uses_chat() and not getattr(tokenizer, "chat_template", None):
            why = "kind qwen_prm writes its chat format" if self.kind == "qwen_prm" else "chat: true"
            raise ValueError(f"the PRM's tokenizer has no chat template, and {why}")
        if not _ids(tokenizer, self.separator):
            raise ValueError(f"the step separator {self.separator!r} encodes to no tokens")
        if self.kind == "shepherd_prm":
            for name, tok in (("good_token", self.fmt.good_token), ("bad_token", self.fmt.bad_token)):
                if not _ids(tokenizer, tok):
                    raise ValueError(f"the {name} {tok!r} encodes to no tokens")
            if self.good_bad_ids(tokenizer)[0] == self.good_bad_ids(tokenizer)[1]:
                raise ValueError(
                    f"good_token {self.fmt.good_token!r} and bad_token {self.fmt.bad_token!r} are the same token"
                )

    def good_bad_ids(self, tokenizer: Any) -> tuple[int, int]:
        """The last token of each of good and bad (the card: ``encode("+ -")[1:]`` after the BOS)."""
        return _ids(tokenizer, self.fmt.good_token)[-1], _ids(tokenizer, self.fmt.bad_token)[-1]

    def step_pieces(self, step: str, first: bool) -> list[str]:
        """The texts that are encoded one by one for a step (their concatenation is the step's text)."""
        body = strip_step(step, self.separator)
        if self.kind == "skywork_prm":
            out: list[str] = []
            for line in body.split(self.separator):
                out += [line, self.separator] if line else [self.separator]
            return out
        if self.kind == "shepherd_prm":
            return [(" " if first else "\n") + body + " " + self.separator]
        return [body, self.separator]

    def text(self, tokenizer: Any, problem: Problem, steps: Sequence[str]) -> str:
        """The whole text the PRM reads (what ``specs-rl prm score --show`` prints)."""
        return self.prompt_text(tokenizer, problem) + "".join(
            "".join(self.step_pieces(s, k == 0)) for k, s in enumerate(steps)
        )


def spec_format(spec: Any, saved: Any, architectures: Any) -> PrmFormat:
    """:func:`resolve_format` for a PRM section (``hf.prm``): its kind and reading keys over the checkpoint's saved
    format and architectures (one place for both backends)."""
    return resolve_format(
        kind=spec.kind,
        saved=saved,
        architectures=architectures,
        step_separator=spec.step_separator,
        step_tag=spec.step_tag,
        positive_label=spec.positive_label,
        step_reward=spec.step_reward,
        good_token=spec.good_token,
        bad_token=spec.bad_token,
    )


def _ids(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def prompt_ids(st: StepText, tokenizer: Any, problem: Problem) -> tuple[int, ...]:
    """The prompt's ids, with the tokenizer's special tokens (a BOS where it adds one), as encode_steps does."""
    return tuple(_ids(tokenizer, st.prompt_text(tokenizer, problem), special=True))


def step_ids(st: StepText, tokenizer: Any, step: str, first: bool) -> tuple[int, ...]:
    """A step's ids; the reward is read at the last one. Raises ValueError when a tag kind's step does not end
    with its tag token."""
    sep_ids = _ids(tokenizer, st.separator)
    if not sep_ids:
        raise ValueError(f"the step separator {st.separator!r} encodes to no tokens")
    if st.kind == "skywork_prm":  # each piece encoded alone, then the step token id (io_utils.prepare_input)
        ids: list[int] = []
        for piece in st.step_pieces(step, first):
            ids += sep_ids[-1:] if piece == st.separator else _ids(tokenizer, piece)
        return tuple(ids)
    if st.kind == "shepherd_prm":
        ids = _ids(tokenizer, st.step_pieces(step, first)[0])
        if not ids or ids[-1] != sep_ids[-1]:
            raise ValueError(
                f"the step tag {st.separator!r} (token {sep_ids[-1]}) does not end the encoding of the step "
                f"{step[-40:]!r} (it ends with token {ids[-1] if ids else None}); set prm.step_tag to a tag the "
                "tokenizer keeps whole"
            )
        return tuple(ids)
    body, sep = st.step_pieces(step, first)
    return tuple(_ids(tokenizer, body) + sep_ids)


def encode(
    st: StepText, tokenizer: Any, problem: Problem, steps: Sequence[str]
) -> tuple[list[int], list[int], int]:
    """``(ids, the reading position of each step, prompt length)``."""
    ids = list(prompt_ids(st, tokenizer, problem))
    plen = len(ids)
    ends = []
    for k, s in enumerate(steps):
        ids.extend(step_ids(st, tokenizer, s, k == 0))
        ends.append(len(ids) - 1)
    return ids, ends, plen


def whole_text_mismatch(st: StepText, tokenizer: Any, problem: Problem, steps: Sequence[str]) -> str | None:
    """None when encoding the whole text at once gives the piecewise ids; else where they first differ.

    Only the kinds whose published recipe encodes the whole text are compared (qwen_prm, shepherd_prm): Skywork's
    encoding is piecewise by definition (newlines are separate step tokens), and so is the project's
    (:func:`specs_rl.models.prm_format.encode_steps`, the encoding its PRMs are trained on).
    """
    if st.kind not in ("qwen_prm", "shepherd_prm"):
        return None
    ids, _, _ = encode(st, tokenizer, problem, steps)
    whole = _ids(tokenizer, st.text(tokenizer, problem, steps), special=True)
    if whole == ids:
        return None
    at = next((i for i, (a, b) in enumerate(zip(ids, whole)) if a != b), min(len(ids), len(whole)))
    return (
        f"the piecewise encoding ({len(ids)} tokens) differs from encoding the whole text at once "
        f"({len(whole)} tokens) from token {at}"
    )


class PrmEncoding:
    """A PRM's inputs at inference, one problem and one step at a time, as its kind writes them (:class:`StepText`,
    :func:`prompt_ids`, :func:`step_ids`), memoized (the 1024 most recent prompts, the 8192 most recent steps): what
    both backends' PRMs send their model. A tokenizer that cannot write the kind's text is a ValueError."""

    def __init__(
        self,
        tokenizer: Any,
        fmt: PrmFormat,
        *,
        prompt_field: str = "problem",
        chat: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.text = StepText(fmt, chat=chat, system_prompt=system_prompt, prompt_field=prompt_field)
        self.text.check(tokenizer)
        self.sep_ids = tuple(_ids(tokenizer, fmt.step_separator))
        self._prompts = LRU(1024)
        self._steps = LRU(8192)

    def prompt_text(self, problem: Problem) -> str:
        return self.text.prompt_text(self.tokenizer, problem)

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        key = (problem.prompt, problem.meta.get("problem"))
        hit = self._prompts.get(key)
        if hit is None:
            hit = self._prompts.put(key, prompt_ids(self.text, self.tokenizer, problem))
        return hit

    def step_ids(self, text: str, first: bool = False) -> tuple[int, ...]:
        """A step's ids as its kind writes it (:func:`step_ids`; for the classifier kinds
        ``encode(strip(step)) + encode(separator)``, as :func:`specs_rl.models.prm_format.encode_steps` appends a
        step); ``first``: the response's first step (a shepherd_prm writes it after a space, later ones after a
        newline)."""
        key = (text, first and self.fmt.kind == "shepherd_prm")
        hit = self._steps.get(key)
        if hit is None:
            hit = self._steps.put(key, step_ids(self.text, self.tokenizer, text, first))
        return hit

    def encode(
        self, trace: Trace, extra: str | None = None
    ) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
        """``(prompt ids, ids, step ends)`` of a partial response, extended by the step text ``extra`` if given."""
        pids = self.prompt_ids(trace.problem)
        ids = list(pids)
        ends = []
        for k, text in enumerate([*(s.text for s in trace.steps), *([extra] if extra is not None else [])]):
            ids.extend(self.step_ids(text, k == 0))
            ends.append(len(ids) - 1)
        return pids, tuple(ids), ends
