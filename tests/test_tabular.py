"""The tabular world: schema validation, soft values, the backend's exact probabilities."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from specs_rl.tabular import TabularBackend
from specs_rl.tree import TreeError, load_tree, random_tree, tree_from_json
from specs_rl.types import Problem, Trace


def small_tree_json():
    return {
        "alphabet": ["a", "b"],
        "horizon": 2,
        "target": {"": [0.5, 0.5], "a": [0.9, 0.1], "b": [0.2, 0.8]},
        "draft": {"": [0.7, 0.3], "a": [0.5, 0.5], "b": [0.5, 0.5]},
        "reward": {"a.a": 0.1, "a.b": 0.9, "b.a": 0.4, "b.b": 0.6},
    }


def test_json_roundtrip(tmp_path):
    tree = tree_from_json(small_tree_json())
    p = tmp_path / "t.json"
    tree.save(p)
    again = load_tree(p)
    assert again.to_json() == tree.to_json()
    assert again.sequences() == ["a.a", "a.b", "b.a", "b.b"]
    assert again.target[1].tolist() == [[0.9, 0.1], [0.2, 0.8]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["target"].__setitem__("a", [0.5, 0.4]), "sums to 0.9"),
        (lambda d: d["draft"].pop("b"), "draft misses prefix 'b'"),
        (lambda d: d["reward"].pop("b.b"), "reward misses 'b.b'"),
        (lambda d: d["reward"].__setitem__("a.a", 1.5), r"in \[0, 1\]"),
        (lambda d: d.pop("horizon"), "missing key 'horizon'"),
        (lambda d: d.__setitem__("horizn", 2), "unknown key"),
        (lambda d: d["target"].__setitem__("a", [0.5, 0.25, 0.25]), "list of 2 probabilities"),
        (lambda d: d["draft"].__setitem__("a", [1.0, 0.0]), "draft gives probability 0"),
        (lambda d: d["target"].__setitem__("a.b", [0.5, 0.5]), "not prefixes shorter than the horizon"),
    ],
)
def test_bad_trees_are_rejected_with_one_line(mutate, message):
    d = small_tree_json()
    mutate(d)
    with pytest.raises(TreeError, match=message) as e:
        tree_from_json(d, source="t.json")
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(TreeError, match="not found"):
        load_tree(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TreeError, match="not valid JSON"):
        load_tree(bad)


def test_soft_values_match_brute_force():
    tree = random_tree(3, 3, seed=5)
    beta = 2.0
    V = tree.soft_values(beta)
    for h in range(4):
        for prefix in tree.prefixes(h):
            total = 0.0
            for rest in itertools.product(range(3), repeat=3 - h):
                seq, p = prefix, 1.0
                for a in rest:
                    p *= tree.target[len(seq)][tree.index(seq)][a]
                    seq = (*seq, a)
                total += p * math.exp(beta * tree.reward[tree.index(seq)])
            assert V[h][tree.index(prefix)] == pytest.approx(math.log(total) / beta, rel=1e-10)
    # beta -> 0 is the expectation; values stay in [0, 1]
    V0 = tree.soft_values(0.0)
    assert V0[0][0] == pytest.approx(tree.soft_values(1e-7)[0][0], abs=1e-6)
    assert all(((v >= 0) & (v <= 1)).all() for v in V)


def test_random_tree_is_seeded_and_covers_the_target():
    a, b = random_tree(4, 3, seed=1), random_tree(4, 3, seed=1)
    assert json.dumps(a.to_json()) == json.dumps(b.to_json())
    assert json.dumps(a.to_json()) != json.dumps(random_tree(4, 3, seed=2).to_json())
    for d in a.draft:
        assert (d >= 0.3 / 4 - 1e-12).all()  # coverage 0.3 mixes in the uniform law
        assert np.allclose(d.sum(axis=1), 1)
    with pytest.raises(TreeError, match="coverage"):
        random_tree(3, 2, coverage=0.0)


def test_backend_probabilities_are_exact():
    tree = tree_from_json(small_tree_json())
    backend = TabularBackend({"t": tree}, beta=1.0)
    parts = backend.parts()
    trace = Trace(Problem("0", "", meta={"tree": "t"}))
    cands = parts.drafter.propose([trace], 4, torch.Generator().manual_seed(0))[0]
    for c in cands:
        assert c.logprobs == (math.log(tree.draft[0][0][c.token_ids[0]]),)
        assert not c.finished
    scored = parts.scorer.score([trace], [cands])[0]
    assert [s[0] for s in scored] == [math.log(0.5)] * 4
    rewards = parts.prm.score([trace], [cands])[0]
    V = tree.soft_values(1.0)
    assert rewards == [V[1][c.token_ids[0]] for c in cands]
    full = parts.target.propose([trace], 3, torch.Generator().manual_seed(0), to_end=True)[0]
    assert all(c.finished and c.num_tokens == 2 for c in full)
    assert parts.answer_of(trace.extend(full[0])) == full[0].text
    assert backend.clock.now() > 0  # every call charged simulated time


def test_step_frequencies_match_the_tree():
    tree = tree_from_json(small_tree_json())
    parts = TabularBackend({"t": tree}).parts()
    trace = Trace(Problem("0", "", meta={"tree": "t"})).extend(
        parts.target.propose(
            [Trace(Problem("0", "", meta={"tree": "t"}))], 1, torch.Generator().manual_seed(3)
        )[0][0]
    )
    cands = parts.drafter.propose([trace], 20_000, torch.Generator().manual_seed(0))[0]
    freq = sum(c.token_ids[0] == 0 for c in cands) / len(cands)
    assert freq == pytest.approx(0.5, abs=0.015)  # draft rows after 'a' and 'b' are both [0.5, 0.5]
