"""``specs-rl merge``: shards of one compare run merge into exactly the unsharded run; mixed configs, repeated
shards and duplicate problems are refused."""

from __future__ import annotations

import json
import math
import shutil

import pytest

import eval.compare as compare
import eval.merge as merge
from specs_rl.tracking import find_offline_runs, read_offline_run

from .conftest import REPO

TAB = str(REPO / "configs" / "eval" / "tabular.yaml")
QUIET = ["wandb=false", "plot=false", "progress=false"]
SMALL = ["tabular.problems=7", "methods=[specs,beam_search_target,draft_only]", "seeds=[42,43]"]


def _run(out, *extra: str) -> None:
    assert compare.main(["--config", TAB, f"out={out}", *QUIET, *SMALL, *extra]) == 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for i in range(3):
        _run(root / f"s{i}", f"data.shard={i}/3")
    _run(root / "full")
    return root


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def test_shards_merge_into_the_unsharded_run(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sizes = [len((shards / f"s{i}" / "results.jsonl").read_text().splitlines()) for i in range(3)]
    assert sizes == [30, 20, 20]  # 7 problems split 3/2/2, x (2 methods x 2 n + draft_only) x 2 seeds
    out = tmp_path / "merged"
    assert (
        merge.main([str(shards / f"s{i}") for i in range(3)] + [f"out={out}", "wandb=true", "plot=true"]) == 0
    )
    merged = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    full = [json.loads(x) for x in (shards / "full" / "results.jsonl").read_text().splitlines()]
    assert len(merged) == len(full) == 70
    by_key = {(r["method"], r["n"], r["seed"], r["id"]): r for r in full}
    assert {(r["method"], r["n"], r["seed"], r["id"]) for r in merged} == by_key.keys()
    assert all(_close(r, by_key[(r["method"], r["n"], r["seed"], r["id"])]) for r in merged)

    s_merged = json.loads((out / "summary.json").read_text())
    s_full = json.loads((shards / "full" / "summary.json").read_text())
    assert _close(s_merged["rows"], s_full["rows"]) and _close(s_merged["aggregate"], s_full["aggregate"])
    assert s_merged["grader"] == s_full["grader"]
    assert s_merged["complete"] and s_merged["records"] == s_merged["expected_records"] == 70
    assert s_merged["shards"] == ["0/3", "1/3", "2/3"] and s_merged["problems_in_slice"] == 7
    assert s_merged["plot"]["points"] == 5 and (out / "accuracy_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "config.json").read_text())["data.shard"] is None
    (run_dir,) = find_offline_runs(out)
    wb = read_offline_run(run_dir)
    assert wb["summary"]["specs/n4/accuracy"] == pytest.approx(
        next(a["accuracy"] for a in s_full["aggregate"] if (a["method"], a["n"]) == ("specs", 4))
    )
    # a merge is recomputed from its inputs: merging again into the same out rewrites it identically
    before = (out / "results.jsonl").read_bytes()
    assert merge.main([str(shards / f"s{i}") for i in range(3)] + [f"out={out}", "wandb=false"]) == 0
    assert (out / "results.jsonl").read_bytes() == before


def test_a_missing_shard_is_a_warning(shards, tmp_path, capsys):
    out = tmp_path / "partial"
    assert (
        merge.main([str(shards / "s0"), str(shards / "s2"), f"out={out}", "wandb=false", "plot=false"]) == 0
    )
    assert "warning: merging 2 of 3 shards; missing: 1/3" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["records"] == 50
    assert summary["warnings"] == ["merging 2 of 3 shards; missing: 1/3"]


def test_refusals(shards, tmp_path, capsys):
    def refused(args, message):
        assert merge.main([*map(str, args)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), err
        return err

    other = tmp_path / "other"
    _run(other, "data.shard=1/3", "beta=3.0")
    out = tmp_path / "never"
    refused([shards / "s0", other, f"out={out}"], "holds a run of a different config than")
    refused([shards / "s0", other, f"out={out}"], "(differs in: beta); only data.shard may differ")
    refused([shards / "s0", shards / "full", f"out={out}"], "is in both")  # overlapping problems
    copy = tmp_path / "copy"
    shutil.copytree(shards / "s0", copy)
    refused([shards / "s0", copy, f"out={out}"], "are both shard 0/3")
    refused([shards / "s0", shards / "s0", f"out={out}"], "the same directory is given twice")
    refused([shards / "s0", shards / "s1", f"out={shards / 's1'}"], "is one of the directories to merge")
    refused([shards / "s0", shards / "s1", f"out={shards / 'full'}"], "holds a compare run, not a merge")
    refused([shards / "s0", tmp_path / "nowhere", f"out={out}"], "is not a directory")
    (tmp_path / "empty").mkdir()
    refused([shards / "s0", tmp_path / "empty", f"out={out}"], "has no config.json")
    refused([shards / "s0", "colour=red", f"out={out}"], "unknown merge option 'colour'")
    refused([shards / "s0"], "merge needs out=DIR")
    refused([f"out={out}"], "merge needs at least one run directory")
    assert not out.exists()
    # duplicates inside what would be one shard (a results file appended to twice) are caught too
    dup = tmp_path / "dup"
    shutil.copytree(shards / "s1", dup)
    line = (dup / "results.jsonl").read_text().splitlines()[0]
    with (dup / "results.jsonl").open("a") as fh:
        fh.write(line + "\n")
    refused([shards / "s0", dup, f"out={out}"], f"twice in {dup}")
