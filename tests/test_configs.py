"""Every YAML under configs/ loads with the config class of the recipe that runs it, and says how to run it."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import yaml

from specs_rl.config import load_config
from specs_rl.run import SearchRunConfig
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _id(p):
    return str(p.relative_to(REPO / "configs"))


def test_there_are_configs_for_every_recipe():
    groups = {p.parent.name for p in CONFIGS}
    assert {"search", "eval", "demo", "train", "accelerate"} <= groups


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_starts_with_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path} must start with a comment giving its command"
    assert any(w in first for w in ("specs-rl", "python -m", "accelerate launch")), first


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_loads(path):
    group = path.parent.name
    if group == "search":
        load_config(SearchRunConfig, path).search_config()
    elif group in ("eval", "demo"):
        from eval.compare import CompareConfig

        load_config(CompareConfig, path)
    elif group == "train":
        name = path.stem.split("_")[0]
        module = importlib.import_module(f"train.{name}")
        # GPU configs ask for bf16, which TrainingArguments refuses on a CPU: load them as a CPU run would
        overrides = [] if "tiny" in path.stem else ["use_cpu=true", "bf16=false"]
        assert module.parse(["--config", str(path), *overrides]) is not None
    elif group == "tune":
        pytest.importorskip("optuna")
        from specs_rl.run.tune import TuneConfig, plan_study

        plan_study(load_config(TuneConfig, path))
    elif group == "accelerate":
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP", "NO", "MULTI_CPU")
    else:
        pytest.fail(f"no loader known for configs/{group}/")


def test_every_registered_backend_has_its_section_in_the_run_config():
    import dataclasses

    from specs_rl.run import BACKENDS, RunConfig

    fields = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    hints = __import__("typing").get_type_hints(RunConfig)
    for name, spec in BACKENDS.items():
        assert name in fields, f"RunConfig has no section for backend {name}"
        assert hints[name] is spec.section


def test_no_config_class_inherits_another():
    """Configs hold their parts (composition): no dataclass config derives from another dataclass."""
    import dataclasses

    from eval.bench_loop import BenchConfig
    from eval.bench_served import BenchServedConfig
    from eval.serve import ServeConfig
    from specs_rl.run import CompareConfig, GridConfig, ReportConfig, RunConfig
    from specs_rl.run.tune import TuneConfig
    from specs_rl.settings import SearchConfig

    classes = (BenchConfig, BenchServedConfig, ServeConfig, CompareConfig, GridConfig, ReportConfig, RunConfig,
               SearchRunConfig, TuneConfig, SearchConfig)  # fmt: skip
    for cls in classes:
        for base in cls.__mro__[1:]:
            assert not dataclasses.is_dataclass(base), f"{cls.__name__} inherits the config {base.__name__}"
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert not f.metadata.get("help", "").startswith("not used"), (
                f"{cls.__name__}.{f.name} is not used"
            )


@dataclasses.dataclass
class A:
    x: int = 1


@dataclasses.dataclass
class B:
    x: int = 2
    y: int = 3


@dataclasses.dataclass
class Both:
    a: A = dataclasses.field(default_factory=A, metadata={"flat": True})
    b: B = dataclasses.field(default_factory=B, metadata={"flat": True})


def test_two_flat_sections_claiming_one_name_fail_when_the_class_is_first_used():
    from specs_rl.config import ConfigError, flat_aliases

    with pytest.raises(ConfigError, match=r"key 'x' is claimed by two flat sections \(a.x and b.x\)"):
        load_config(Both, None, ["y=4"])
    with pytest.raises(ConfigError, match="claimed by two flat sections"):
        flat_aliases(Both)


def test_flat_keys_and_full_paths_are_one_setting(tmp_path):
    from specs_rl.config import ConfigError, flat_aliases, given_keys
    from specs_rl.run import CompareConfig

    aliases = flat_aliases(CompareConfig)
    assert aliases["beta"] == "run.search.beta" and aliases["K"] == "run.tabular.K"
    assert aliases["methods"] == "grid.methods" and aliases["wandb"] == "report.wandb"
    for spelled in ("beta=3", "search.beta=3", "run.search.beta=3"):
        cfg = load_config(CompareConfig, None, [spelled])
        assert cfg.run.search.beta == 3.0 and given_keys(cfg) == {"run.search.beta"}
    # an override replaces the file's value whichever way either is spelled
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  search:\n    beta: 2.0\n  tabular:\n    K: 3\n")
    cfg = load_config(CompareConfig, path, ["beta=5", "K=6"])
    assert (cfg.run.search.beta, cfg.run.tabular.K) == (5.0, 6)
    with pytest.raises(ConfigError, match="unknown config key 'bta'; did you mean 'beta'"):
        load_config(CompareConfig, None, ["bta=1"])


def test_a_resolved_config_loads_back_and_an_old_flat_one_too(tmp_path):
    from specs_rl.config import save_config, to_dict
    from specs_rl.run import CompareConfig

    cfg = load_config(CompareConfig, REPO / "configs" / "eval" / "tabular.yaml", ["beta=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(CompareConfig, tmp_path / "config.yaml", resolved=True)
    assert to_dict(again) == to_dict(cfg)
    # a resolved config of the flat layout of before, with its unused method / seed keys
    old = {k: v for k, v in to_dict(cfg)["run"]["search"].items() if k != "strategy"}
    old.update(method="specs", seed=0, methods=["specs"], n_grid=[2], tabular={"K": 3}, out="x")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    loaded = load_config(CompareConfig, tmp_path / "old.yaml", resolved=True)
    assert loaded.run.search.beta == 3.0 and loaded.run.tabular.K == 3 and loaded.grid.methods == ["specs"]
    assert loaded.run.search.strategy == "specs"


@pytest.mark.parametrize(
    "command", ["search", "compare", "demo", "tune", "serve", "bench", "merge", "theory real"]
)
def test_help_of_every_run_command_shows_each_flat_key_with_its_path(command, capsys):
    from specs_rl import cli

    try:
        rc = cli.main([*command.split(), "--help"])
    except SystemExit as e:  # config_from_argv ends a --help there
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    if command in ("search", "compare", "demo", "tune", "serve"):
        assert "  beta [run.search.beta] (float" in out and "  K [run.tabular.K] (int" in out
        assert "  hf.draft.temperature [run.hf.draft.temperature]" in out
    if command in ("compare", "demo"):
        assert "  methods [grid.methods]" in out and "  wandb [report.wandb]" in out


@pytest.mark.parametrize("group", ["search", "demo", "tune", "eval"])
def test_serve_reads_the_run_of_any_recipes_config(group):
    """``specs-rl serve`` takes a search, compare, demo or tune config: their other keys are skipped, an unknown
    key is still refused."""
    from eval.serve import serve_config
    from specs_rl.config import ConfigError

    for path in sorted((REPO / "configs" / group).glob("*.yaml")):
        assert serve_config(["--config", str(path)]).run.hf.draft.name
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        serve_config(["--config", str(path), "colour=1"])
