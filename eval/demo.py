"""``specs-rl demo``: the embedded default, SPECS against beam search and the baselines, with no GPU and no download.

    specs-rl demo                      # the toy-math world (trained models shipped in specs_rl/assets/toymath)
    specs-rl demo world=tabular        # the exact tabular worlds (configs/demo/tabular.yaml), simulated latency
    specs-rl demo out=/tmp/demo n_grid=[8] data.limit=200

``world``: ``auto`` (default: ``toymath`` when the package ships the trained world, else ``tabular``), ``toymath``
(configs/demo/toymath.yaml: a target, a draft and a PRM trained on this kind of CPU by ``python -m train.toyworld``,
real wall-clock latency) or ``tabular``. Without the assets, ``world=toymath`` says how to train them.

It is ``specs-rl compare`` on the demo config (any compare key can be overridden): the comparison table, the
accuracy-versus-latency plot, an offline W&B run, ``results.jsonl`` and ``summary.json`` in ``out``; then one line
comparing SPECS with beam search on the target.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eval import compare
from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.errors import SpecsError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
DEFAULT_CONFIG = CONFIGS / "tabular.yaml"
TOYMATH_CONFIG = CONFIGS / "toymath.yaml"
TOYMATH_ASSETS = Path(__file__).resolve().parents[1] / "specs_rl" / "assets" / "toymath"
TOYMATH_ROLES = ("draft", "target", "prm")
WORLDS = ("auto", "toymath", "tabular")


def toymath_assets() -> Path | None:
    """The shipped toy-math world (``world.json`` and the three checkpoints), or None when it is absent."""
    import specs_rl

    for root in (Path(specs_rl.__file__).resolve().parent / "assets" / "toymath", TOYMATH_ASSETS):
        if (root / "world.json").is_file() and all(
            (root / r / "config.json").is_file() for r in TOYMATH_ROLES
        ):
            return root
    return None


def demo_argv(argv: Sequence[str]) -> list[str]:
    """The compare command line of the demo: ``world=`` resolved into ``--config``, and the toy world's model
    paths pointed at the package's assets (unless the user set them)."""
    argv = list(argv)
    worlds = [a.split("=", 1)[1] for a in argv if a.startswith("world=")]
    argv = [a for a in argv if not a.startswith("world=")]
    world = worlds[-1] if worlds else "auto"
    if world not in WORLDS:
        raise SpecsError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    assets = toymath_assets()
    if world == "toymath" and assets is None:
        raise SpecsError(
            "the toy-math world is not in specs_rl/assets/toymath; train it with "
            "`python -m train.toyworld --config configs/train/toyworld.yaml` (about an hour on 2 CPU cores)"
        )
    if world == "tabular" or assets is None:
        return ["--config", str(DEFAULT_CONFIG), *argv]
    paths = [
        f"hf.{r}.name={assets / r}"
        for r in TOYMATH_ROLES
        if not any(a.startswith(f"hf.{r}.name=") for a in argv)
    ]
    return ["--config", str(TOYMATH_CONFIG), *paths, *argv]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = demo_argv(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(compare.CompareConfig, argv, "specs-rl demo")
    rc = compare.main(argv)
    if rc:
        return rc
    rows = {
        (r["method"], r["n"]): r
        for r in json.loads((Path(cfg.out) / "summary.json").read_text())["aggregate"]
    }
    for n in cfg.n_grid:
        spec, base = rows.get(("specs", n)), rows.get(("beam_search_target", n))
        if not (spec and base):
            continue
        mean, p50 = spec["latency_vs_beam_search_target"], spec["latency_p50_vs_beam_search_target"]
        if None not in (spec["accuracy"], base["accuracy"], mean, p50):
            print(
                f"SPECS / beam search (target), n={n}: latency x{mean:.2f} (median x{p50:.2f}), "
                f"accuracy {100 * (spec['accuracy'] - base['accuracy']):+.1f} points"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
