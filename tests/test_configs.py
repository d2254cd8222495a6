"""Every YAML under configs/ loads with the config class of the recipe that runs it, and says how to run it."""

from __future__ import annotations

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
