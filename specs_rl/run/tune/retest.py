"""The held-out set: the run of ``tune.test.set`` (never the tune problems: :func:`check_test_set`,
:func:`check_test_ids`) and the ``specs-rl compare`` configs that re-run the choice on it."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specs_rl.config import (
    ConfigError,
    full_key,
    given_keys,
    to_dict,
    typed_fields,
    user_key,
)
from specs_rl.errors import SpecsError
from specs_rl.methods import uses_n
from specs_rl.run.backends import BACKENDS
from specs_rl.run.config import RunConfig
from specs_rl.run.grid import CompareConfig
from specs_rl.run.tune.config import TuneConfig, _replace_path, get_path


def heldout_run(cfg: TuneConfig) -> RunConfig:
    """The run of the held-out problems: the tune run with ``tune.test.set``'s keys applied (typed as the run's)."""
    run = cfg.run
    for key, value in sorted(cfg.tune.test.set.items()):
        path = full_key(RunConfig, key).split(".")
        *parents, leaf = path
        try:
            owner = type(get_path(run, parents))
            typed = typed_fields(owner, {leaf: value}, f"tune.test.set.{'.'.join(parents + [''])}")[leaf]
        except (AttributeError, TypeError):
            raise ConfigError(f"tune.test.set.{key}: not a key of the run") from None
        run = _replace_path(run, path, typed)
    return run


def _span(start: int, count: int | None) -> tuple[int, float]:
    return start, math.inf if count is None else start + count


def check_test_set(cfg: TuneConfig) -> None:
    """Tuning never sees its test set: ``tune.test.set`` must not give the tune problems again. Refused in one line,
    before anything is loaded: on a random tabular world, tree seeds shared by the two sets (or one tree file for
    both); on a dataset, the same source and split with overlapping slices. (:func:`check_test_ids` compares the
    problem ids once the tune problems are loaded.)"""
    tune, test = cfg.run, heldout_run(cfg)
    where = f"tune.test.set={cfg.tune.test.set}"
    if tune.backend != test.backend:
        return
    if not BACKENDS[tune.backend].uses_data:
        a, b = tune.tabular, test.tabular
        if a.tree is not None or b.tree is not None:
            if a.tree == b.tree:
                raise ConfigError(f"{where} overlaps the tune problems: both search the tree file {a.tree}")
            return
        lo, hi = max(a.tree_seed, b.tree_seed), min(a.tree_seed + a.problems, b.tree_seed + b.problems)
        if lo < hi:
            raise ConfigError(
                f"{where} overlaps the tune problems: tree seeds {lo}..{hi - 1} are in both (tune: "
                f"{a.tree_seed}..{a.tree_seed + a.problems - 1}, test: {b.tree_seed}..{b.tree_seed + b.problems - 1}); "
                "move tabular.tree_seed past the tune trees"
            )
        return
    a, b = tune.data, test.data
    source = ("dataset", "path", "subset", "split", "toymath")
    if all(getattr(a, k) == getattr(b, k) for k in source):
        (s1, e1), (s2, e2) = _span(a.start, a.limit), _span(b.start, b.limit)
        if max(s1, s2) < min(e1, e2):
            raise ConfigError(
                f"{where} overlaps the tune problems: the same {a.dataset} split {a.split!r} with overlapping "
                f"slices (tune: start {a.start}, limit {a.limit}; test: start {b.start}, limit {b.limit}); use "
                "another split or a disjoint slice"
            )


def check_test_ids(cfg: TuneConfig, tune_ids: Sequence[str]) -> None:
    """The held-out problems of a dataset share no problem id with the tune problems (read once the tune task is
    built, before any trial; ids that are only row positions say nothing across splits and are not compared)."""
    from specs_rl.datasets import load_problems

    test = heldout_run(cfg)
    if not BACKENDS[test.backend].uses_data:
        return
    try:
        problems = load_problems(test.data)
    except SpecsError as e:
        raise ConfigError(f"tune.test.set: the held-out problems do not load ({e})") from None
    named = {p.id for p in problems if p.id != str(p.meta.get("row"))}
    shared = sorted(named & set(tune_ids))
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise ConfigError(
            f"tune.test.set={cfg.tune.test.set} overlaps the tune problems: problem ids {', '.join(shared[:3])}{more} "
            "are in both"
        )


def _set_dotted(d: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested ``d`` with dotted keys (``data.split``) set."""
    d = copy.deepcopy(d)
    for key, value in dotted.items():
        node = d
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"tune.test.set.{key}: {'.'.join(parents[: i + 1])} is a setting, not a section"
                )
        node[leaf] = value
    return d


def retest_configs(
    cfg: TuneConfig, plan: Any, chosen: dict[str, tuple[dict[str, Any], dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The compare configs that re-run the choice on the held-out set (``tune.test.set``) of ``plan`` (a
    :class:`~specs_rl.run.tune.space.StudyPlan`, which imports this module, hence no annotation), as
    ``{"config": dict, "tuned": [chosen methods it runs], "fixed": [reference and baselines it runs]}``.

    ``chosen``: ``{method: (params, own settings)}``. Methods whose chosen backend values differ from the first
    method's go to a config of their own (a compare run has one backend section and one setting per method); the
    reference and the baselines join the first method's. Each n-using method runs at every n its config's
    ``n_grid`` holds (compare's grid): the union of the chosen n's, the reference's and the baselines'. Checked by
    loading each as a compare config."""
    # written in the layout users type (flat keys), as the committed compare configs are
    run, report = to_dict(cfg.run), to_dict(cfg.report)
    base: dict[str, Any] = {k: run["search"][k] for k in sorted(given_keys(cfg, "run.search") - {"n"})}
    base["backend"] = cfg.run.backend
    base[cfg.run.backend] = run[cfg.run.backend]
    if BACKENDS[cfg.run.backend].uses_data:
        base["data"] = run["data"]
    base["batch_size"] = run["batch_size"]
    for k in ("wandb", "project", "plot", "progress"):
        base[k] = report[k]
    if "report.wandb_dir" in given_keys(cfg):
        base["wandb_dir"] = report["wandb_dir"]
    base["warmup"] = cfg.warmup
    base["order"] = "problem"

    groups: list[dict[str, Any]] = []  # {"values": {...}, "methods": {name: own}, "n": set, "tuned", "fixed"}

    def add(
        method: str, n: int | None, own: dict[str, Any], values: dict[str, Any] | None, role: str
    ) -> None:
        for g in groups:
            if (values is None or g["values"] == values) and g["methods"].get(method, own) == own:
                break
        else:
            g = {"values": values or {}, "methods": {}, "n": set(), "tuned": [], "fixed": []}
            groups.append(g)
        g["methods"][method] = own
        g[role].append(method)
        if n is not None:
            g["n"].add(n)

    for space in plan.spaces:
        if space.method in chosen:
            params, own = chosen[space.method]
            n = params.get("n", cfg.run.search.n) if uses_n(space.method) else None
            values = {k: v for k, v in params.items() if "." in k and get_path(cfg.run, k.split(".")) != v}
            add(space.method, n, own, values, "tuned")
    for run in (*([plan.reference] if plan.reference else []), *plan.baselines):
        add(run.method, run.n, dict(run.settings), None, "fixed")

    out = []
    for i, g in enumerate(groups):
        d = _set_dotted(dict(base), g["values"])
        d = _set_dotted(d, {user_key(CompareConfig, k): v for k, v in cfg.tune.test.set.items()})
        d["methods"] = list(g["methods"])
        d["n_grid"] = sorted(g["n"]) or [cfg.run.search.n]
        d["seeds"] = list(cfg.tune.test.seeds)
        settings = {m: own for m, own in g["methods"].items() if own}
        if settings:
            d["method_settings"] = settings
        d["out"] = str(Path(cfg.run.out) / ("test" if i == 0 else f"test-{i}"))
        _check_compare(d)
        out.append({"config": d, "tuned": g["tuned"], "fixed": g["fixed"]})
    return out


def _check_compare(d: dict[str, Any]) -> None:
    """Load ``d`` as a compare config (unknown keys, types, a bad grid: a ConfigError naming tune.test)."""
    import tempfile

    import yaml

    from specs_rl.config import load_config
    from specs_rl.run.grid import CompareConfig, plan_runs

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=True) as fh:
        yaml.safe_dump(d, fh)
        fh.flush()
        try:
            plan_runs(load_config(CompareConfig, fh.name))
        except ConfigError as e:
            raise ConfigError(f"tune.test: the re-run's compare config is refused: {e}") from None
