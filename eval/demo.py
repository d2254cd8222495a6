"""``specs-rl demo``: the embedded default, SPECS against beam search and the baselines, with no GPU and no download.

    specs-rl demo                      # the toy-math world (trained models shipped in specs_rl/assets/toymath)
    specs-rl demo world=tabular        # the exact tabular worlds (configs/demo/tabular.yaml), simulated latency
    specs-rl demo out=/tmp/demo n_grid=[8] data.limit=200
    specs-rl demo backend=vllm         # the toy-math world with draft and target on local vLLM servers

``world``: ``auto`` (default: ``toymath`` when the package ships the trained world, else ``tabular``), ``toymath``
(configs/demo/toymath.yaml: a target, a draft and a PRM trained on this kind of CPU by ``python -m train.toyworld``,
real wall-clock latency) or ``tabular``. Without the assets, ``world=toymath`` says how to train them.

``backend=vllm`` runs the same config with the draft and the target served by vLLM (started by the run from the
venv of ``scripts/vllm-venv``, or the running servers given by ``vllm.draft.url`` / ``vllm.target.url``) and the
toy world's PRM in-process (vLLM cannot serve its token-label Llama PRM); its default ``out`` is ``runs/demo-vllm``.

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
from specs_rl.config import describe, full_key, load_config, parse_overrides, split_argv
from specs_rl.errors import SpecsError
from specs_rl.run import CompareConfig
from specs_rl.run.summary import REPEAT_RATIO

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


def demo_source(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The config file and the overrides of the demo's command line: ``world=`` picks the file (unless ``--config``
    is given) and is not passed on; the toy world's model paths point at the package's assets (unless the user set
    them)."""
    path, overrides, _ = split_argv(argv)
    given = parse_overrides(overrides)
    world = given.pop("world", "auto")
    if world not in WORLDS:
        raise SpecsError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    overrides = [o for o in overrides if o.partition("=")[0].strip() != "world"]
    if path is not None:
        return path, overrides
    assets = toymath_assets()
    if world == "toymath" and assets is None:
        raise SpecsError(
            "the toy-math world is not in specs_rl/assets/toymath; train it with "
            "`python -m train.toyworld --config configs/train/toyworld.yaml` (about an hour on 2 CPU cores)"
        )
    if world == "tabular" or assets is None:
        return str(DEFAULT_CONFIG), overrides
    named = given.get("hf") if isinstance(given.get("hf"), dict) else {}
    paths = [
        f"hf.{r}.name={assets / r}"
        for r in TOYMATH_ROLES
        if not (isinstance(named.get(r), dict) and "name" in named[r])
    ]
    return str(TOYMATH_CONFIG), [*paths, *overrides]


def demo_config(argv: Sequence[str]) -> CompareConfig:
    """The demo's compare config, parsed once (:func:`demo_source`); a run of the toy world on the vLLM backend
    writes to ``runs/demo-vllm`` unless the command line gives ``out``."""
    if split_argv(argv)[2]:
        print("usage: specs-rl demo [world=auto|toymath|tabular] [--config PATH] [key=value ...]\n\nkeys:")
        print("  world (str, default 'auto'): auto | toymath | tabular: the demo config to run")
        print("\n".join(describe(CompareConfig)))
        raise SystemExit(0)
    path, overrides = demo_source(argv)
    cfg = load_config(CompareConfig, path, overrides)
    out_given = any(full_key(CompareConfig, o.partition("=")[0].strip()) == "run.out" for o in overrides)
    if cfg.run.backend == "vllm" and not out_given and path == str(TOYMATH_CONFIG):
        cfg.run.out = "runs/demo-vllm"
    return cfg


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = demo_config(sys.argv[1:] if argv is None else argv)
    rc = compare.run(cfg)
    if rc:
        return rc
    aggregate = json.loads((Path(cfg.run.out) / "summary.json").read_text())["aggregate"]
    rows = {(r["method"], r["n"]): r for r in aggregate}
    for n in cfg.grid.n_grid:
        line = headline(rows.get(("specs", n)), rows.get(("beam_search_target", n)))
        if line:
            print(f"SPECS / beam search (target), n={n}: {line}")
    return 0


def headline(spec: dict | None, base: dict | None) -> str | None:
    """SPECS against beam search with the target: the latency ratio as the median and range over the repeats
    (seeds, each measured in the same interleaved run), the pooled ratios beside it, and the accuracy gap."""
    if not (spec and base) or None in (spec["accuracy"], base["accuracy"], spec.get(REPEAT_RATIO)):
        return None
    rep = spec[REPEAT_RATIO]
    k = rep["repeats"]
    spread = f"median of {k} repeats, range x{rep['min']:.2f}-x{rep['max']:.2f}" if k > 1 else "1 repeat"
    pooled = spec["latency_vs_beam_search_target"]
    p50 = spec["latency_p50_vs_beam_search_target"]
    gap = 100 * (spec["accuracy"] - base["accuracy"])
    return (
        f"latency x{rep['median']:.2f} ({spread}; pooled mean x{pooled:.2f}, per-problem median x{p50:.2f}), "
        f"accuracy {gap:+.1f} points ({spec['accuracy']:.3f} vs {base['accuracy']:.3f}, {spec['problems']} runs)"
    )


if __name__ == "__main__":
    sys.exit(main())
