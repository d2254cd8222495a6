"""Arguments of the training recipes: TRL's config dataclasses and parser, with the project's command line.

    python -m train.prm --config configs/train/prm_tiny.yaml output_dir=runs/prm max_steps=4 use_peft=true

The recipes parse into TRL-style dataclasses (``transformers.TrainingArguments`` subclasses such as
``trl.SFTConfig`` or :class:`specs_rl.training.prm.PRMConfig`, ``trl.ModelConfig`` and the recipe's own script
arguments) with ``trl.TrlParser``, so ``report_to``, PEFT and ``accelerate launch`` behave as TRL users expect.
On top of that:

- ``--config FILE.yaml`` gives a flat YAML mapping of field names (TRL's format, including its ``env:`` block);
- ``key=value`` (and TRL's ``--key value`` / ``--key=value``) override it; the text is converted by the field's
  type as on TRL's command line, lists are comma-separated (``lora_target_modules=q_proj,v_proj``), ``null``
  means None;
- a recipe may have mode sections (the draft recipe's ``sft:`` / ``onpolicy:`` blocks): the selected block is
  merged into the top level (``sft.max_length=128`` overrides inside it) and the others are ignored;
- an unknown key, a value of the wrong type, or a value the dataclass rejects is a :class:`ConfigError` naming
  the key, before anything is loaded or written;
- ``report_to`` defaults to ``wandb`` (transformers 5 defaults to ``none``), offline unless the user chose a mode.

Why the trainers keep TRL's parser: the command line itself is the project's one parser (:func:`read_argv` is
:func:`specs_rl.config.split_argv` + :func:`specs_rl.config.parse_overrides`, as for every other recipe), but the
dataclasses are built by ``trl.TrlParser``. ``TrainingArguments`` and its TRL subclasses resolve hundreds of fields
in their own ``__post_init__`` (devices and ``accelerate`` state, ``report_to``, precision flags, deprecated
aliases) and expect argparse-typed text for them; filling them through the project's dataclass loader would skip
or duplicate that logic, and ``accelerate launch`` / PEFT options would stop behaving as TRL users expect.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.config import ConfigError, load_yaml, parse_overrides, split_argv

NULLS = ("null", "None", "~")  # a key=value text meaning None


@dataclass
class RawConfig:
    """What the command line said, before it meets the dataclasses."""

    path: str | None = None
    yaml: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    help: bool = False

    def flat(self, sections: Sequence[str] = (), select: str | None = None) -> dict[str, Any]:
        """YAML <- overrides, with the ``select``-ed section merged into the top level and other sections dropped."""
        out: dict[str, Any] = {}
        for layer in (self.yaml, self.overrides):
            out.update({k: v for k, v in layer.items() if k not in sections})
            for name in sections:
                block = layer.get(name)
                if block is not None and not isinstance(block, dict):
                    raise ConfigError(f"section {name!r} must be a mapping of keys, got {block!r}")
            if select is not None and isinstance(layer.get(select), dict):
                out.update(layer[select])
        return out


def read_argv(argv: Sequence[str]) -> RawConfig:
    """Split the command line with the project's one parser (:func:`specs_rl.config.split_argv`) and read the YAML.

    Override values stay text (:func:`specs_rl.config.parse_overrides`): TRL's parser converts them by the field's
    type, as on TRL's own command line, so ``system_prompt=a: b`` stays a string."""
    path, items, wants_help = split_argv(argv)
    raw = RawConfig(path=path, help=wants_help)
    if path is not None:
        raw.yaml = load_yaml(path)
    raw.overrides = parse_overrides(items)
    return raw


def check_keys(data: Mapping[str, Any], dataclass_types: Sequence[type], where: str = "") -> None:
    """Every key must be a field of one of the dataclasses (or ``env``); else a one-line ConfigError."""
    known = {f.name for dt in dataclass_types for f in dataclasses.fields(dt) if f.init} | {"env"}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{where}{hint}; --help lists the keys")


def _parser(dataclass_types: Sequence[type], prog: str) -> Any:
    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ConfigError(f"{prog}: {message}")

    return _Parser(list(dataclass_types), prog=prog)


def _tokens(parser: Any, data: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Command-line tokens for scalar/list values (argparse checks their types), direct defaults for None/dicts."""
    actions = {a.dest: a for a in parser._actions}
    tokens: list[str] = []
    direct: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(key)
        if isinstance(value, str) and value in NULLS:
            value = None
        if action is None or value is None or isinstance(value, dict):
            direct[key] = value
            continue
        many = action.nargs in ("+", "*")
        if isinstance(value, str) and many:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            if many and value:
                tokens += [f"--{key}", *(str(v) for v in value)]
            else:  # e.g. report_to: [wandb, tensorboard] is one field holding a list
                direct[key] = list(value)
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        tokens.append(f"--{key}={text}")  # one token: a value starting with "-" is not taken for an option
    return tokens, direct


def parse_into(
    dataclass_types: Sequence[type],
    data: Mapping[str, Any],
    prog: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    where: str = "",
) -> tuple[Any, ...]:
    """Build the dataclasses from a flat mapping (``defaults`` <- ``data``) through TRL's parser.

    The ``env`` block sets environment variables (TRL's convention) once everything parsed.
    """
    data = dict(data)
    check_keys(data, dataclass_types, where)
    env = data.pop("env", None) or {}
    if not isinstance(env, dict):
        raise ConfigError("'env' must be a mapping of environment variables")
    parser = _parser(dataclass_types, prog)
    tokens, direct = _tokens(parser, {**(defaults or {}), **data})
    parser.set_defaults_with_config(**direct)
    try:
        parsed = tuple(parser.parse_args_into_dataclasses(args=tokens))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prog}: {str(e).strip().splitlines()[0]}") from None
    for k, v in env.items():
        os.environ[str(k)] = str(v)
    return parsed


def print_help(dataclass_types: Sequence[type], prog: str, header: str = "") -> None:
    parser = _parser(dataclass_types, prog)
    print(header)
    parser.print_help()


def wants_wandb(training_args: Any) -> bool:
    report_to = training_args.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    return "wandb" in report_to or "all" in report_to


def fix_lora_targets(model_args: Any) -> None:
    """``trl.ModelConfig`` turns a one-item ``lora_target_modules`` list into a bare string, which PEFT reads as a
    regex over the full module path (matching nothing); turn a plain name back into a list."""
    targets = getattr(model_args, "lora_target_modules", None)
    if isinstance(targets, str) and targets != "all-linear" and targets.replace("_", "").isalnum():
        model_args.lora_target_modules = [targets]


def peft_config(model_args: Any, task_type: str) -> Any:
    """``trl.get_peft_config`` with the task type of the head being trained (``TOKEN_CLS``, ``SEQ_CLS``,
    ``CAUSAL_LM``) unless the user chose one; ``None`` when ``use_peft`` is false."""
    if not model_args.use_peft:
        return None
    from trl import get_peft_config

    fix_lora_targets(model_args)
    if model_args.lora_task_type == "CAUSAL_LM" and task_type != "CAUSAL_LM":
        model_args.lora_task_type = task_type
    return get_peft_config(model_args)


def resolved(*objs: Any, **extra: Any) -> dict[str, Any]:
    """A JSON-safe dict of the parsed dataclasses (``to_dict`` for TrainingArguments), for W&B and the run folder."""
    out: dict[str, Any] = dict(extra)
    for obj in objs:
        name = type(obj).__name__
        d = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        out[name] = json.loads(json.dumps(d, default=str))
    return out


def write_resolved(
    config: Mapping[str, Any], output_dir: str | Path, name: str = "train_config.json"
) -> Path:
    """Write the resolved config beside the checkpoint."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
    return path
