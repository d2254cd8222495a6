"""The HTTP client of the served backend: one ``httpx.Client`` shared by every part, the requests of a call issued
concurrently, bounded retries with exponential backoff, and clear errors that name the part and the server.

Concurrency. A part's call over ``B`` prefixes issues ``B`` requests at once: the first in the calling thread, the
others on a pool of long-lived threads (``max_concurrency - 1`` of them, started with the client; a thread waiting on
its socket releases the GIL). Requests beyond ``max_concurrency`` wait for a thread.
Target scoring and the PRM are two such calls in two threads (:class:`specs_rl.vllm.build.PooledWallClock`), so the
requests of all the problems in flight, of both parts, are on the wire together. With one problem at a time (the
paper's latency setting) a request runs in the thread that needs its answer: no hand-off to another thread and
back, which an asyncio loop in a background thread would add to every call (0.4-0.9 ms each here, about 7% of a
toy problem's wall time on this 2-core machine).

Timing. A :class:`BusyMeter` measures the wall time during which at least one request is in flight (from the first
byte sent to the last byte received): that is time spent waiting on servers. Request bodies are serialized before
and responses parsed after that window, so the rest of a call's wall time is the client's own. Each endpoint has its
own meter and the client has one over every part; the bench reads them (``client share = 1 - busy / wall``).

Retries. A connection error, a timeout, or an HTTP 429 / 5xx answer is retried ``retries`` times, waiting
``backoff_s * 2^k`` before retry ``k`` (no jitter, so the schedule is the same on every run). A request is safe to
repeat: sampling requests carry their seed, scoring and pooling requests have no randomness. Any other HTTP error
(400: a prompt longer than the server's context, 404: a model the server does not serve) is not retried. When the
retries are spent the call raises :class:`ServerError` (a :class:`~specs_rl.errors.SpecsError`: the entry points print
its one line and exit with status 2; the records already written stay, and rerunning resumes).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from specs_rl.errors import SpecsError

T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class ServerError(SpecsError):
    """A server that cannot be reached, refuses a request, or answers something the client cannot use. The message
    names the part (``vllm.draft``, ...) and the server's URL."""


class BusyMeter:
    """Wall seconds during which at least one request is in flight (a union of intervals, so overlapping requests are
    counted once), and the most requests in flight at once (``peak``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self._busy = 0.0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
            self.peak = max(self.peak, self._active)

    def exit(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._busy += time.perf_counter() - self._since

    @property
    def busy_s(self) -> float:
        with self._lock:
            now = time.perf_counter()
            return self._busy + (now - self._since if self._active else 0.0)

    def reset(self) -> None:
        with self._lock:
            self._busy = 0.0
            self._since = time.perf_counter()
            self.peak = self._active


@dataclass
class Endpoint:
    """One served model: the config key of its part (``vllm.draft``), the server's base URL and the served name."""

    part: str
    url: str
    model: str

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.meter = BusyMeter()
        self.stats = {"requests": 0, "retries": 0}

    @property
    def server_s(self) -> float:
        return self.meter.busy_s


def _describe(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _error_message(resp: Any) -> str:
    """The server's own error text (vLLM: ``{"error": {"message": ...}}``), shortened to one line."""
    try:
        body = json.loads(resp.content)
        msg = (
            body.get("error", {}).get("message")
            if isinstance(body.get("error"), dict)
            else body.get("detail")
        )
        msg = msg or body.get("message") or resp.text
    except (ValueError, AttributeError):
        msg = resp.text
    return " ".join(str(msg).split())[:300] or "(no body)"


class ServedClient:
    """Requests to vLLM servers from any thread: one connection pool, a thread pool for concurrent requests."""

    def __init__(
        self,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 64,
        api_key: str | None = None,
    ) -> None:
        import httpx

        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.meter = BusyMeter()
        self.stats = {"requests": 0, "retries": 0}
        self._lock = threading.Lock()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=4 * max_concurrency)
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._http = httpx.Client(timeout=timeout, limits=limits, headers=headers)
        # max_concurrency - 1 threads, all started now (a thread started on demand costs milliseconds, tens when
        # the machine is loaded, and would leave the first requests of a call alone on the wire)
        workers = max(1, max_concurrency - 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="specs-rl-vllm")
        ready = threading.Barrier(workers + 1)
        for _ in range(workers):
            self._pool.submit(ready.wait)
        ready.wait()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._http.close()

    def _count(self, ep: Endpoint, key: str) -> None:
        with self._lock:
            self.stats[key] += 1
            ep.stats[key] += 1

    # -- requests -------------------------------------------------------------------------------------------------
    def request(self, ep: Endpoint, method: str, path: str, body: Any = None) -> Any:
        """The parsed JSON answer of ``method url/path`` (``body`` sent as JSON), retried as the module says."""
        import httpx

        payload = None if body is None else json.dumps(body).encode()
        url = ep.url + path
        t0 = time.perf_counter()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count(ep, "retries")
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.meter.enter()
            ep.meter.enter()
            self._count(ep, "requests")
            try:
                resp = self._http.request(method, url, content=payload)
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__} after {self.timeout_s:g} s)"
                continue
            except httpx.TransportError as e:
                last = _describe(e)
                continue
            finally:
                ep.meter.exit()
                self.meter.exit()
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise ServerError(
                    f"{ep.part}: the server at {ep.url} refused {method} {path} with HTTP {resp.status_code}: "
                    f"{_error_message(resp)}"
                )
            try:
                return json.loads(resp.content)
            except ValueError:
                raise ServerError(
                    f"{ep.part}: the server at {ep.url} answered {method} {path} with something that is not JSON: "
                    f"{resp.text[:120]!r}"
                ) from None
        raise ServerError(
            f"{ep.part}: no answer from the server at {ep.url} ({method} {path}) after {self.retries + 1} "
            f"attempt(s) in {time.perf_counter() - t0:.1f} s: {last}. The records written so far are kept; "
            "rerun the same command to resume once the server is back"
        )

    def map(self, calls: list[Callable[[], T]]) -> list[T]:
        """Every call at once: the first in this thread, the others on the pool. The first failure is raised (the
        others still finish: a request in flight is not cut)."""
        if not calls:
            return []
        if len(calls) == 1:
            return [calls[0]()]
        futures = [self._pool.submit(c) for c in calls[1:]]
        try:
            first = calls[0]()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return [first, *(f.result() for f in futures)]

    # -- health -----------------------------------------------------------------------------------------------------
    def served_models(self, ep: Endpoint) -> dict[str, dict[str, Any]]:
        """``{served name: model card}`` from ``/v1/models`` after ``/health`` answers."""
        self._health(ep)
        data = self.request(ep, "GET", "/v1/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise ServerError(f"{ep.part}: {ep.url}/v1/models did not list models; is it a vLLM server?")
        return {str(c.get("id")): c for c in cards if isinstance(c, dict)}

    def _health(self, ep: Endpoint) -> None:
        """``GET /health`` (vLLM answers 200 with an empty body once the engine is up), retried as a request."""
        import httpx

        t0 = time.perf_counter()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._http.get(ep.url + "/health")
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__})"
                continue
            except httpx.TransportError as e:
                last = _describe(e)
                continue
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}: {_error_message(resp)}"
            if resp.status_code not in RETRY_STATUS:
                break
        raise ServerError(
            f"{ep.part}: no vLLM server answers at {ep.url} ({last}; {self.retries + 1} attempt(s) in "
            f"{time.perf_counter() - t0:.1f} s)"
        )


# -- reading answers (the parts' shared checks) -----------------------------------------------------------------
class CallTimer:
    """Wall seconds and calls of a part's public methods (``stats["call_s"]``, ``stats["calls"]``)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats["call_s"] += time.perf_counter() - self.t0
        self.stats["calls"] += 1


def logprob_of(x: Any) -> float | None:
    """A usable log-probability, or None: a finite number <= 0 (1e-6 of rounding above 0 is allowed)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    if not math.isfinite(x) or x > 1e-6:
        return None
    return min(x, 0.0)


def choices_of(ep: Endpoint, data: Any, expected: int) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != expected:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ServerError(f"{ep.part}: the server at {ep.url} returned {got} choices, expected {expected}")
    try:
        return sorted(choices, key=lambda c: int(c["index"]))
    except (KeyError, TypeError, ValueError):
        raise ServerError(f"{ep.part}: the server at {ep.url} returned choices without an index") from None
