"""Concurrent scoring on CUDA: one CUDA stream per scoring thread.

With ``concurrent_scoring`` the search runs target scoring and PRM scoring as two calls of
:meth:`Clock.concurrently` (:func:`specs_rl.search._score_and_reward`). Threads alone do not make them overlap on a
GPU: every thread issues its kernels to the device's current stream, the default one, so the two calls' kernels
queue behind each other, and a clock that synchronizes the whole device counts the other call's kernels in each
call's time. :class:`StreamClock` gives each call of a section its own stream on every CUDA device the scoring
models use, with the synchronization a stream switch needs (PyTorch's CUDA semantics notes, "CUDA streams"):

- **inputs ready before**: each side stream first waits for the caller's current stream (``wait_stream``), so
  everything queued before the section (the prefixes' cached keys and values, the draft's candidates) is written
  before a side stream reads it;
- **each call's time is its own**: the call's thread synchronizes only its own streams before reading the clock,
  never the device, so a call's seconds do not include the other call's kernels;
- **outputs synchronized before anyone reads them**: a call returns only after its streams are synchronized, and
  the caller's stream then waits for every side stream, so the next stage (which reads the caches the scorer
  extended) runs after the section's writes; the section's wall time is read after a device-wide synchronize of
  every device (covers both streams).

Memory: the caching allocator ties a block to the stream it was allocated on. Tensors a scoring call allocates on
its side stream and leaves in a cache are later read (and freed) on the default stream; a freed block returns to
the side stream's pool, and the next use of that pool is the next section, whose side streams first wait for the
default stream, so the block is never reused while a kernel still reads it. The same ordering covers blocks of the
default stream freed inside a section: the caller issues nothing until the section's streams are synchronized.

:func:`scoring_clock` chooses: a :class:`StreamClock` when a scoring model is on CUDA, else the plain
:class:`~specs_rl.interfaces.WallClock` (CPU and MPS runs are unchanged). This path has ``-m gpu`` tests
(``tests/test_hf_streams.py``); it has not been run on a GPU here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import torch

from specs_rl.interfaces import Clock, WallClock


def cuda_devices(modules: Iterable[torch.nn.Module]) -> list[torch.device]:
    """The CUDA devices holding a parameter of any of ``modules``, in index order (empty without CUDA)."""
    found = {p.device for m in modules for p in m.parameters() if p.device.type == "cuda"}
    return sorted(found, key=lambda d: d.index if d.index is not None else 0)


def scoring_clock(devices: Sequence[torch.device]) -> Clock:
    """:class:`StreamClock` over ``devices`` when there are CUDA devices among them, else :class:`WallClock`."""
    cuda = [d for d in devices if d.type == "cuda"]
    return StreamClock(cuda) if cuda else WallClock()


class StreamClock(WallClock):
    """:class:`~specs_rl.interfaces.WallClock` whose concurrent sections give each call its own CUDA stream on every
    device in ``devices`` (module docstring: the synchronization). ``now`` synchronizes each of those devices (all
    their streams). Streams and the section threads are made once and reused.

    ``cuda`` is the module the streams come from (``torch.cuda``; a test passes a recording stand-in to check the
    order of waits and synchronizations without a GPU).
    """

    def __init__(self, devices: Sequence[torch.device], cuda: Any = torch.cuda) -> None:
        super().__init__(sync_cuda=True)
        if not devices:
            raise ValueError("StreamClock needs at least one CUDA device")
        self.devices = list(devices)
        self.cuda = cuda
        self._streams: list[list[Any]] = []  # slot -> one stream per device
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0

    def now(self) -> float:
        for d in self.devices:
            self.cuda.synchronize(d)
        return time.perf_counter()

    def streams(self, count: int) -> list[list[Any]]:
        """``count`` slots of side streams (one per device each), made on first use."""
        while len(self._streams) < count:
            self._streams.append([self.cuda.Stream(device=d) for d in self.devices])
        return self._streams[:count]

    def _run(self, call: Callable[[], Any], streams: Sequence[Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        with ExitStack() as stack:
            for s in streams:
                stack.enter_context(self.cuda.stream(s))
            out = call()
        for s in streams:
            s.synchronize()  # this call's kernels only, never the other call's
        return out, time.perf_counter() - t0

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        if not calls:
            return [], [], 0.0
        t0 = self.now()
        slots = self.streams(len(calls))
        callers = [self.cuda.current_stream(d) for d in self.devices]
        for slot in slots:
            for side, caller in zip(slot, callers):
                side.wait_stream(caller)  # inputs queued before the section are ready
        if self._workers < len(calls):
            self._pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="specs-rl-stream")
            self._workers = len(calls)
        assert self._pool is not None
        futures = [self._pool.submit(self._run, c, slot) for c, slot in zip(calls, slots)]
        done = [f.result() for f in futures]
        for slot in slots:
            for side, caller in zip(slot, callers):
                caller.wait_stream(side)  # what the next stage reads was written by the section
        return [r for r, _ in done], [dt for _, dt in done], self.now() - t0
