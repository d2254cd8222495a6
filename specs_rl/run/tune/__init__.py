"""Tuning a method's settings on a tune split (``specs-rl tune``), one job per module:

| module | what |
|---|---|
| ``config`` | ``TuneConfig`` (the run, the report, the ``tune:`` section), changing a run's dotted keys |
| ``space`` | the search space (``Param``, ``MethodSpace``), the plan of a study checked before anything loads |
| ``trials`` | a trial: tasks per backend value, rungs over growing problem prefixes, the stopping rule |
| ``study`` | the Optuna study (imports optuna): the store, the trial loop, resume after a kill |
| ``choose`` | the Pareto front and the rules that choose a setting |
| ``retest`` | the held-out set (never the tune problems) and the compare configs that re-run the choice on it |
| ``report`` | the front as a table and the plot (through :mod:`specs_rl.run.report`'s plotting code) |

Only ``study`` imports optuna.

**Space.** ``tune.methods.<preset>.<param>`` is ``{low, high, log, step}`` or ``{choices: [...]}``; a param is a
:class:`~specs_rl.settings.SearchConfig` key (``n``, ``beta``, ``tau_reject``, ...) or a key of the run's backend
section (``hf.draft.temperature``). A tuned search key becomes the method's own setting (as
``method_settings.<preset>`` in a compare config); a tuned backend key needs the task built for its value
(:class:`~specs_rl.run.tune.trials.TaskCache`).

**Rungs.** A trial searches the first ``rungs[0]`` problems, then the first ``rungs[1]``, ..., then all of them,
and stops early when another trial of its method beats it at a rung (:mod:`specs_rl.run.tune.trials`).

**Choice.** On each method's completed trials (the whole tune set): ``max_accuracy_under_latency`` (the highest
accuracy with mean latency <= ``latency_s``) or ``min_latency_within`` (the lowest mean latency with accuracy >= the
reference's - ``points``), :func:`~specs_rl.run.tune.choose.choose`.
"""

from specs_rl.run.tune.choose import choose, front, rule_text
from specs_rl.run.tune.config import (
    RULES,
    SAMPLERS,
    TUNE_PRESENTATION_KEYS,
    ChoiceRule,
    ReferenceSpec,
    RetestConfig,
    TuneConfig,
    TuneSection,
    get_path,
    with_values,
)
from specs_rl.run.tune.report import format_front, params_text, plot_front
from specs_rl.run.tune.retest import check_test_ids, check_test_set, heldout_run, retest_configs
from specs_rl.run.tune.space import (
    SPEC_KEYS,
    MethodSpace,
    Param,
    StudyPlan,
    check_rungs,
    parse_param,
    plan_study,
    trial_run,
    trial_seed,
)

__all__ = [
    "RULES",
    "SAMPLERS",
    "SPEC_KEYS",
    "TUNE_PRESENTATION_KEYS",
    "ChoiceRule",
    "MethodSpace",
    "Param",
    "ReferenceSpec",
    "RetestConfig",
    "StudyPlan",
    "TuneConfig",
    "TuneSection",
    "check_rungs",
    "check_test_ids",
    "check_test_set",
    "choose",
    "format_front",
    "front",
    "get_path",
    "heldout_run",
    "params_text",
    "parse_param",
    "plan_study",
    "plot_front",
    "retest_configs",
    "rule_text",
    "trial_run",
    "trial_seed",
    "with_values",
]
