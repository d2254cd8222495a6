"""Benchmark loading: the packaged copies, bad rows (one-line errors naming the line), slices and shards."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs_rl.datasets import PAPER_PROMPT, DataConfig, load_problems, select_positions
from specs_rl.errors import SpecsError

from .conftest import DATA


def test_known_datasets_load_with_their_columns():
    m = load_problems(DataConfig(dataset="math500"))
    assert len(m) == 500 and len({p.id for p in m}) == 500
    assert m[0].id == "test/precalculus/807.json" and m[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert m[0].prompt.endswith("\n\n" + PAPER_PROMPT) and m[0].prompt.startswith(m[0].meta["problem"])
    a = load_problems(DataConfig(dataset="amc23"))
    assert len(a) == 40 and a[0].answer == "27"  # 27.0 in the file
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in a)
    g = load_problems(DataConfig(dataset="gsm8k"))
    assert len(g) == 1319 and g[0].answer == "18" and g[2].answer == "70000"
    # every '#### n' parsed to its number: checked against the raw rows, read here independently of the loader
    raw = [json.loads(line)["answer"] for line in (DATA / "gsm8k_test.jsonl").open()]
    finals = [r.rsplit("####", 1)[1].strip().replace(",", "") for r in raw]
    assert [float(p.answer) for p in g] == [float(x) for x in finals]
    assert sum("," in r.rsplit("####", 1)[1] for r in raw) > 0  # the file does have thousands separators
    assert all("," not in p.answer and "####" not in p.answer for p in g)
    # a known hub id reads the verified offline copy of its test split
    hub = load_problems(DataConfig(dataset="HuggingFaceH4/MATH-500", limit=3))
    assert [p.id for p in hub] == [p.id for p in m[:3]]
    custom = load_problems(DataConfig(dataset="math500", prompt_template="Q: {problem}\nA:", limit=1))
    assert custom[0].prompt == f"Q: {m[0].meta['problem']}\nA:"


def test_slices_and_shards_partition_the_slice():
    base = DataConfig(dataset="math500", start=10, limit=37)
    ids = [p.id for p in load_problems(base)]
    full = [p.id for p in load_problems(DataConfig(dataset="math500"))]
    assert ids == full[10:47]
    for k in (1, 2, 3, 5):
        shards = [
            [p.id for p in load_problems(DataConfig(dataset="math500", start=10, limit=37, shard=f"{i}/{k}"))]
            for i in range(k)
        ]
        assert sorted(x for s in shards for x in s) == sorted(ids)  # a partition: nothing lost, nothing twice
        assert sum(map(len, shards)) == len(ids)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert all(s == [x for x in ids if x in set(s)] for s in shards)  # order kept


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 60), start=st.integers(0, 70), limit=st.none() | st.integers(1, 70), k=st.integers(1, 7)
)
def test_select_positions_partition(n, start, limit, k):
    whole = select_positions(n, start, limit)
    assert whole == list(range(min(start, n), n if limit is None else min(n, start + limit)))
    parts = [select_positions(n, start, limit, f"{i}/{k}") for i in range(k)]
    assert sorted(x for p in parts for x in p) == whole


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"problem": "1+1?", "answer": "2"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"problem": "1+1?", "answer": ', "line 3 is not valid JSON"),
        ("[1, 2]", "line 3 is not a JSON object"),
        ({"problem": "1+1?"}, "line 3 has no column 'answer'"),
        ({"question": "1+1?", "answer": "2"}, "line 3 has no column 'problem'"),
        ({"problem": "   ", "answer": "2"}, "line 3 has an empty problem"),
        ({"problem": 7, "answer": "2"}, "line 3 has an empty problem"),
        ({"problem": "1+1?", "answer": None}, "line 3 has no gold answer"),
        ({"problem": "1+1?", "answer": ""}, "line 3 has no gold answer"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, bad, message):
    path = _write(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(SpecsError) as err:
        load_problems(DataConfig(dataset=str(path)))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_gold_duplicate_ids_and_empty_slices(tmp_path):
    gsm = _write(
        tmp_path, [{"question": "q", "answer": "so 4\n#### 4"}, {"question": "q2", "answer": "no marker"}]
    )
    with pytest.raises(
        SpecsError, match=r"line 2: bad gold answer in column 'answer' \(no '#### <answer>' line\)"
    ):
        load_problems(DataConfig(dataset="gsm8k", path=str(gsm)))
    assert load_problems(DataConfig(dataset="gsm8k", path=str(gsm), limit=1))[0].answer == "4"
    dup = _write(tmp_path, [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}])
    with pytest.raises(SpecsError, match="id 'a' appears twice \\(line 1 and line 3\\)"):
        load_problems(DataConfig(dataset=str(dup), id_column="id"))
    ok = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(SpecsError, match="the slice is empty"):
        load_problems(DataConfig(dataset=str(ok), start=5))
    with pytest.raises(SpecsError, match="the slice is empty"):
        load_problems(DataConfig(dataset=str(ok), shard="2/3"))
    with pytest.raises(SpecsError, match="shard must look like i/k"):
        load_problems(DataConfig(dataset=str(ok), shard="3/3"))
    with pytest.raises(SpecsError, match="dataset file not found"):
        load_problems(DataConfig(dataset=str(tmp_path / "missing.jsonl")))
    with pytest.raises(SpecsError, match="data.limit must be >= 1"):
        load_problems(DataConfig(dataset=str(ok), limit=0))
    # a row without the columns outside the slice does not matter; ids default to the row position
    mixed = _write(tmp_path, [GOOD, {"x": 1}, GOOD])
    assert [p.id for p in load_problems(DataConfig(dataset=str(mixed), shard="0/2"))] == ["0", "2"]


def test_hub_datasets_map_subset_split_and_columns(monkeypatch):
    """OlympiadBench by hub id (no network: load_dataset is replaced by a fake that records its call)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [
            {"id": 1606, "question": "Find $x$.", "final_answer": ["$\\frac{1}{2}$"]},
            {"id": 1607, "question": "Find all $n$.", "final_answer": ["$1$", "$2$"]},
            {"id": 1608, "question": "Find $y$.", "final_answer": []},
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ps = load_problems(DataConfig(dataset="olympiadbench", limit=2))
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")]
    assert [(p.id, p.answer, p.meta["problem"]) for p in ps] == [
        ("1606", "\\frac{1}{2}", "Find $x$."),
        ("1607", "1, 2", "Find all $n$."),
    ]
    with pytest.raises(
        SpecsError, match="row 2: bad gold answer in column 'final_answer' \\(empty answer list\\)"
    ):
        load_problems(DataConfig(dataset="olympiadbench"))
    load_problems(
        DataConfig(
            dataset="some/other",
            subset="main",
            split="validation",
            limit=1,
            answer_column="final_answer",
            problem_column="question",
        )
    )
    assert calls[-1] == ("some/other", "main", "validation")

    def failing(*args, **kwargs):
        raise ConnectionError("offline\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(
        SpecsError,
        match=r"could not load dataset 'Hothan/OlympiadBench' subset 'OE_TO_maths_en_COMP' split 'train': offline$",
    ):
        load_problems(DataConfig(dataset="olympiadbench"))
