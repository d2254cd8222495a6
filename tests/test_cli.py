"""Entry points, called in-process: `specs-rl search`, `specs-rl demo`, the launcher, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval import demo, search
from specs_rl import cli
from specs_rl.config import ConfigError, load_config
from specs_rl.errors import SpecsError
from specs_rl.run import SearchRunConfig, read_results
from tests.conftest import REPO

TABULAR = str(REPO / "configs" / "search" / "tabular.yaml")


def test_search_writes_results_summary_and_config(tmp_path):
    out = tmp_path / "run"
    assert search.main(["--config", TABULAR, "n=4", "beta=2.0", f"out={out}", "tabular.problems=6"]) == 0
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 6
    for r in recs:
        assert set(r) >= {"id", "method", "answer", "text", "correct", "steps", "latency_s", "tokens"}
        assert set(r["latency_s"]) == {
            "draft",
            "target_score",
            "target_generate",
            "reward",
            "verify",
            "judge",
            "total",
        }
        assert set(r["tokens"]) == {
            "draft",
            "target_generate",
            "target_score",
            "judge",
            "target_proposed",
            "target_accepted",
            "target_rounds",
        }
        assert (
            r["latency_s"]["total"] > 0 and r["tokens"]["target_generate"] + r["tokens"]["target_score"] > 0
        )
        assert all(s["source"] in ("draft", "target") for s in r["steps"])
        assert r["correct"] == (r["reward"] >= 0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 6 and summary["accuracy"] == sum(r["correct"] for r in recs) / 6
    assert 0 <= summary["draft_step_fraction"] <= 1 and "reward_mean" in summary
    resolved = load_config(SearchRunConfig, out / "config.yaml").run
    assert resolved.search.n == 4 and resolved.search.beta == 2.0 and resolved.tabular.problems == 6
    # the same command again resumes: nothing recomputed, nothing duplicated
    assert search.main(["--config", TABULAR, "n=4", "beta=2.0", f"out={out}", "tabular.problems=6"]) == 0
    assert len(read_results(out / "results.jsonl")) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["nn=3"], "unknown config key 'nn'"),
        (["n=abc"], "n must be an integer"),
        (["n=0"], "n must be >= 1"),
        (["beta=-1"], "beta must be >= 0"),
        (["tabular.K=x"], "tabular.K must be an integer"),
        (["tabular.colour=1"], "unknown config key 'tabular.colour'"),
        (["method=magic"], "unknown method 'magic'"),
        (["method=beam_search"], "method='beam_search' is a search strategy, not a method preset"),
        (["bta=2"], "unknown config key 'bta'; did you mean 'beta'?"),
        (
            ["tabular.conentration=2"],
            "unknown config key 'tabular.conentration'; did you mean 'tabular.concentration'?",
        ),
        (["beta=2", "search.beta=3"], "beta is given twice: as beta and as search.beta"),
        (["score_form=mean"], "method specs pins score_form='exact'"),
        (["K=1"], "a random tree needs K >= 2"),
        (["K=4", "tabular.K=5"], "K is given twice: as K and as tabular.K"),
        (["tabular.cost.target_token_s=0"], "tabular.cost.target_token_s must be a finite number > 0"),
        (["tabular.cost.draft_call_s=-0.001"], "tabular.cost.draft_call_s must be a finite number > 0"),
        (["tabular.cost.batch_slowdown=-1"], "tabular.cost.batch_slowdown must be a finite number >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_files(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert search.main(["--config", TABULAR, f"out={out}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_tree_file_is_rejected_before_writing(tmp_path, capsys):
    tree = tmp_path / "tree.json"
    tree.write_text(
        json.dumps(
            {
                "alphabet": ["a", "b"],
                "horizon": 1,
                "target": {"": [0.5, 0.6]},
                "draft": {"": [0.5, 0.5]},
                "reward": {"a": 0.1, "b": 0.2},
            }
        )
    )
    out = tmp_path / "never"
    assert search.main(["--config", TABULAR, f"out={out}", f"tabular.tree={tree}"]) == 2
    assert "target[''] sums to 1.1, not 1" in capsys.readouterr().err
    assert not out.exists()
    assert search.main(["--config", TABULAR, f"out={out}", f"tabular.tree={tmp_path / 'missing.json'}"]) == 2
    assert "tree file not found" in capsys.readouterr().err


def test_missing_config_file_and_a_different_config_in_the_same_dir(tmp_path, capsys):
    assert search.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    out = tmp_path / "run"
    assert search.main(["--config", TABULAR, f"out={out}", "tabular.problems=2"]) == 0
    before = (out / "results.jsonl").read_bytes()
    assert search.main(["--config", TABULAR, f"out={out}", "tabular.problems=2", "n=16"]) == 2
    assert "different config" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before  # nothing already written is lost


def test_tree_file_run(tmp_path):
    from specs_rl.tabular import random_tree

    tree = tmp_path / "t.json"
    random_tree(3, 2, seed=4).save(tree)
    out = tmp_path / "run"
    assert search.main(["--config", TABULAR, f"out={out}", f"tabular.tree={tree}", "tabular.problems=5"]) == 0
    assert len(read_results(out / "results.jsonl")) == 5


def test_demo_prints_the_comparison_and_writes_summary_rows(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        demo.main(
            [
                f"out={out}",
                "world=tabular",
                "tabular.problems=10",
                "methods=[specs,beam_search_target]",
                "wandb=false",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "SPECS / beam search (target), n=8: latency x" in text
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["specs", "beam_search_target"]
    for r in rows:
        assert set(r) >= {
            "method",
            "n",
            "seed",
            "problems",
            "accuracy",
            "accuracy_ci",
            "latency_mean_s",
            "latency_p50_s",
            "latency_p90_s",
            "draft_step_fraction",
        }
        assert r["problems"] == 10
    assert (out / "accuracy_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert demo.main([f"out={tmp_path / 'x'}", "methods=[specs,nope]"]) == 2


def test_config_overrides_parse_infinities_and_lists():
    cfg = load_config(SearchRunConfig, TABULAR, ["tau_reject=-inf", "tau_switch=inf", "random_switch=null"])
    cfg = cfg.run.search
    assert cfg.tau_reject == float("-inf") and cfg.tau_switch == float("inf") and cfg.random_switch is None
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(SearchRunConfig, TABULAR, ["n"])


def test_launcher_dispatch_and_usage(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "theory converge" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_and_module_entry_points(tmp_path):
    exe = REPO / ".venv" / "bin" / "specs-rl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "specs_rl.cli"]
    proc = subprocess.run(
        [*cmd, "search", "--config", TABULAR, f"out={tmp_path / 'r'}", "tabular.problems=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["problems"] == 2
    proc = subprocess.run(
        [*cmd, "search", "--config", TABULAR, "n=-3"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: n must be >= 1, got -3"


def test_the_tree_keys_may_be_given_flat_in_every_recipe(tmp_path):
    """One random-tree config (specs_rl.tree.TreeConfig), the same names in search, converge and real, and the flat
    overrides users type (K=6 H=2) land in its section."""
    from specs_rl.config import load_config
    from theory.converge import ConvergeConfig
    from theory.real_task import RealConfig

    def tab(cfg):
        return cfg.run.tabular if isinstance(cfg, SearchRunConfig) else cfg.tabular

    for cls in (SearchRunConfig, ConvergeConfig, RealConfig):
        cfg = load_config(cls, None, ["K=6", "H=2", "tree_seed=7", "concentration=2.0", "seed=3"])
        assert (tab(cfg).K, tab(cfg).H, tab(cfg).tree_seed, tab(cfg).concentration) == (
            6,
            2,
            7,
            2.0,
        )
        assert cfg.seed == 3  # the search's seed, in every recipe
        same = load_config(
            cls, None, ["tabular.K=6", "tabular.H=2", "tabular.tree_seed=7", "tabular.concentration=2"]
        )
        assert tab(same).build(0).target[1].tolist() == tab(cfg).build(0).target[1].tolist()
    out = tmp_path / "flat"
    assert search.main(["--config", TABULAR, "K=3", "H=2", "tabular.problems=2", f"out={out}"]) == 0
    assert all(len(r["answer"].split(".")) == 2 for r in read_results(out / "results.jsonl"))


def test_a_tree_whose_target_gives_a_draft_probability_zero_runs(tmp_path):
    """A target row [1, 0] with a draft that proposes the second symbol: that draft has weight 0. The search defers
    when every draft has weight 0 (it used to end in a math.log(0) traceback, leaving files behind), and the
    answers are drawn from the target's support."""
    tree = tmp_path / "zero.json"
    tree.write_text(
        json.dumps(
            {
                "alphabet": ["a", "b"],
                "horizon": 2,
                "target": {"": [1.0, 0.0], "a": [0.6, 0.4], "b": [0.5, 0.5]},
                "draft": {"": [0.5, 0.5], "a": [0.5, 0.5], "b": [0.5, 0.5]},
                "reward": {"a.a": 0.2, "a.b": 0.9, "b.a": 0.5, "b.b": 0.1},
            }
        )
    )
    out = tmp_path / "run"
    args = [
        "method=specs",
        "n=2",
        "start_mode=draft",
        "tau_reject=-inf",
        f"tree={tree}",
        "tabular.problems=40",
    ]
    assert search.main(["--config", TABULAR, *args, f"out={out}"]) == 0
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 40 and all(r["answer"].startswith("a.") for r in recs)
    assert sum(r["deferrals"] for r in recs) > 0  # both drafts were b on some problems: deferred


def test_demo_runs_the_short_config_by_default_and_full_the_published_table():
    """`specs-rl demo` is the short run (tuned SPECS at n = 8 against beam search at n = 4, three repeats), `specs-rl
    demo full` the full table; both on the same task (only the grid differs), parsed without running."""
    if demo.toymath_assets() is None:
        pytest.skip("the toy-math world is not in specs_rl/assets/toymath")
    short, full = demo.parse([]), demo.parse(["full"])
    assert demo.demo_source([])[0] == str(demo.SHORT_CONFIG)
    assert demo.demo_source(["full", "out=x"]) == (str(demo.TOYMATH_CONFIG), demo.demo_source(["out=x"])[1])
    runs = {(r.method, r.n) for r in run_plan(short)}
    assert runs == {("specs", 8), ("beam_search_target", 4)} and short.grid.seeds == [0, 1, 2]
    assert {(r.method, r.n) for r in run_plan(full)} >= {("specs", 4), ("specs", 8), ("draft_only", None)}
    assert len(full.grid.seeds) == 3 and full.grid.n_grid == [4, 8]
    assert short.run == full.run  # the same task, models and SPECS settings: each record is the full run's
    assert short.grid.method_settings == full.grid.method_settings
    with pytest.raises(SpecsError, match="`full` is the toy-math world's full table"):
        demo.parse(["full", "world=tabular"])
    assert demo.main(["full", "world=tabular"]) == 2
    assert demo.main(["out=x", "full"]) == 2  # `full` comes first, as a subcommand's word
    assert demo.parse(["full", "n_grid=[8]", "data.limit=5"]).run.data.limit == 5


def run_plan(cfg):
    from specs_rl.run import plan_runs

    return plan_runs(cfg)
