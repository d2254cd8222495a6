"""The pure verification functions: properties (hypothesis) and exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from specs_rl.types import Mode
from specs_rl.verify import (
    acceptance_test,
    keep_mask,
    next_mode,
    select,
    select_test_log_probs,
    select_then_test,
    selection_log_probs,
    soft_scores,
)

finite = st.floats(min_value=-50, max_value=50, allow_nan=False)
scores_st = st.lists(finite, min_size=1, max_size=12)
temps = st.floats(min_value=0.05, max_value=10.0)


@given(scores_st, temps, st.data())
def test_selection_probabilities_sum_to_one(scores, temperature, data):
    s = torch.tensor(scores, dtype=torch.float64)
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    if not keep.any():
        keep[data.draw(st.integers(0, len(scores) - 1))] = True
    p = selection_log_probs(s, keep, temperature).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.all(p[~keep] == 0)


@given(scores_st, temps, finite)
def test_adding_a_constant_to_all_scores_changes_nothing(scores, temperature, c):
    s = torch.tensor(scores, dtype=torch.float64)
    a = selection_log_probs(s, temperature=temperature).exp()
    b = selection_log_probs(s + c, temperature=temperature).exp()
    assert torch.allclose(a, b, atol=1e-9)


@given(
    st.lists(st.floats(-30, 0), min_size=1, max_size=10), st.lists(st.floats(0, 1), min_size=10, max_size=10)
)
def test_draft_equal_target_and_beta_zero_is_uniform(logprobs, rewards):
    lp = torch.tensor(logprobs, dtype=torch.float64)
    r = torch.tensor(rewards[: len(logprobs)], dtype=torch.float64)
    for form in ("exact", "mean"):
        n_tok = torch.full_like(lp, 3.0)
        s = soft_scores(lp, lp, r, 0.0, form=form, target_len=n_tok, draft_len=n_tok)
        p = selection_log_probs(s).exp()
        assert torch.allclose(p, torch.full_like(p, 1 / len(logprobs)), atol=1e-12)


def test_score_forms_values():
    lt = torch.tensor([-2.0, -6.0])
    ld = torch.tensor([-3.0, -2.0])
    r = torch.tensor([0.5, 1.0])
    assert soft_scores(lt, ld, r, 2.0).tolist() == [2.0, -2.0]
    lens = torch.tensor([2.0, 4.0])
    assert soft_scores(lt, ld, r, 2.0, form="mean", target_len=lens, draft_len=lens).tolist() == [1.5, 1.0]
    assert soft_scores(lt, ld, r, 2.0, form="reward_only").tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="score form"):
        soft_scores(lt, ld, r, 1.0, form="sum")
    with pytest.raises(ValueError, match="target_len"):
        soft_scores(lt, ld, r, 1.0, form="mean")


def test_rejection_rule_and_infinite_thresholds():
    s = torch.tensor([-1.0, 0.0, 1.0])
    assert keep_mask(s, 0.0).tolist() == [False, False, True]  # score <= tau is dropped
    assert keep_mask(s, -math.inf).all()
    assert not keep_mask(s, math.inf).any()
    # -inf never rejects a candidate of nonzero weight, but a -inf score (target probability 0) has none
    assert keep_mask(torch.tensor([-math.inf, -1e9]), -math.inf).tolist() == [False, True]
    with pytest.raises(ValueError, match="deferred"):
        selection_log_probs(s, keep_mask(s, math.inf))


def test_temperature_zero_is_argmax_first_tie():
    s = torch.tensor([1.0, 3.0, 3.0, 0.0])
    assert selection_log_probs(s, temperature=0).exp().tolist() == [0.0, 1.0, 0.0, 0.0]
    g = torch.Generator().manual_seed(0)
    assert {select(s, g, temperature=0) for _ in range(20)} == {1}
    keep = torch.tensor([True, False, False, True])
    assert select(s, g, keep, temperature=0) == 0


def test_select_matches_softmax_law():
    """Statistical: 40k Gumbel-max draws against softmax(score/T); chi-square p > 1e-3 at a fixed seed."""
    s = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.1], dtype=torch.float64)
    keep = torch.tensor([True, True, True, False, True])
    temperature = 0.7
    g = torch.Generator().manual_seed(1234)
    draws = [select(s, g, keep, temperature) for _ in range(40_000)]
    counts = np.bincount(draws, minlength=5)
    assert counts[3] == 0
    p = selection_log_probs(s, keep, temperature).exp().numpy()
    kept = keep.numpy()
    _, pvalue = stats.chisquare(counts[kept], p[kept] * len(draws))
    assert pvalue > 1e-3


def test_acceptance_test_values():
    s = torch.tensor([-1.0, 0.0, 1.0, -math.inf])
    r = torch.tensor([0.69, 0.7, 0.71, 0.9], dtype=torch.float64)
    kw = dict(tau_reject=0.0, rsd_delta=0.7)
    assert acceptance_test(s, r, on="score", **kw).tolist() == [False, False, True, False]  # GSI: score > tau
    assert acceptance_test(s, r, on="reward", **kw).tolist() == [False, True, True, True]  # RSD: r >= delta
    assert acceptance_test(s, r, on="score", tau_reject=-math.inf, rsd_delta=0.7).tolist() == [True] * 3 + [
        False
    ]
    with pytest.raises(ValueError, match="score or reward"):
        acceptance_test(s, r, on="ratio", **kw)


@given(scores_st, temps, st.data())
def test_select_test_law_is_the_selection_law_times_the_test(scores, temperature, data):
    """P(keep i) = softmax(score/T)_i 1[pass_i] over ALL candidates, P(defer) = the rest: no filter first."""
    s = torch.tensor(scores, dtype=torch.float64)
    passes = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    keep, defer = select_test_log_probs(s, passes, temperature)
    sel = selection_log_probs(s, temperature=temperature).exp()
    assert torch.allclose(keep.exp(), torch.where(passes, sel, 0.0), atol=1e-12)
    assert keep.exp().sum().item() + defer.exp().item() == pytest.approx(1.0, abs=1e-12)
    if passes.all():
        assert defer.item() == -math.inf


def test_select_test_against_filter_then_select():
    """Two drafts, one passing: the filter always keeps the passing one; select-then-test keeps it only when it is
    the chosen one, and defers otherwise. Every draft of weight 0: always deferred."""
    s = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    passes = torch.tensor([False, True])
    keep, defer = select_test_log_probs(s, passes)
    assert keep.exp().tolist() == pytest.approx([0.0, 0.75]) and defer.exp().item() == pytest.approx(0.25)
    assert selection_log_probs(s, keep=passes).exp().tolist() == [0.0, 1.0]
    keep, defer = select_test_log_probs(torch.tensor([-math.inf, -math.inf]), torch.tensor([True, True]))
    assert (keep == -math.inf).all() and defer.item() == 0.0
    g = torch.Generator().manual_seed(0)
    assert select_then_test(torch.tensor([-math.inf, -math.inf]), torch.tensor([True, True]), g) is None


def test_select_then_test_samples_its_law():
    """Statistical: 40k draws of select_then_test against select_test_log_probs (defer as its own cell); chi-square
    p > 1e-3 at a fixed seed."""
    s = torch.tensor([0.3, -1.0, 2.0, -math.inf, 1.1], dtype=torch.float64)
    passes = torch.tensor([True, False, False, True, True])
    temperature = 0.7
    g = torch.Generator().manual_seed(99)
    draws = [select_then_test(s, passes, g, temperature) for _ in range(40_000)]
    counts = np.bincount([5 if d is None else d for d in draws], minlength=6)
    keep, defer = select_test_log_probs(s, passes, temperature)
    law = np.append(keep.exp().numpy(), defer.exp().item())
    assert counts[1] == counts[2] == counts[3] == 0  # failing or weight-0 candidates are never kept
    cells = [0, 4, 5]
    _, pvalue = stats.chisquare(counts[cells], law[cells] * len(draws))
    assert pvalue > 1e-3
    # power: the filter-then-select law of the same scores (never defers here) is far from these counts
    filt = (
        selection_log_probs(s, keep=passes & keep_mask(s, -math.inf), temperature=temperature).exp().numpy()
    )
    assert abs(counts[0] / len(draws) - filt[0]) > 0.05


def test_mode_transition_is_a_pure_function():
    assert next_mode(Mode.DRAFT, best_target_reward=None, tau_switch=0.7) == Mode.DRAFT
    assert next_mode(Mode.TARGET, best_target_reward=0.71, tau_switch=0.7) == Mode.DRAFT
    assert next_mode(Mode.TARGET, best_target_reward=0.7, tau_switch=0.7) == Mode.TARGET  # strictly above
    # tau_switch = -inf (GSI, rsd_bon): every step starts from the draft, whatever the target's rewards
    assert next_mode(Mode.TARGET, best_target_reward=-1e300, tau_switch=-math.inf) == Mode.DRAFT
    with pytest.raises(ValueError):
        next_mode(Mode.TARGET, best_target_reward=None, tau_switch=0.7)


@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1))
def test_select_is_reproducible_with_the_same_generator(seed):
    s = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = [select(s, torch.Generator().manual_seed(seed)) for _ in range(3)]
    b = [select(s, torch.Generator().manual_seed(seed)) for _ in range(3)]
    assert a == b
