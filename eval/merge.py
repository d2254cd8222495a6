"""``specs-rl merge``: combine the output directories of sharded ``specs-rl compare`` runs into one.

    specs-rl compare --config configs/eval/math500_qwen25.yaml data.shard=0/2 out=runs/m500-0of2   # machine 1
    specs-rl compare --config configs/eval/math500_qwen25.yaml data.shard=1/2 out=runs/m500-1of2   # machine 2
    specs-rl merge runs/m500-0of2 runs/m500-1of2 out=runs/m500

The directories must hold runs of the same config except ``data.shard`` (anything else differing is refused,
naming the keys), and no problem may appear twice (same method, n, seed and id in two directories: an error naming
both). Writes into ``out`` one ``results.jsonl``, ``summary.json`` (the compare format, plus ``merged_from``),
the plot and a W&B run, as ``compare`` would have for the whole slice. A missing shard or an unfinished run is
reported as a warning (a partial merge is allowed; ``summary.json`` says ``"complete": false``). Rerunning a
merge into the same ``out`` rewrites it; ``out`` may not be a compare run's own directory.

Options (``key=value``): ``out`` (required), ``wandb`` (default: the runs' setting), ``project``, ``wandb_dir``,
``plot``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.config import ConfigError, load_config, parse_overrides, split_argv
from specs_rl.datasets import parse_shard
from specs_rl.errors import SpecsError
from specs_rl.run import (
    PRESENTATION_KEYS,
    CompareConfig,
    check_run_dir,
    config_diff,
    plan_runs,
    prepare_run_dir,
    read_results,
    stamp_identity,
    write_report,
)
from specs_rl.run.records import record_key

OPTIONS = ("out", "wandb", "project", "wandb_dir", "plot")
USAGE = "usage: specs-rl merge DIR [DIR ...] out=DIR [wandb=true|false] [project=NAME] [wandb_dir=DIR] [plot=true|false]"


SHARD = "data.shard"  # the one key merged directories may differ in, as config.json spells it


@dataclass
class Source:
    """One compare run directory."""

    dir: Path
    identity: dict[str, Any]  # its config.json
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def shard(self) -> str | None:
        return self.identity.get(SHARD)


def read_source(d: Path) -> Source:
    """A compare directory's config stamp, records and summary (files missing or corrupt: a SpecsError)."""
    if not d.is_dir():
        raise SpecsError(f"{d} is not a directory")
    for name in ("config.json", "config.yaml", "results.jsonl"):
        if not (d / name).is_file():
            raise SpecsError(f"{d} has no {name}; is it a specs-rl compare output directory?")
    try:
        ident = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError:
        raise SpecsError(f"{d / 'config.json'} is corrupt") from None
    if not isinstance(ident, dict):
        raise SpecsError(f"{d / 'config.json'} is corrupt")
    ident = stamp_identity(CompareConfig, ident)  # a stamp written before configs were composed compares too
    if not any(k == "methods" or k.startswith("methods") for k in ident):
        raise SpecsError(f"{d} is not a specs-rl compare directory (its config has no methods)")
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None
    else:
        summary = None
    records = read_results(
        d / "results.jsonl"
    )  # a corrupt last line: dropped with a warning, the file untouched
    return Source(d, ident, records, summary)


def _without_shard(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k != SHARD}


def _parse_argv(argv: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """The run directories (positional) and the options (the project's ``key=value`` syntax)."""
    dirs = [Path(a) for a in argv if "=" not in a and not a.startswith("-")]
    _, items, _ = split_argv([a for a in argv if "=" in a or a.startswith("-")])
    opts = {}
    for key, value in parse_overrides(items).items():
        if key not in OPTIONS or isinstance(value, dict):
            raise ConfigError(f"unknown merge option {key!r}; known: {', '.join(OPTIONS)}")
        opts[key] = str(value)
    if not dirs:
        raise ConfigError(f"merge needs at least one run directory\n{USAGE}")
    if "out" not in opts or not opts["out"]:
        raise ConfigError(f"merge needs out=DIR\n{USAGE}")
    return dirs, opts


def check_sources(sources: Sequence[Source]) -> list[str]:
    """Refuse mixed configs and repeated shards; return warnings (missing shards, unfinished runs)."""
    first = sources[0]
    base = _without_shard(first.identity)
    for s in sources[1:]:
        diff = config_diff(base, _without_shard(s.identity))
        if diff:
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise SpecsError(
                f"{s.dir} holds a run of a different config than {first.dir} "
                f"(differs in: {', '.join(diff[:5])}{more}); only data.shard may differ"
            )
    graders = {json.dumps((s.summary or {}).get("grader"), sort_keys=True) for s in sources if s.summary}
    if len(graders) > 1:
        raise SpecsError(f"the runs were graded by different graders: {', '.join(sorted(graders))}")
    notes = []
    seen: dict[str, Path] = {}
    for s in sources:
        if s.shard is not None:
            if s.shard in seen:
                raise SpecsError(f"{seen[s.shard]} and {s.dir} are both shard {s.shard}")
            seen[s.shard] = s.dir
        if s.summary is None:
            notes.append(f"{s.dir} has no summary.json: its run may not have finished")
        elif s.summary.get("complete") is False:
            notes.append(
                f"{s.dir} is incomplete ({s.summary.get('records')} of {s.summary.get('expected_records')} records)"
            )
    shards = [parse_shard(s.shard) for s in sources if s.shard is not None]
    ks = {k for _, k in shards}
    if len(shards) == len(sources) and len(ks) == 1:
        k = ks.pop()
        missing = sorted(set(range(k)) - {i for i, _ in shards})
        if missing:
            notes.append(
                f"merging {len(shards)} of {k} shards; missing: {', '.join(f'{i}/{k}' for i in missing)}"
            )
    elif len(ks) > 1:
        notes.append(
            f"the shards split the slice in different ways ({', '.join(sorted(s.shard for s in sources if s.shard))})"
        )
    return notes


def merge_records(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """All records, refusing a (method, n, seed, problem) that appears twice."""
    owner: dict[tuple[str, str, str, str], Path] = {}
    out = []
    for s in sources:
        for r in s.records:
            key = record_key(r)
            if key in owner:
                where = (
                    "twice in " + str(s.dir) if owner[key] == s.dir else f"in both {owner[key]} and {s.dir}"
                )
                raise SpecsError(
                    f"problem {key[3]!r} (method {key[0]}, n={key[1]}, seed={key[2]}) is {where}; "
                    "were the same shard or overlapping slices run twice?"
                )
            owner[key] = s.dir
            out.append(r)
    return out


def parse(argv: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """The run directories and the options of the command line, checked, without reading the directories (what the
    docs test calls)."""
    return _parse_argv(argv)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    dirs, opts = _parse_argv(argv)
    out = Path(opts["out"])
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise SpecsError("the same directory is given twice")
    if out.resolve() in resolved:
        raise SpecsError(f"out={out} is one of the directories to merge; pick a new directory")
    sources = [read_source(d) for d in dirs]
    notes = check_sources(sources)
    overrides = ["data.shard=null", f"out={out}"] + [f"{k}={v}" for k, v in opts.items() if k != "out"]
    # the runs' resolved config: its settings were checked when the run was planned, so only the overrides are given
    cfg = load_config(CompareConfig, dirs[0] / "config.yaml", overrides, resolved=True)
    runs = plan_runs(cfg)
    check_run_dir(out, cfg, ignore=PRESENTATION_KEYS)
    prior = out / "summary.json"
    if (out / "results.jsonl").exists():
        try:
            merged_before = "merged_from" in json.loads(prior.read_text())
        except (OSError, json.JSONDecodeError):
            merged_before = False
        if not merged_before:
            raise SpecsError(f"{out} holds a compare run, not a merge; pick another out=")
    records = merge_records(sources)
    order = [(r.method, r.n, r.seed) for r in runs]
    rank = {k: i for i, k in enumerate(order)}
    records.sort(key=lambda r: rank.get((r.get("method"), r.get("n"), r.get("seed")), len(rank)))

    out = prepare_run_dir(out, cfg, ignore=PRESENTATION_KEYS)
    tmp = out / "results.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / "results.jsonl")

    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    summaries = [s.summary or {} for s in sources]
    expected = [s.get("expected_records") for s in summaries]
    grader = next(
        (s["grader"] for s in summaries if s.get("grader")), {"name": "unknown", "version": "unknown"}
    )
    write_report(
        out,
        cfg,
        records,
        grader,
        order=order,
        job_type="merge",
        title=f"{cfg.run.data.dataset if cfg.run.backend != 'tabular' else 'tabular'} (merged {len(dirs)} runs)",
        extra={
            "merged_from": [str(d) for d in dirs],
            "shards": [s.shard for s in sources],
            "problems_in_slice": sum(s.get("problems_in_slice") or 0 for s in summaries) or None,
            "records": len(records),
            "expected_records": sum(expected) if all(isinstance(e, int) for e in expected) else None,
            "complete": not notes and all(s.get("complete") is True for s in summaries),
            "warnings": notes,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
