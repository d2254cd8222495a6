"""Training data: row adapters and their errors, ProcessBench conversion, the PRM encoding/collator, pairs, metrics.

Fast: no trainer import. The full ProcessBench check runs where $SPECS_RL_PROCESSBENCH names a local copy.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from specs_rl.errors import SpecsError
from specs_rl.training import data, pairs, prm_data
from specs_rl.training.prm import (
    IGNORE_INDEX,
    PRMDataCollator,
    first_error,
    prm_metrics,
    tokenize_row,
)


class CharTokenizer:
    """One id per character (``ord``), BOS 1 when special tokens are asked for; pad id 0."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


# --- stepwise validation ---------------------------------------------------------------------------------------


GOOD = {"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "Q", "completions": ["a", "b"], "labels": [True]}, "2 steps but 1 labels"),
        ({"prompt": "Q", "completions": [], "labels": []}, "empty step list"),
        ({"prompt": "Q", "completions": ["a"]}, "missing column 'labels'"),
        ({"completions": ["a"], "labels": [True]}, "missing column 'prompt'"),
        ({"prompt": "Q", "completions": ["a", "b"], "labels": [True, 1]}, "labels[1] is 1 (int)"),
        ({"prompt": "Q", "completions": ["a", 3], "labels": [True, True]}, "completions[1] must be a string"),
        ({"prompt": 5, "completions": ["a"], "labels": [True]}, "'prompt' must be a string"),
    ],
)
def test_stepwise_errors_name_dataset_row_and_problem(row: dict, message: str) -> None:
    rows = [GOOD, GOOD, row]
    with pytest.raises(SpecsError) as err:
        prm_data.from_stepwise(rows, "mydata")
    text = str(err.value)
    assert text.startswith("dataset 'mydata' row 2: ")
    assert message in text
    assert "\n" not in text


def test_stepwise_passes_good_rows_and_drops_extra_columns() -> None:
    out = prm_data.from_stepwise([{**GOOD, "id": 7}], "d")
    assert out == [{"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}]
    assert prm_data.from_toy_math([GOOD], "toy") == out
    assert prm_data.adapt([GOOD], "auto", "d") == out


# --- ProcessBench adapter --------------------------------------------------------------------------------------


def test_processbench_rows_keep_steps_up_to_the_first_error() -> None:
    rows = [
        {"problem": "P0", "steps": ["s0", "s1", "s2"], "label": -1},
        {"problem": "P1", "steps": ["s0", "s1", "s2", "s3"], "label": 0},
        {"problem": "P2", "steps": ["s0", "s1", "s2", "s3"], "label": 2},
    ]
    out = prm_data.adapt(rows, "auto", "pb")
    assert out[0] == {"prompt": "P0", "completions": ["s0", "s1", "s2"], "labels": [True, True, True]}
    assert out[1] == {"prompt": "P1", "completions": ["s0"], "labels": [False]}
    assert out[2] == {"prompt": "P2", "completions": ["s0", "s1", "s2"], "labels": [True, True, False]}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"problem": "P", "steps": ["a"], "label": 1}, "outside [-1, 0]"),
        ({"problem": "P", "steps": ["a"], "label": True}, "'label' must be an integer"),
        ({"problem": "P", "steps": [], "label": -1}, "empty step list"),
        ({"problem": "P", "steps": ["a"]}, "missing column 'label'"),
    ],
)
def test_processbench_errors(row: dict, message: str) -> None:
    with pytest.raises(SpecsError, match=r"dataset 'pb' row 1: ") as err:
        prm_data.from_processbench([{"problem": "P", "steps": ["a"], "label": -1}, row], "pb")
    assert message in str(err.value)


# Rows, label == -1 rows, total steps of the public release (ProcessBench's GitHub release, 2024-12-10).
README_TOTALS = {
    "gsm8k": (400, 193, 2082),
    "math": (1000, 406, 6505),
    "olympiadbench": (1000, 339, 8819),
    "omnimath": (1000, 241, 8291),
}


@pytest.mark.skipif(
    not os.environ.get(data.PROCESSBENCH_ENV),
    reason=f"${data.PROCESSBENCH_ENV} (a local ProcessBench copy) is unset",
)
def test_all_processbench_rows_convert_with_the_right_label_counts() -> None:
    n_rows = 0
    for split, (rows_expected, all_correct_expected, steps_expected) in README_TOTALS.items():
        raw = data.load_rows(f"processbench:{split}")
        assert len(raw) == rows_expected
        assert sum(r["label"] == -1 for r in raw) == all_correct_expected
        assert sum(len(r["steps"]) for r in raw) == steps_expected
        out = prm_data.adapt(raw, "processbench", split)
        assert len(out) == len(raw)
        expected_labelled = sum(len(r["steps"]) if r["label"] == -1 else r["label"] + 1 for r in raw)
        expected_wrong = sum(r["label"] >= 0 for r in raw)
        correct, wrong = prm_data.label_count(out)
        assert correct + wrong == expected_labelled
        assert wrong == expected_wrong == rows_expected - all_correct_expected
        for r, o in zip(raw, out):  # the wrong step is the last kept one, and it is the labelled index
            assert o["completions"] == (r["steps"] if r["label"] == -1 else r["steps"][: r["label"] + 1])
        n_rows += len(out)
    assert n_rows == 3400


# --- the PRM encoding and collator -----------------------------------------------------------------------------


def test_tokenize_row_labels_exactly_at_separator_ends_char_tokenizer() -> None:
    row = {"prompt": "Q:", "completions": ["a=1", "b=2|"], "labels": [True, False]}
    out = tokenize_row(row, CharTokenizer(), separator="|")
    # ids: [BOS] Q : a = 1 | b = 2 |   (a trailing separator on a step is stripped, then re-added once)
    assert out["input_ids"] == [1, *map(ord, "Q:a=1|b=2|")]
    expected = [IGNORE_INDEX] * 11
    expected[6], expected[10] = 1, 0
    assert out["labels"] == expected

    last = tokenize_row(row, CharTokenizer(), separator="|", train_on_last_step_only=True)
    assert [i for i, y in enumerate(last["labels"]) if y != IGNORE_INDEX] == [10]

    cut = tokenize_row(row, CharTokenizer(), separator="|", max_length=8)
    assert len(cut["input_ids"]) == 8 and [y for y in cut["labels"] if y != IGNORE_INDEX] == [1]


def test_tokenize_row_with_a_bpe_tokenizer_labels_the_last_separator_token() -> None:
    from specs_rl.tiny import make_tokenizer

    tok = make_tokenizer()
    steps = ["Step 1: 7 * 6 = 42.", "Step 2: so x = 4.", "The answer is \\boxed{42}."]
    row = {"prompt": "Compute 7 * 6.", "completions": steps, "labels": [True, True, False]}
    out = tokenize_row(row, tok, separator="\n\n")
    positions = [i for i, y in enumerate(out["labels"]) if y != IGNORE_INDEX]
    assert [out["labels"][i] for i in positions] == [1, 1, 0]
    assert positions[-1] == len(out["input_ids"]) - 1
    for k, pos in enumerate(positions):  # the text up to a label ends with that step and its separator
        text = tok.decode(out["input_ids"][: pos + 1], skip_special_tokens=True)
        assert text.endswith(steps[k] + "\n\n")
        assert not tok.decode(out["input_ids"][:pos], skip_special_tokens=True).endswith("\n\n")


def test_collator_pads_ids_with_pad_labels_with_ignore_index() -> None:
    rows = [
        {"prompt": "Q", "completions": ["ab", "c"], "labels": [False, True]},
        {"prompt": "QQ", "completions": ["abcd"], "labels": [True]},
    ]
    feats = [tokenize_row(r, CharTokenizer(), separator="|") for r in rows]
    batch = PRMDataCollator(pad_token_id=0)(feats)
    assert batch["input_ids"].tolist() == [
        [1, ord("Q"), ord("a"), ord("b"), ord("|"), ord("c"), ord("|"), 0],
        [1, ord("Q"), ord("Q"), ord("a"), ord("b"), ord("c"), ord("d"), ord("|")],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0], [1] * 8]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, m, m, m, 0, m, 1, m], [m, m, m, m, m, m, m, 1]]
    assert PRMDataCollator(0, pad_to_multiple_of=16)(feats)["input_ids"].shape == (2, 16)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_prm_metrics_on_a_hand_computed_example() -> None:
    p = [np.array([0.9, 0.2]), np.array([0.8, 0.4, 0.9]), np.array([0.7, 0.6])]
    y = [np.array([1, 0]), np.array([1, 1, 1]), np.array([1, 0])]
    m = prm_metrics(p, y)
    # steps: predictions ok/ok | ok/wrong/ok | ok/wrong -> 5 of 7 right
    assert m["step_accuracy"] == pytest.approx(5 / 7)
    # erroneous steps: true errors at (0,1), (2,1); predicted errors at (0,1), (1,1)
    assert m["error_precision"] == pytest.approx(0.5)
    assert m["error_recall"] == pytest.approx(0.5)
    assert m["error_f1"] == pytest.approx(0.5)
    # first error: predicted 1, 1, -1 vs true 1, -1, 1 -> only the first solution matches
    assert m["first_error_accuracy"] == pytest.approx(1 / 3)
    assert m["first_error_accuracy_erroneous"] == pytest.approx(0.5)
    assert m["first_error_accuracy_correct"] == 0.0
    assert m["processbench_f1"] == 0.0
    assert first_error(np.array([0.9, 0.49, 0.1])) == 1 and first_error(np.array([0.5])) == -1


# --- ORM pairs ---------------------------------------------------------------------------------------------------


def test_pairs_from_graded_solutions() -> None:
    sols = [
        {"prompt": "A", "completion": "a1", "correct": True},
        {"prompt": "B", "completion": "b1", "correct": True},
        {"prompt": "A", "completion": "a2", "correct": False},
        {"prompt": "A", "completion": "a3", "correct": True},
        {"prompt": "B", "completion": "b2", "correct": True},  # B: no incorrect solution, no pair
        {"prompt": "C", "completion": "c1", "correct": False},
    ]
    got = pairs.build_pairs(pairs.from_graded(sols))
    assert got == [
        {"prompt": "A", "chosen": "a1", "rejected": "a2"},
        {"prompt": "A", "chosen": "a3", "rejected": "a2"},
    ]
    capped = pairs.build_pairs(sols, max_pairs_per_prompt=1, rng=np.random.default_rng(0))
    assert len(capped) == 1 and capped[0]["rejected"] == "a2"
    with pytest.raises(ValueError, match="rng"):
        pairs.build_pairs(sols, max_pairs_per_prompt=1)


def test_graded_row_errors() -> None:
    bad = [
        {"prompt": "A", "completion": "x", "correct": True},
        {"prompt": "A", "completion": "y", "correct": 1},
    ]
    with pytest.raises(SpecsError, match=r"dataset 'g' row 1: 'correct' is 1"):
        pairs.from_graded(bad, "g")
    with pytest.raises(SpecsError, match=r"row 0: missing column 'completion'"):
        pairs.from_graded([{"prompt": "A", "correct": True}], "g")
    pb = pairs.from_processbench([{"problem": "P", "steps": ["s1", "s2"], "final_answer_correct": True}])
    assert pb == [{"prompt": "P", "completion": "s1\n\ns2", "correct": True}]


def test_encode_solution_matches_encode_steps() -> None:
    from specs_rl.prm_format import encode_steps

    tok = CharTokenizer()
    ids = pairs.encode_solution(tok, "Q", "a|b", separator="|")
    assert ids == encode_steps(tok, "Q", ["a", "b"], "|")[0] == [1, *map(ord, "Qa|b|")]
    toy = pairs.toy_graded_rows(5, seed=0)
    assert len(toy) == 10 and [r["correct"] for r in toy] == [True, False] * 5
    assert len(pairs.build_pairs(toy)) == 5


# --- files, splits, tiny specs -----------------------------------------------------------------------------------


def test_read_rows_names_the_bad_line(tmp_path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(SpecsError, match=r"line 2: not valid JSON"):
        data.read_rows(p)
    with pytest.raises(SpecsError, match="file not found"):
        data.resolve_data_path(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SpecsError, match="unknown ProcessBench split"):
        data.resolve_data_path("processbench:nope")


def test_processbench_is_read_from_the_folder_the_environment_names(tmp_path, monkeypatch) -> None:
    rows = [{"problem": "P", "steps": ["a", "b"], "label": 1, "final_answer_correct": False}]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gsm8k.json").write_text(json.dumps(rows * 2))  # the release's JSON array form
    monkeypatch.setenv(data.PROCESSBENCH_ENV, str(tmp_path))
    assert data.load_rows("processbench:math") == rows
    assert data.load_rows("processbench:gsm8k") == rows * 2
    with pytest.raises(SpecsError, match=r"has no omnimath.jsonl or omnimath.json"):
        data.load_rows("processbench:omnimath")


def test_processbench_from_the_hub_offline_is_one_line_naming_the_variable(monkeypatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.delenv(data.PROCESSBENCH_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        SpecsError, match=r"could not load Qwen/ProcessBench split 'math'.*SPECS_RL_PROCESSBENCH"
    ) as e:
        data.load_rows("processbench:math")
    assert "\n" not in str(e.value)


def test_the_packaged_evaluation_sets_are_the_named_data_files() -> None:
    rows = data.load_rows("data:math500_test.jsonl")
    assert len(rows) == 500 and {"problem", "answer", "unique_id"} <= set(rows[0])
    assert len(data.load_rows("data:amc23_test.jsonl")) == 40
    assert len(data.load_rows("data:gsm8k_test.jsonl")) == 1319


def test_split_by_problem_keeps_a_problem_on_one_side_and_is_deterministic() -> None:
    rows = [{"prompt": f"problem {i // 3}", "k": i} for i in range(600)]
    train, held = data.split_by_problem(rows, 0.2, seed=0)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert 0.12 < len(held) / len(rows) < 0.28
    assert data.split_by_problem(rows, 0.2, seed=0) == (train, held)
    assert data.split_by_problem(rows, 0.2, seed=1) != (train, held)


def test_toy_rows_are_valid_and_mixed() -> None:
    rows = prm_data.toy_stepwise_rows(64, seed=0)
    assert prm_data.from_stepwise(rows, "toy") == rows
    correct, wrong = prm_data.label_count(rows)
    assert wrong > 10 and correct > 10
    assert all(r["labels"][:-1] == [True] * (len(r["labels"]) - 1) for r in rows)


def test_tiny_specs() -> None:
    from specs_rl.training.models import check_model_name, parse_tiny

    assert parse_tiny("tiny:qwen2:hidden_size=96,initializer_range=0.3") == (
        "qwen2",
        {"hidden_size": 96, "initializer_range": 0.3},
    )
    with pytest.raises(SpecsError, match="unknown option 'width=3'"):
        parse_tiny("tiny:llama:width=3")
    with pytest.raises(SpecsError, match="arch must be one of"):
        check_model_name("tiny:gpt2")
    with pytest.raises(SpecsError, match="model_name_or_path is required"):
        check_model_name(None)


def test_evaluation_problems_can_be_excluded(tmp_path) -> None:
    evalset = tmp_path / "eval.jsonl"
    evalset.write_text(json.dumps({"problem": "What is  (2 + 3) * 4?", "answer": "20"}) + "\n")
    banned = data.problem_texts([str(evalset)])
    assert data.normalize_problem("what is (2 + 3) * 4?") in banned
    rows = [{"prompt": "What is (2 + 3) * 4?"}, {"prompt": "What is (2 + 3) * 5?"}]
    assert [r for r in rows if data.normalize_problem(r["prompt"]) not in banned] == rows[1:]
    assert "GSM8K test" in data.contamination_warning("processbench:gsm8k", None)
    assert data.contamination_warning("processbench:gsm8k", [str(evalset)]) is None
    assert data.contamination_warning("processbench:omnimath", None) is None
