"""``specs-rl demo``: the embedded default, SPECS against beam search, with no GPU and no download.

    specs-rl demo                      # minutes: tuned SPECS (n = 8) against beam search with the target (n = 4)
    specs-rl demo full                 # the full table: every baseline, n = 4 and 8, three repeats (~11 min)
    specs-rl demo world=tabular        # the exact tabular worlds (configs/demo/tabular.yaml), simulated latency
    specs-rl demo full out=/tmp/demo n_grid=[8] data.limit=50
    specs-rl demo backend=vllm         # the toy-math world with draft and target on local vLLM servers

``world``: ``auto`` (default: ``toymath`` when the package ships the trained world, else ``tabular``), ``toymath``
(a target, a draft and a PRM trained on a 2-core CPU by ``python -m train.toyworld``, real wall-clock latency) or
``tabular``. Without the assets, ``world=toymath`` says how to train them. On the toy-math world the default is the
short run (configs/demo/toymath_short.yaml: SPECS at the setting ``specs-rl tune`` chose against the reference its
rule named, three repeats, minutes on a 2-core CPU); ``full`` runs configs/demo/toymath.yaml, the published table.

``backend=vllm`` runs the same config with the draft and the target served by vLLM (started by the run from the
venv of ``scripts/vllm-venv``, or the running servers given by ``vllm.draft.url`` / ``vllm.target.url``) and the
toy world's PRM in-process (vLLM cannot serve its token-label Llama PRM); its default ``out`` is ``runs/demo-vllm``.

It is ``specs-rl compare`` on the demo config (any compare key can be overridden): the comparison table, the
accuracy-versus-latency plot, an offline W&B run, ``results.jsonl`` and ``summary.json`` in ``out``; then one line
comparing SPECS with beam search on the target (the latency ratio's median and range over the repeats, each
accuracy with its 95% interval) and one line reading it.
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
from specs_rl.run import CompareConfig, plan_runs
from specs_rl.run.summary import REFERENCE, repeat_ratio

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
DEFAULT_CONFIG = CONFIGS / "tabular.yaml"
TOYMATH_CONFIG = CONFIGS / "toymath.yaml"  # `specs-rl demo full`
SHORT_CONFIG = CONFIGS / "toymath_short.yaml"  # `specs-rl demo` on the toy-math world
FULL = "full"
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
    """The config file and the overrides of the demo's command line: ``world=`` and a leading ``full`` pick the file
    (unless ``--config`` is given) and are not passed on; the toy world's model paths point at the package's assets
    (unless the user set them)."""
    full = list(argv[:1]) == [FULL]
    path, overrides, _ = split_argv(argv[1:] if full else argv)
    given = parse_overrides(overrides)
    world = given.pop("world", "auto")
    if world not in WORLDS:
        raise SpecsError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    overrides = [o for o in overrides if o.partition("=")[0].strip() != "world"]
    if path is not None:
        if full:
            raise SpecsError(
                "`full` picks the toy-math world's full config; with --config, give that file instead"
            )
        return path, overrides
    assets = toymath_assets()
    if world == "toymath" and assets is None:
        raise SpecsError(
            "the toy-math world is not in specs_rl/assets/toymath; train it with "
            "`python -m train.toyworld --config configs/train/toyworld.yaml` (about an hour on 2 CPU cores)"
        )
    if world == "tabular" or assets is None:
        if full:
            raise SpecsError(
                "`full` is the toy-math world's full table; the tabular demo has one config (drop `full`)"
                + ("" if world == "tabular" else ": the toy-math world is not in specs_rl/assets/toymath")
            )
        return str(DEFAULT_CONFIG), overrides
    named = given.get("hf") if isinstance(given.get("hf"), dict) else {}
    paths = [
        f"hf.{r}.name={assets / r}"
        for r in TOYMATH_ROLES
        if not (isinstance(named.get(r), dict) and "name" in named[r])
    ]
    return str(TOYMATH_CONFIG if full else SHORT_CONFIG), [*paths, *overrides]


def demo_config(argv: Sequence[str]) -> CompareConfig:
    """The demo's compare config, parsed once (:func:`demo_source`); a run of the toy world on the vLLM backend
    writes to ``runs/demo-vllm`` unless the command line gives ``out``."""
    if split_argv(argv[1:] if list(argv[:1]) == [FULL] else argv)[2]:
        print("usage: specs-rl demo [full] [world=auto|toymath|tabular] [--config PATH] [key=value ...]\n")
        print(
            "  full: the toy-math world's full table (configs/demo/toymath.yaml) instead of the short run\n\nkeys:"
        )
        print("  world (str, default 'auto'): auto | toymath | tabular: the demo config to run")
        print("\n".join(describe(CompareConfig)))
        raise SystemExit(0)
    path, overrides = demo_source(argv)
    cfg = load_config(CompareConfig, path, overrides)
    out_given = any(full_key(CompareConfig, o.partition("=")[0].strip()) == "run.out" for o in overrides)
    if cfg.run.backend == "vllm" and not out_given and path in (str(TOYMATH_CONFIG), str(SHORT_CONFIG)):
        cfg.run.out = "runs/demo-vllm"
    return cfg


def parse(argv: Sequence[str]) -> CompareConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    cfg = demo_config(argv)
    plan_runs(cfg)
    return cfg


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = demo_config(argv)
    rc = compare.run(cfg)
    if rc:
        return rc
    aggregate = json.loads((Path(cfg.run.out) / "summary.json").read_text())
    for line in headlines(aggregate["rows"], aggregate["aggregate"]):
        print(line)
    if demo_source(argv)[0] == str(SHORT_CONFIG):
        print(
            "The full table (every baseline, n = 4 and 8, three repeats of 100 problems; about 11 minutes on a "
            "2-core CPU): specs-rl demo full"
        )
    return 0


def pairs(aggregate: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(SPECS, beam search with the target) aggregate rows to compare: at the same n where beam search ran at it,
    else with each n beam search ran at (a tuned SPECS against the reference its tuning rule named)."""
    spec = [a for a in aggregate if a["method"] == "specs"]
    base = {a["n"]: a for a in aggregate if a["method"] == REFERENCE}
    return [(s, b) for s in spec for b in ([base[s["n"]]] if s["n"] in base else base.values())]


def headlines(rows: Sequence[dict], aggregate: Sequence[dict]) -> list[str]:
    """Per pair of :func:`pairs`: the headline, then the reading."""
    out = []
    for spec, base in pairs(aggregate):
        rep = repeat_ratio(rows, ("specs", spec["n"]), (REFERENCE, base["n"]))
        if rep is None or None in (spec["accuracy"], base["accuracy"]):
            continue
        ns = f"n={spec['n']}" if spec["n"] == base["n"] else None
        label = (
            f"SPECS / beam search (target), {ns}"
            if ns
            else f"SPECS n={spec['n']} / beam search (target) n={base['n']}"
        )
        out += [f"{label}: {headline(spec, base, rep)}", f"  reading: {reading(spec, base, rep)}"]
    return out


def headline(spec: dict, base: dict, rep: dict) -> str:
    """SPECS against beam search with the target: the latency ratio as the median and range over the repeats
    (seeds, each measured in the same interleaved run), the pooled ratios beside it, and both accuracies with their
    95% intervals."""
    k = rep["repeats"]
    spread = f"median of {k} repeats, range x{rep['min']:.2f}-x{rep['max']:.2f}" if k > 1 else "1 repeat"
    pooled = spec["latency_mean_s"] / base["latency_mean_s"]
    p50 = spec["latency_p50_s"] / base["latency_p50_s"]
    gap = 100 * (spec["accuracy"] - base["accuracy"])
    return (
        f"latency x{rep['median']:.2f} ({spread}; pooled mean x{pooled:.2f}, per-problem median x{p50:.2f}), "
        f"accuracy {gap:+.1f} points ({_acc(spec)} vs {_acc(base)}, {spec['problems']} searches each)"
    )


def _acc(row: dict) -> str:
    lo, hi = row["accuracy_ci"]
    return f"{row['accuracy']:.3f} [{lo:.2f}, {hi:.2f}]"


def reading(spec: dict, base: dict, rep: dict) -> str:
    """One sentence: is SPECS faster in every repeat, and is the accuracy gap outside both 95% intervals."""
    k = rep["repeats"]
    each = f"in each of the {k} repeats" if k > 1 else "in the one repeat (add seeds for a range)"
    if rep["max"] < 1:
        speed = f"SPECS took less time than beam search {each}"
    elif rep["min"] > 1:
        speed = f"SPECS took more time than beam search {each}"
    else:
        speed = (
            f"SPECS and beam search are not separated in time (ratios x{rep['min']:.2f}-x{rep['max']:.2f})"
        )
    (slo, shi), (blo, bhi) = spec["accuracy_ci"], base["accuracy_ci"]
    gap = 100 * (spec["accuracy"] - base["accuracy"])
    if shi < blo or bhi < slo:
        acc = f"its accuracy is {'higher' if gap > 0 else 'lower'} by {abs(gap):.1f} points, outside both intervals"
    else:
        acc = f"the accuracy gap ({gap:+.1f} points) is within the 95% intervals: not resolved at this size"
    return f"{speed}; {acc}."


if __name__ == "__main__":
    sys.exit(main())
