"""Where a served run computes on a CPU: the cores each vLLM CPU server's OMP threads are pinned to
(``VLLM_CPU_OMP_THREADS_BIND``), and the torch threads of what the run computes in its own process (a PRM vLLM
cannot serve, the search itself), chosen in one place, :func:`core_layout`, from the cores this process may use, the
servers on this machine and their bind.

vLLM's CPU worker pins one OMP thread to each core of its bind and keeps it busy while it has requests. A client
whose torch uses every core (torch's default) shares each of them with a pinned server thread, and an OpenMP team
waits for its slowest member: on a 2-core CPU the in-process PRM of the toy world took 5.5 s per SPECS problem next
to two servers with torch's 2 threads, 0.5 s with 1 (docs/served-layout.md).

With ``bind: spread`` (the default), when there are enough cores the client gets a share of its own: the cores are
cut into ``servers + 1`` shares of consecutive cores, the client takes the first (with the remainder of an uneven
cut) and each server one of the others, and torch gets as many threads as the client's share has cores. With fewer
cores than that (2 cores, 2 servers) every core goes to the servers (one share each, single cores in turn when there
are more servers than cores) and the client runs beside them with 1 torch thread: measured on a 2-core CPU, that
beat putting both servers on core 1 and the client on core 0 (1.4 s against 3.4 s per SPECS problem, the draft and
target-scoring requests 6-7x slower on the shared core, with other jobs loading the machine). Other binds (``auto``,
``nobind``, a core list) leave the servers where the bind says; the client gets the cores no list names (1 thread
when there are none), or, for servers not pinned to known cores, one share of ``servers + 1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

UNPINNED = ("auto", "nobind")


@dataclass(frozen=True)
class CoreLayout:
    """``binds``: ``VLLM_CPU_OMP_THREADS_BIND`` of each server, in order; ``client_cores``: the cores left to this
    process's own computation; ``client_threads``: torch's intra-op threads for it (None: torch's, untouched: no
    server on this machine); ``warning``: a chosen thread count that oversubscribes the cores left to the client."""

    binds: tuple[str, ...]
    client_cores: tuple[int, ...]
    client_threads: int | None
    warning: str | None = None

    def describe(self) -> str:
        """One line for a run's log: where the servers and the client compute."""
        if self.client_threads is None:
            return "no vLLM server on this machine: torch keeps its own thread count"
        servers = ", ".join(self.binds) or "servers given by URL"
        return (
            f"vLLM CPU servers on cores [{servers}], the in-process parts on "
            f"{_cores_text(self.client_cores)} with {self.client_threads} torch thread(s)"
        )


def _cores_text(cores: Sequence[int]) -> str:
    return "core " + str(cores[0]) if len(cores) == 1 else "cores " + ",".join(map(str, cores))


def use_threads(n: int) -> None:
    """Give torch ``n`` intra-op threads in the calling thread (and the threads it starts later) when it has another
    count. Set once and kept: a change of count costs a new OpenMP team (0.3-0.7 ms on a loaded 2-core CPU), too
    much to pay and undo around every PRM call; the entry points restore the count when the run ends
    (:func:`specs_rl.run.backends.threads_restored`)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_cores(bind: str) -> list[int]:
    """The cores of a ``VLLM_CPU_OMP_THREADS_BIND`` core list (``0-3``, ``0,2,5-7``; ``|`` separates the ranks of a
    tensor-parallel server). ValueError for anything else."""
    out: list[int] = []
    for rank in bind.split("|"):
        for part in rank.split(","):
            lo, dash, hi = part.strip().partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise ValueError(f"not a core list: {bind!r} (e.g. 0-3 or 0,2,5-7)")
            out += range(int(lo), int(hi) + 1) if dash else [int(lo)]
    return sorted(set(out))


def check_bind(key: str, bind: str) -> None:
    """A one-line ValueError for a bind that is neither ``spread``, ``auto``, ``nobind`` nor a core list."""
    if bind in ("spread", *UNPINNED):
        return
    try:
        parse_cores(bind)
    except ValueError:
        raise ValueError(
            f"{key} must be spread, auto, nobind or a core list such as 0-3, got {bind!r}"
        ) from None


def core_layout(
    cores: Sequence[int], servers: int, bind: str = "spread", client_threads: int = 0
) -> CoreLayout:
    """The layout of ``servers`` CPU servers on this machine and the client, on ``cores`` (see the module
    docstring). ``client_threads`` > 0 overrides the client's torch threads; more than the cores left to the client
    is allowed and comes with a ``warning``.

    >>> core_layout([0, 1], 2)
    CoreLayout(binds=('0', '1'), client_cores=(0, 1), client_threads=1, warning=None)
    >>> core_layout(range(8), 2).binds, core_layout(range(8), 2).client_cores
    (('4,5', '6,7'), (0, 1, 2, 3))
    """
    cores = sorted(cores)
    if not cores:
        raise ValueError("core_layout needs at least one core")
    if servers < 0 or client_threads < 0:
        raise ValueError(f"servers and client_threads must be >= 0, got {servers} and {client_threads}")
    if servers == 0:
        threads = client_threads or None
        return CoreLayout((), tuple(cores), threads)
    if bind == "spread":
        binds, client = _spread(cores, servers)
    elif bind in UNPINNED:
        binds, client = (bind,) * servers, tuple(cores[: max(1, len(cores) // (servers + 1))])
    else:
        pinned = set(parse_cores(bind))
        binds = (bind,) * servers
        client = tuple(c for c in cores if c not in pinned) or tuple(cores[:1])
    room = len(client) if bind in UNPINNED else max(1, len(set(client) - _pinned(binds)))
    if bind == "spread" and set(client) & _pinned(binds):
        room = 1  # too few cores for a share each: the client shares them with one thread
    threads = client_threads or room
    warning = None
    if threads > room:
        warning = (
            f"vllm.client_threads={threads} gives the in-process parts more torch threads than the {room} core(s) the "
            f"{servers} vLLM server(s) leave them: they will contend with the servers' pinned threads (slower)"
        )
    return CoreLayout(binds, client, threads, warning)


def _pinned(binds: Sequence[str]) -> set[int]:
    out: set[int] = set()
    for b in binds:
        if b not in UNPINNED:
            out |= set(parse_cores(b))
    return out


def _spread(cores: list[int], servers: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Enough cores (one share each for the servers and the client): ``servers + 1`` shares of consecutive cores,
    the client's first (with the remainder of an uneven cut), the servers' after it. Fewer: every core goes to the
    servers (one share each, or single cores in turn when there are more servers than cores) and the client shares
    them all."""
    size = len(cores) // (servers + 1)
    if size == 0:
        if servers <= len(cores):
            per = len(cores) // servers
            return tuple(",".join(map(str, cores[i * per : (i + 1) * per])) for i in range(servers)), tuple(
                cores
            )
        return tuple(str(cores[i % len(cores)]) for i in range(servers)), tuple(cores)
    first = len(cores) - size * servers
    binds = tuple(
        ",".join(map(str, cores[first + i * size : first + (i + 1) * size])) for i in range(servers)
    )
    return binds, tuple(cores[:first])
