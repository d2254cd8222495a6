"""specs_rl.hf.streams: a CUDA stream per concurrent scoring thread.

CPU: the clock chooser keeps CPU runs on the plain WallClock, and a recording stand-in for ``torch.cuda`` checks
the order of waits and synchronizations. GPU (``-m gpu``): two sections of spinning kernels overlap on their
streams, and a search with concurrent scoring on CUDA gives the serial search's steps.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import torch

from specs_rl.hf import tiny_parts
from specs_rl.hf.streams import StreamClock, cuda_devices, scoring_clock
from specs_rl.interfaces import WallClock
from specs_rl.search import SearchConfig, specs
from specs_rl.types import Problem

from .conftest import cuda_tiny_parts

DEVICES = [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_cpu_models_keep_the_plain_wall_clock() -> None:
    assert cuda_devices([torch.nn.Linear(2, 2)]) == []
    assert type(scoring_clock([])) is WallClock
    assert type(scoring_clock([torch.device("cpu")])) is WallClock
    assert type(scoring_clock([torch.device("cpu"), torch.device("cuda", 1)])) is StreamClock
    parts = tiny_parts(seed=0)
    assert type(parts.clock) is WallClock  # the tiny parts are on the CPU: nothing changes there
    with pytest.raises(ValueError, match="at least one CUDA device"):
        StreamClock([])


class FakeStream:
    def __init__(self, cuda: FakeCuda, name: str, device: torch.device) -> None:
        self.cuda, self.name, self.device = cuda, name, device

    def wait_stream(self, other: FakeStream) -> None:
        self.cuda.record("wait", self.name, other.name)

    def synchronize(self) -> None:
        self.cuda.record("sync", self.name)


class FakeCuda:
    """The part of ``torch.cuda`` StreamClock uses, logging every wait, switch and synchronize in order."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.lock = threading.Lock()
        self.local = threading.local()
        self.made = 0

    def record(self, *event) -> None:
        with self.lock:
            self.log.append(event)

    def current(self) -> dict:
        if not hasattr(self.local, "streams"):
            self.local.streams = {}
        return self.local.streams

    def Stream(self, device: torch.device) -> FakeStream:  # noqa: N802 - torch.cuda.Stream
        self.made += 1
        return FakeStream(self, f"side{self.made}@{device.index}", device)

    def current_stream(self, device: torch.device) -> FakeStream:
        return self.current().get(device, FakeStream(self, f"default@{device.index}", device))

    @contextmanager
    def stream(self, s: FakeStream):
        previous = self.current().get(s.device)
        self.current()[s.device] = s
        try:
            yield
        finally:
            if previous is None:
                del self.current()[s.device]
            else:
                self.current()[s.device] = previous

    def synchronize(self, device: torch.device) -> None:
        self.record("device_sync", device.index)


def test_each_call_runs_on_its_own_streams_after_the_callers_work_and_is_synchronized_first() -> None:
    cuda = FakeCuda()
    clock = StreamClock(DEVICES, cuda=cuda)

    def call(name: str, sleep: float):
        def run():
            current = [cuda.current_stream(d).name for d in DEVICES]
            cuda.record("call", name, *current)
            time.sleep(sleep)
            cuda.record("end", name)
            return name

        return run

    results, each, wall = clock.concurrently(call("target", 0.3), call("prm", 0.0))
    assert results == ["target", "prm"]
    log = cuda.log
    at = {e: i for i, e in enumerate(log)}
    calls = {e[1]: e[2:] for e in log if e[0] == "call"}
    # each call ran with its own side stream current on every device; the two calls share none
    assert all(s.startswith("side") for s in calls["target"] + calls["prm"])
    assert not set(calls["target"]) & set(calls["prm"])
    for name, streams in calls.items():
        for dev, s in zip(DEVICES, streams):
            # inputs: the side stream waited for the caller's stream before the call started
            assert at[("wait", s, f"default@{dev.index}")] < at[("call", name, *streams)]
            # outputs: the call's stream was synchronized after the call, and the caller's stream waits for it
            assert at[("end", name)] < at[("sync", s)] < at[("wait", f"default@{dev.index}", s)]
    # the section's wall time is read after a synchronize of every device (all their streams)
    last_wait = max(i for i, e in enumerate(log) if e[0] == "wait" and e[1].startswith("default"))
    assert {e[1] for e in log[last_wait:] if e[0] == "device_sync"} == {0, 1}
    # a call's time is its own: the PRM's call did not wait for the target's 0.3 s
    assert each[0] >= 0.3 and each[1] < 0.15 and wall >= 0.3
    # streams are made once and reused by the next section
    made = cuda.made
    clock.concurrently(call("target", 0.0), call("prm", 0.0))
    assert cuda.made == made == 2 * len(DEVICES)


# ---------------------------------------------------------------------------------------------------------------
# On a GPU (not run here: no GPU on the machine these tests were written on)


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.mark.gpu
def test_two_scoring_threads_overlap_on_their_streams() -> None:
    """Two calls of spinning kernels (``torch.cuda._sleep``, one thread block each) take the time of one on two
    streams; on the shared default stream they would take the sum. Each call's own time excludes the other's."""
    _cuda()
    dev = torch.device("cuda", 0)

    def spin(cycles: int):
        def run():
            for _ in range(4):
                torch.cuda._sleep(cycles)
            return cycles

        return run

    cycles = 10_000_000
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    spin(cycles)()
    torch.cuda.synchronize(dev)
    one = time.perf_counter() - t0  # one call alone
    assert one > 0.005, "the spin kernels are too short to time"
    clock = StreamClock([dev])
    clock.concurrently(spin(1000), spin(1000))  # streams and threads made
    results, each, wall = clock.concurrently(spin(cycles), spin(cycles))
    serial = WallClock().concurrently(spin(cycles), spin(cycles))[2]  # the shared default stream
    print(
        f"one call {one:.3f} s; two on streams {wall:.3f} s (each {each}); on the default stream {serial:.3f} s"
    )
    assert results == [cycles, cycles]
    assert wall < 1.5 * one  # overlapped: far from 2 x one
    assert max(each) < 1.5 * one


@pytest.mark.gpu
def test_concurrent_scoring_on_cuda_gives_the_serial_search() -> None:
    """The HF parts on CUDA get a StreamClock; a SPECS search with concurrent scoring (target and PRM on their own
    streams) takes the same steps as the serial one, scores and rewards within 1e-5 (float32)."""
    _cuda()
    problems = [Problem("a", "What is 2 + 3?"), Problem("b", "Compute 7 * 6.")]
    runs = []
    for concurrent in (False, True):
        parts = cuda_tiny_parts("float32", max_step_tokens=8, max_tokens=48)
        assert isinstance(parts.clock, StreamClock)
        cfg = SearchConfig(n=3, max_steps=4, tau_reject=-6.0, tau_switch=0.5, concurrent_scoring=concurrent)
        runs.append(specs(problems, cfg, parts, torch.Generator().manual_seed(0)))
    tol = 1e-5
    for a, b in zip(*runs):
        assert a.trace.token_ids == b.trace.token_ids
        assert [s.source for s in a.steps] == [s.source for s in b.steps]
        assert [s.scores for s in a.steps] == [pytest.approx(s.scores, abs=tol) for s in b.steps]
        assert [s.rewards for s in a.steps] == [pytest.approx(s.rewards, abs=tol) for s in b.steps]
