"""The package below both model backends (:mod:`specs_rl.models`): one aggregation, one request-seed hash, one bounded
cache, one prompt rule and one PRM encoding, each giving the numbers the backends' own copies gave."""

from __future__ import annotations

import doctest
import hashlib
import math
import subprocess
import sys
from array import array

import pytest

from specs_rl.errors import SpecsError
from specs_rl.models import prm_format, seeds
from specs_rl.models.cache import LRU
from specs_rl.models.prm_format import PrmFormat, aggregate_rewards, encode_steps
from specs_rl.models.prm_kinds import PrmEncoding
from specs_rl.models.prompts import GeneratorPrompts
from specs_rl.models.tokens import eos_ids
from specs_rl.types import Candidate, Problem, Trace
from tests.conftest import REPO


class Chars:
    """A toy tokenizer: one id per character (special tokens: a BOS 1 when asked for)."""

    eos_token_id = 3
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def test_doctests() -> None:
    assert doctest.testmod(seeds).failed == 0
    assert doctest.testmod(prm_format).failed == 0


def test_one_aggregation_for_the_search_and_both_prms() -> None:
    r = [0.9, 0.5, 0.8]
    assert aggregate_rewards(r, "last") == 0.8
    assert aggregate_rewards(r, "min") == 0.5
    assert aggregate_rewards(r, "prod") == pytest.approx(0.36, abs=1e-15)
    assert math.isnan(aggregate_rewards([], "last"))
    with pytest.raises(ValueError, match="aggregate must be one of last, min, prod; got 'mean'"):
        prm_format.check_aggregate("mean")


def _old_hf_row_seed(call_seed: int, ids: tuple[int, ...], j: int, occurrence: int) -> int:
    """The HF sampler's per-candidate seed before the move (specs_rl/hf/lm.py ``_row_seed``)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(call_seed.to_bytes(8, "little"))
    h.update(array("q", ids).tobytes())
    h.update(j.to_bytes(4, "little"))
    h.update(occurrence.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def _old_vllm_request_seed(call_seed: int, ids: tuple[int, ...], occurrence: int) -> int:
    """The vLLM sampler's per-request seed before the move (specs_rl/vllm/parts.py ``request_seed``)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(call_seed.to_bytes(8, "little"))
    h.update(array("q", ids).tobytes())
    h.update(occurrence.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)


@pytest.mark.parametrize("ids", [(), (5,), (151643, 2, 77, 9)])
def test_request_seeds_are_the_backends_former_seeds(ids) -> None:
    for call_seed in (0, 12345, 2**62 - 1):
        for occ in (0, 2):
            assert seeds.request_seed(call_seed, ids, occ, bits=62) == _old_vllm_request_seed(
                call_seed, ids, occ
            )
            for j in (0, 3):
                assert seeds.request_seed(call_seed, ids, occ, choice=j) == _old_hf_row_seed(
                    call_seed, ids, j, occ
                )


def test_lru_keeps_the_most_recently_put_entries() -> None:
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # "a" is the most recent again
    cache.put("c", 4)
    assert dict(cache) == {"a": 3, "c": 4}


def test_generator_prompts_are_memoized_in_a_bounded_cache_and_an_empty_prompt_is_named() -> None:
    prompts = GeneratorPrompts(Chars(), chat_template=True)  # no chat template: the plain encoding
    assert not prompts.chat_template
    assert prompts.ids(Problem("p", "ab")) == (1, 97, 98)
    for i in range(1100):
        prompts.ids(Problem(f"p{i}", str(i)))
    assert len(prompts._ids) == 1024

    class Empty(Chars):
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": []}

    with pytest.raises(SpecsError, match="problem 'q': the prompt encodes to no tokens"):
        GeneratorPrompts(Empty()).ids(Problem("q", "x"))


def test_prm_encoding_is_the_trainers_encoding() -> None:
    tok = Chars()
    problem = Problem("p", "templated prompt", meta={"problem": "Q"})
    steps = ["a = 1\n\n", "b|", "c"]
    enc = PrmEncoding(tok, PrmFormat(step_separator="|"))
    trace = Trace(problem, tuple(Candidate((), s, (), False) for s in steps[:2]))
    pids, ids, ends = enc.encode(trace, extra=steps[2])
    want_ids, want_ends = encode_steps(tok, "Q", steps, separator="|")
    assert (list(ids), ends) == (want_ids, want_ends)
    assert list(pids) == encode_steps(tok, "Q", [], separator="|")[0]
    by_prompt = PrmEncoding(tok, PrmFormat(step_separator="|"), prompt_field="prompt")
    assert by_prompt.prompt_text(problem) == "templated prompt"
    with pytest.raises(ValueError, match="no chat template"):
        PrmEncoding(tok, PrmFormat(), chat=True)


def test_eos_ids_join_the_tokenizer_and_the_generation_config_within_the_vocabulary() -> None:
    assert eos_ids(Chars(), [7, 500], vocab=300) == frozenset({3, 7})
    assert eos_ids(Chars(), 9, vocab=300) == frozenset({3, 9})
    assert eos_ids(Chars(), None, vocab=2) == frozenset()


def test_the_shared_package_and_the_vllm_package_import_light() -> None:
    code = (
        "import sys, specs_rl.models, specs_rl.models.sources, specs_rl.vllm; "
        "print(sorted(m for m in ('transformers', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_vllm_backend_asks_for_an_in_process_prm_builder_before_anything_starts() -> None:
    from specs_rl.models import ModelsConfig
    from specs_rl.vllm.build import build_parts
    from specs_rl.vllm.config import ServedPrm, VLLMConfig

    vc = VLLMConfig(prm=ServedPrm(backend="hf"))
    with pytest.raises(SpecsError, match="no in-process PRM builder was given"):
        build_parts(vc, ModelsConfig())
