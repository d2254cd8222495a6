"""One vocabulary for the theory workbench: the variants are named by the method presets (:mod:`specs_rl.methods`)
where a preset exists, and a setting has the name it has in :class:`specs_rl.settings.SearchConfig`.

The names used before stay accepted as aliases: each use prints one line on stderr naming what replaced it, and the
results carry the new name.

- variants ``exact`` -> ``specs``: the exact form at the theorem's settings (the law of the ``specs`` preset);
- variants ``no_target`` (converge), ``reward_only`` (real) -> ``specs_no_target``: the reward-only score;
- variants ``code`` (converge), ``mean`` (real) -> ``specs_paper_form``: the per-token mean score of ``specs_paper``
  at the selection temperature, draft mode throughout, no rejection (``specs_paper`` is the authors' whole method);
- ``gsi_threshold`` -> ``tau_reject``: GSI's threshold is ``tau_reject`` in its preset;
- ``code_temperature``, ``mean_temperature`` -> ``temperature``: the search's selection temperature.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from specs_rl.config import ConfigError, split_argv

VARIANT_ALIASES: dict[str, str] = {
    "exact": "specs",
    "no_target": "specs_no_target",
    "reward_only": "specs_no_target",
    "code": "specs_paper_form",
    "mean": "specs_paper_form",
}
KEY_ALIASES: dict[str, str] = {
    "gsi_threshold": "tau_reject",
    "code_temperature": "temperature",
    "mean_temperature": "temperature",
}


def _notice(prog: str, old: str, new: str) -> None:
    print(f"{prog}: {old!r} is now called {new!r}", file=sys.stderr)


def variant_names(names: Iterable[str], prog: str = "theory") -> list[str]:
    """``names`` with every old variant name replaced by its new one (one stderr line per replaced name)."""
    out = []
    for name in names:
        if name in VARIANT_ALIASES:
            _notice(prog, name, VARIANT_ALIASES[name])
            name = VARIANT_ALIASES[name]
        out.append(name)
    return out


def renamed_argv(argv: Sequence[str], prog: str) -> list[str]:
    """The command line with old key names replaced by the new ones (one stderr line each). An old name given
    beside its new one is a :class:`ConfigError`."""
    path, items, wants_help = split_argv(argv)
    given = {item.partition("=")[0] for item in items}
    out = ["--config", path] if path is not None else []
    for item in items:
        key, _, value = item.partition("=")
        if key in KEY_ALIASES:
            new = KEY_ALIASES[key]
            clash = [k for k in given if k != key and (k == new or KEY_ALIASES.get(k) == new)]
            if clash:
                raise ConfigError(f"{key} and {clash[0]} are both given: {key} is now {new}; give {new} once")
            _notice(prog, key, new)
            item = f"{new}={value}"
        out.append(item)
    return [*out, "--help"] if wants_help else out
