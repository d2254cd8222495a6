"""The core layout of a served run (:mod:`specs_rl.vllm.layout`): where CPU servers are pinned and how many torch
threads the in-process parts get, and how a run applies it. No server starts here (the real run path is checked by
``tests/test_vllm_backend.py::test_demo_runs_on_servers``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from specs_rl.vllm.layout import CoreLayout, check_bind, core_layout, parse_cores


def _server_cores(layout: CoreLayout) -> set[int]:
    return {c for b in layout.binds for c in parse_cores(b)}


def test_two_cores_two_servers_get_a_core_each_and_the_client_one_thread():
    lay = core_layout(
        [0, 1], 2
    )  # measured on a 2-core CPU against both servers on core 1 (docs/served-layout.md)
    assert lay.binds == ("0", "1")
    assert lay.client_cores == (0, 1) and lay.client_threads == 1 and lay.warning is None
    lay = core_layout([0, 1], 1)  # one server: the client keeps a core of its own
    assert lay.binds == ("1",) and lay.client_cores == (0,) and lay.client_threads == 1
    assert core_layout([0, 1], 3).binds == ("0", "1", "0")  # more servers than cores: single cores in turn


@pytest.mark.parametrize("cores", [2, 3, 4, 7, 8, 16, 64])
@pytest.mark.parametrize("servers", [1, 2, 3, 4])
def test_spread_gives_the_client_its_own_share_or_one_thread(cores, servers):
    lay = core_layout(list(range(cores)), servers)
    assert len(lay.binds) == servers
    pinned = _server_cores(lay)
    assert pinned | set(lay.client_cores) == set(range(cores))  # no core is left idle
    sizes = [len(parse_cores(b)) for b in lay.binds]
    if cores >= servers + 1:  # a share each: the client's own cores, disjoint server binds of equal size
        assert not pinned & set(lay.client_cores)
        assert lay.client_threads == len(lay.client_cores) >= sizes[0]
        assert len(set(sizes)) == 1 and sum(sizes) == len(pinned)
    else:  # the servers take every core, the client one thread beside them
        assert pinned == set(range(cores)) and lay.client_threads == 1


def test_uneven_cuts_give_the_remainder_to_the_client_and_respect_the_affinity():
    lay = core_layout(range(8), 2)
    assert lay.binds == ("4,5", "6,7") and lay.client_cores == (0, 1, 2, 3) and lay.client_threads == 4
    lay = core_layout([2, 5, 9], 2)  # the cores this process may use, not 0..n-1
    assert lay.binds == ("5", "9") and lay.client_cores == (2,)


def test_one_core_is_shared_by_all():
    lay = core_layout([3], 2)
    assert lay.binds == ("3", "3") and lay.client_cores == (3,) and lay.client_threads == 1


def test_no_server_on_this_machine_leaves_torch_alone_unless_overridden():
    assert core_layout([0, 1], 0).client_threads is None
    assert core_layout([0, 1], 0, client_threads=2).client_threads == 2


def test_other_binds_keep_the_servers_where_the_bind_says():
    lay = core_layout(range(4), 2, "2-3")
    assert lay.binds == ("2-3", "2-3") and lay.client_cores == (0, 1) and lay.client_threads == 2
    lay = core_layout(range(2), 2, "0-1")  # every core pinned: the client shares one, with one thread
    assert lay.client_threads == 1
    lay = core_layout(range(8), 2, "nobind")
    assert lay.binds == ("nobind", "nobind") and lay.client_threads == 2  # one share of three
    assert core_layout(range(2), 2, "auto").client_threads == 1


def test_an_override_that_oversubscribes_is_allowed_with_a_warning():
    lay = core_layout([0, 1], 2, client_threads=2)
    assert lay.client_threads == 2
    assert lay.warning and "client_threads=2" in lay.warning and "1 core(s)" in lay.warning
    assert core_layout(range(8), 2, client_threads=3).warning is None  # within the client's 4 cores


def test_bad_binds_and_counts_are_one_line_errors():
    check_bind("k", "0,2,5-7")
    with pytest.raises(ValueError, match="k must be spread, auto, nobind or a core list"):
        check_bind("k", "cores")
    from specs_rl.vllm.config import VLLMConfig

    with pytest.raises(ValueError, match="vllm.cpu_threads_bind"):
        VLLMConfig(cpu_threads_bind="0-x").validate()
    with pytest.raises(ValueError, match="vllm.client_threads must be >= 0"):
        VLLMConfig(client_threads=-1).validate()
    with pytest.raises(ValueError, match="at least one core"):
        core_layout([], 1)
    assert parse_cores("0-1|4,6") == [0, 1, 4, 6]


def test_a_run_counts_its_started_servers_and_local_urls(monkeypatch):
    from specs_rl.vllm import build, gpu, server
    from specs_rl.vllm.config import VLLMConfig

    monkeypatch.setattr(gpu, "visible_gpus", lambda: [])
    monkeypatch.setattr(server, "is_cpu_build", lambda python: True)
    monkeypatch.setattr(build, "usable_cores", lambda: list(range(6)))
    vc = VLLMConfig()
    # two started + one on this machine = 3 servers: shares of 6 // 4 = 1 core, the client keeps 3
    lay = build.run_layout(vc, 2, ["http://127.0.0.1:8000", "http://gpu-box:8000"])
    assert len(lay.binds) == 3 and lay.client_cores == (0, 1, 2) and lay.client_threads == 3
    assert build.run_layout(vc, 0, ["http://gpu-box:8000"]).client_threads is None  # remote only: torch's own
    monkeypatch.setattr(
        server, "is_cpu_build", lambda python: False
    )  # a CUDA build's servers use no CPU cores
    assert build.run_layout(vc, 2).client_threads is None
    monkeypatch.setattr(server, "is_cpu_build", lambda python: True)
    with pytest.warns(UserWarning, match="contend with the servers"):
        build.run_layout(VLLMConfig(client_threads=5), 2)


def test_the_in_process_prm_runs_at_the_layouts_threads_and_the_run_restores_torchs():
    from specs_rl.run.backends import threads_restored
    from specs_rl.vllm.client import BusyMeter
    from specs_rl.vllm.prm import MeteredRewardModel

    seen = []

    class Spy:
        def score(self, prefixes, candidates):
            seen.append(torch.get_num_threads())
            return [[0.5] for _ in prefixes]

    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    with threads_restored():
        prm = MeteredRewardModel(Spy(), BusyMeter(), threads=want)
        assert prm.score([None, None], [[], []]) == [[0.5], [0.5]]
        prm.score([None], [[]])
        assert seen == [want, want]
    assert torch.get_num_threads() == before
    MeteredRewardModel(Spy(), BusyMeter()).score([None], [[]])  # None: torch's own count
    assert seen[-1] == before


def test_the_served_bench_measures_the_demos_specs_run():
    """``specs-rl bench backend=vllm`` plans SPECS as ``specs-rl demo`` does (the same n, settings and seeds), on the
    demo's problems, with the run layer's defaults (no thread key of its own); ``n=4`` with the full demo's config
    is the full demo's SPECS at n = 4."""
    from eval.bench_served import BenchServedConfig, world
    from eval.demo import TOYMATH_CONFIG, demo_config
    from specs_rl.datasets import load_problems
    from specs_rl.run import plan_runs

    hf_run, served_run, planned = world(BenchServedConfig(problems=5, throughput_problems=4, repeats=3))
    demo = demo_config(["methods=[specs]", "seeds=[0,1,2]", "data.limit=5"])
    assert [(r.seed, r.config) for r in planned] == [(r.seed, r.config) for r in plan_runs(demo)]
    assert planned[0].config.n == 8  # the demo's tuned SPECS
    full = world(BenchServedConfig(problems=5, n=4, config=str(TOYMATH_CONFIG)))[2]
    full_demo = demo_config(["full", "methods=[specs]", "n_grid=[4]", "seeds=[0,1,2]"])
    assert [(r.seed, r.config) for r in full] == [(r.seed, r.config) for r in plan_runs(full_demo)]
    assert (hf_run.backend, served_run.backend) == ("hf", "vllm")
    assert hf_run.hf == served_run.hf == demo.run.hf
    ids = [p.id for p in load_problems(hf_run.data)]
    assert ids[:5] == [p.id for p in load_problems(demo.run.data)]
    assert "threads" not in {f.name for f in dataclasses.fields(BenchServedConfig)}
