"""A problem's random draws depend on the run seed and the problem alone: one generator per problem, at any batch
size, on every backend. Batched and one-at-a-time searches, shards merged and resumed runs write the same records
(latencies aside: a batched call's time is charged to every problem in it)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import eval.compare as compare
import eval.merge as merge
from specs_rl.interfaces import Task, generator_list, prefix_seeds
from specs_rl.run.grid import search_task
from specs_rl.run.records import problem_seed
from specs_rl.search import STRATEGIES, SearchConfig, run_search
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Problem, SearchResult, Trace

from .conftest import REPO

TAB = str(REPO / "configs" / "eval" / "tabular.yaml")
QUIET = ["wandb=false", "plot=false", "progress=false"]
# Every preset of the tabular config but the matched random switch, whose fraction is measured over the run's
# problems (a shard measures it over its own): the shard test leaves it out, the others add it.
METHODS = "specs,specs_paper,gsi,beam_search_target,beam_search_draft,dvts,best_of_n,rsd,rsd_bon,target_only"
METHODS += ",draft_only,specs_no_target,specs_no_deferral"
SMALL = ["tabular.problems=8", "n_grid=[2,4]", "seeds=[42,43]", *QUIET]
ALL = [*SMALL, f"methods=[{METHODS},specs_random_switch]"]


def gens(problems, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(problem_seed(seed, p.id)) for p in problems]


# ------------------------------------------------------------------------------------------------------------------
# the strategies on the tabular backend: batched = alone, draw for draw


def mixed_world(problems: int = 7) -> tuple[list[Problem], TabularBackend]:
    """Trees of horizons 1 to 4 in one batch, so problems finish at different steps."""
    trees = {
        str(i): random_tree(3, 1 + i % 4, seed=100 + i, concentration=0.5, draft_noise=1.0)
        for i in range(problems)
    }
    return [Problem(str(i), "", meta={"tree": str(i)}) for i in range(problems)], TabularBackend(
        trees, beta=2.0
    )


def outcome(r: SearchResult) -> tuple:
    """What a search decided (no latency): answer, kept steps with their scores and choices, extra answers."""
    return (
        r.answer,
        [s.as_record() for s in r.steps],
        r.final_reward if not math.isnan(r.final_reward) else None,
        json.dumps(r.extra, sort_keys=True, default=str),
    )


CONFIGS = {
    "specs": dict(strategy="specs", n=3, tau_reject=-1.0, tau_switch=0.6, start_mode="draft"),
    "specs_soft_target": dict(strategy="specs", n=3, tau_reject=-0.5, target_select="soft", temperature=0.3),
    "specs_random_switch": dict(strategy="specs", n=3, tau_reject=-1.0, random_switch=0.4),
    "specs_reject_all": dict(strategy="specs", n=2, tau_reject=math.inf, target_select="soft"),
    "gsi": dict(
        strategy="specs",
        n=3,
        acceptance="select_test",
        tau_reject=-0.5,
        target_select="soft",
        start_mode="draft",
        tau_switch=-math.inf,
    ),
    "rsd": dict(strategy="rsd", rsd_delta=0.6),
    "beam_search": dict(strategy="beam_search", n=4, beam_width=2, sampler="draft"),
    "dvts": dict(strategy="dvts", n=4, beam_width=2),
    "best_of_n": dict(strategy="best_of_n", n=4, bon_vote="majority", aggregate="min"),
    "target_only": dict(strategy="target_only"),
    "draft_only": dict(strategy="draft_only"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_batched_search_equals_each_problem_searched_alone(name):
    """Each problem's result and the state its generator is left in are those of the problem searched alone: no
    draw is made on a problem's generator in a batch that it would not make alone (problems that finish early,
    deferrals, finished beams, votes, random switches)."""
    assert set(STRATEGIES) >= {c["strategy"] for c in CONFIGS.values()}
    problems, backend = mixed_world()
    cfg = SearchConfig(beta=2.0, max_steps=5, **CONFIGS[name])
    batch_gens = gens(problems)
    batched = run_search(problems, cfg, backend.parts(), batch_gens)
    for p, g, res in zip(problems, batch_gens, batched):
        (alone_g,) = gens([p])
        (alone,) = run_search([p], cfg, backend.parts(), [alone_g])
        assert outcome(res) == outcome(alone), p.id
        assert torch.equal(g.get_state(), alone_g.get_state()), f"problem {p.id}: another number of draws"


def test_one_shared_generator_is_still_accepted():
    """A single generator serves every problem as one stream (the old call shape: theory and benches use it)."""
    problems, backend = mixed_world(3)
    cfg = SearchConfig(beta=2.0, max_steps=5, n=3, tau_reject=-1.0)
    a = run_search(problems, cfg, backend.parts(), torch.Generator().manual_seed(5))
    b = run_search(problems, cfg, backend.parts(), torch.Generator().manual_seed(5))
    assert [outcome(r) for r in a] == [outcome(r) for r in b] and len(a) == 3


def test_generator_lists_must_match_the_items():
    g = torch.Generator().manual_seed(0)
    assert generator_list(g, 3) == [g, g, g]
    with pytest.raises(ValueError, match=r"one generator per item \(3 items\), got 2"):
        generator_list([g, g], 3)
    problems, backend = mixed_world(3)
    with pytest.raises(ValueError, match="one generator per item"):
        run_search(problems, SearchConfig(strategy="target_only"), backend.parts(), gens(problems[:2]))


def test_prefix_seeds_draw_once_per_generator_and_count_repeats_per_generator():
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    seeds = prefix_seeds([a, b, a, b, a], [(1,), (1,), (1,), (2,), (2,)])
    ref_a = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1)))
    ref_b = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(2)))
    assert seeds == [(ref_a, 0), (ref_b, 0), (ref_a, 1), (ref_b, 0), (ref_a, 0)]
    # one draw each, whatever the number of prefixes: the next draw is each generator's second
    assert int(torch.randint(0, 2**62, (1,), generator=a)) == _second_draw(1)
    assert int(torch.randint(0, 2**62, (1,), generator=b)) == _second_draw(2)


def _second_draw(seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, 2**62, (1,), generator=g)
    return int(torch.randint(0, 2**62, (1,), generator=g))


# ------------------------------------------------------------------------------------------------------------------
# the Hugging Face backend (tiny random models)


@pytest.fixture(scope="module")
def hf_parts():
    from specs_rl.hf import tiny_parts

    return tiny_parts(seed=4, max_step_tokens=6, max_tokens=30)


HF_PROBLEMS = [
    Problem("a", "What is 2 + 3?"),
    Problem("b", "Compute 7 * 6, then explain every step carefully."),
    Problem("c", "What is 2 + 3?"),  # the same prompt as a: the same prefixes, another problem
]


def test_hf_sampler_draws_each_prefix_from_its_own_generator(hf_parts):
    """A batched call with one generator per prefix equals single-prefix calls with those generators, also for two
    problems with the same prompt, and leaves each generator where a single call leaves it."""
    traces = [Trace(p) for p in HF_PROBLEMS]
    batch_gens = gens(HF_PROBLEMS, seed=3)
    both = hf_parts.drafter.propose(traces, 3, batch_gens)
    for t, g, row in zip(traces, batch_gens, both):
        (alone_g,) = gens([t.problem], seed=3)
        (single,) = hf_parts.drafter.propose([t], 3, [alone_g])
        assert [c.token_ids for c in row] == [c.token_ids for c in single]
        assert torch.equal(g.get_state(), alone_g.get_state())
    assert [c.token_ids for c in both[0]] != [c.token_ids for c in both[2]]  # a and c: their own seeds


HF_CONFIGS = {
    "specs": dict(strategy="specs", n=3, tau_reject=-6.0, tau_switch=0.5, concurrent_scoring=True),
    "specs_random_switch": dict(strategy="specs", n=2, tau_reject=-6.0, random_switch=0.5),
    "beam_search": dict(strategy="beam_search", n=4, beam_width=2),
    "best_of_n": dict(strategy="best_of_n", n=3, bon_vote="majority"),
    "rsd": dict(strategy="rsd", rsd_delta=0.5),
}


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_hf_search_at_batch_size_3_equals_batch_size_1(hf_parts, name):
    """The tiny HF backend through ``search_task``: the same answers, texts and steps at batch_size 1 and 3 (scores
    to float rounding: a batched forward may round differently)."""
    task = Task("tiny", HF_PROBLEMS, hf_parts, lambda r: {"correct": None})
    cfg = SearchConfig(max_steps=3, **HF_CONFIGS[name])
    one, three = (search_task(task, cfg, 7, batch_size=b) for b in (1, 3))
    assert [r["id"] for r in one] == [r["id"] for r in three] == ["a", "b", "c"]
    for r, s in zip(one, three):
        assert (r["answer"], r["text"]) == (s["answer"], s["text"])
        assert [(x["text"], x["source"], x["deferred"], x["chosen"]) for x in r["steps"]] == [
            (x["text"], x["source"], x["deferred"], x["chosen"]) for x in s["steps"]
        ]
        for x, y in zip(r["steps"], s["steps"]):
            assert x["scores"] == pytest.approx(y["scores"], abs=1e-4)
    assert one[0]["text"] != one[2]["text"] or name == "best_of_n"  # same prompt, own draws


# ------------------------------------------------------------------------------------------------------------------
# the run layer: batch size, shards, resume


def _records(out: Path) -> dict[tuple, dict]:
    """A run's records by (method, n, seed, id), without latencies (batch-dependent by design)."""
    out_recs = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("latency_s")
        key = (r["method"], r["n"], r["seed"], r["id"])
        assert key not in out_recs
        out_recs[key] = r
    return out_recs


@pytest.fixture(scope="module")
def tab_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    for b in (1, 3):
        assert compare.main(["--config", TAB, f"out={root / f'b{b}'}", *ALL, f"batch_size={b}"]) == 0
    return root


def test_tabular_compare_at_batch_size_3_writes_the_records_of_batch_size_1(tab_runs):
    one, three = _records(tab_runs / "b1"), _records(tab_runs / "b3")
    assert (
        len(one) == 8 * 2 * (11 * 2 + 3) and one == three
    )  # 8 problems x 2 seeds x (11 methods x 2 n + 3 n-free)


def test_two_shards_at_batch_size_3_merge_into_the_unsharded_run(tab_runs, tmp_path):
    shard_args = ["--config", TAB, *SMALL, f"methods=[{METHODS}]", "batch_size=3"]
    for i in range(2):
        assert compare.main([*shard_args, f"out={tmp_path / f's{i}'}", f"data.shard={i}/2"]) == 0
    assert (
        merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), f"out={tmp_path / 'merged'}", "wandb=false"])
        == 0
    )
    merged = _records(tmp_path / "merged")
    full = {k: r for k, r in _records(tab_runs / "b3").items() if k[0] != "specs_random_switch"}
    assert len(merged) == 8 * 2 * (10 * 2 + 3) and merged == full


def test_a_resumed_batch_size_3_run_equals_the_uninterrupted_run(tab_runs, tmp_path):
    """Cut after 37 records (mid-batch: a run has 1 of its batch's 3 problems) and rerun: the rest is searched in
    other batches than the uninterrupted run used, and writes the same records."""
    out = tmp_path / "resumed"
    shutil.copytree(tab_runs / "b3", out)
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:37]) + "\n")
    assert compare.main(["--config", TAB, f"out={out}", *ALL, "batch_size=3"]) == 0
    assert _records(out) == _records(tab_runs / "b3")


def test_vllm_sampler_seeds_each_prefix_from_its_own_generator():
    """The vLLM sampler (no server: a stub client records the requests): a batched call sends every prefix the seed
    a single-prefix call with the same generator sends, and two problems with the same prompt get their own."""
    from specs_rl.hf.models import tiny_tokenizer
    from specs_rl.vllm.client import Endpoint
    from specs_rl.vllm.parts import PromptFormat, VLLMSampler

    class StubClient:
        def __init__(self) -> None:
            self.seeds: list[int] = []

        def map(self, jobs):
            return [job() for job in jobs]

        def request(self, ep, method, path, body):
            self.seeds.append(body["seed"])
            choice = {"token_ids": [7], "logprobs": {"token_logprobs": [-0.5]}, "finish_reason": "length"}
            return {"choices": [{"index": k, **choice} for k in range(body["n"])]}

    client = StubClient()
    fmt = PromptFormat(tiny_tokenizer(), chat_template=False)
    sampler = VLLMSampler(
        client, Endpoint("vllm.draft", "http://stub", "m"), fmt, eos_ids=frozenset(), max_model_len=512
    )
    batch_gens = gens(HF_PROBLEMS, seed=5)
    sampler.propose([Trace(p) for p in HF_PROBLEMS], 2, batch_gens)
    batched, client.seeds = client.seeds, []
    for p, g in zip(HF_PROBLEMS, batch_gens):
        (alone_g,) = gens([p], seed=5)
        sampler.propose([Trace(p)], 2, [alone_g])
        assert torch.equal(g.get_state(), alone_g.get_state())
    assert batched == client.seeds and len(set(batched)) == 3
