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
from specs_rl.verify import keep_mask, next_mode, select, selection_log_probs, soft_scores

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


def test_mode_transition_is_a_pure_function():
    assert next_mode(Mode.DRAFT, best_target_reward=None, tau_switch=0.7) == Mode.DRAFT
    assert next_mode(Mode.TARGET, best_target_reward=0.71, tau_switch=0.7) == Mode.DRAFT
    assert next_mode(Mode.TARGET, best_target_reward=0.7, tau_switch=0.7) == Mode.TARGET  # strictly above
    with pytest.raises(ValueError):
        next_mode(Mode.TARGET, best_target_reward=None, tau_switch=0.7)


@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1))
def test_select_is_reproducible_with_the_same_generator(seed):
    s = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = [select(s, torch.Generator().manual_seed(seed)) for _ in range(3)]
    b = [select(s, torch.Generator().manual_seed(seed)) for _ in range(3)]
    assert a == b
