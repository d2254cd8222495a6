"""The HTTP client of the served backend: one asyncio loop in a background thread, one ``httpx.AsyncClient``, bounded
retries with exponential backoff, and clear errors that name the part and the server.

Every part (drafter, target sampler, scorer, PRM) submits coroutines to the same loop from whatever thread calls it
(the search, or the two threads in which target scoring and the PRM run concurrently), so the requests of all the
problems in flight, of every part, are on the wire together.

Timing. A :class:`BusyMeter` measures the wall time during which at least one request is in flight (from the first
byte sent to the last byte received): that is time spent waiting on servers. Request bodies are serialized before
and responses parsed after that window, so the rest of a call's wall time is the client's own. Each part has its own
meter and the client has one over every part; the bench reads them (``client share = 1 - busy / wall``).

Retries. A connection error, a timeout, or an HTTP 429 / 5xx answer is retried ``retries`` times, waiting
``backoff_s * 2^k`` before retry ``k`` (no jitter, so the schedule is the same on every run). A request is safe to
repeat: sampling requests carry their seed, scoring and pooling requests have no randomness. Any other HTTP error
(400: a prompt longer than the server's context, 404: a model the server does not serve) is not retried. When the
retries are spent the call raises :class:`ServerError` (a :class:`~specs_rl.errors.SpecsError`: the entry points print
its one line and exit with status 2; the records already written stay, and rerunning resumes).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
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
    """Requests to vLLM servers from any thread, on one event loop running in a daemon thread."""

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
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.meter = BusyMeter()
        self.stats = {"requests": 0, "retries": 0}
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="specs-rl-vllm-client", daemon=True
        )
        self._thread.start()
        self._http = self.run(self._open())
        self.closed = False

    async def _open(self) -> Any:
        import httpx

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=4 * self.max_concurrency)
        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        return httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result (call from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.run(self._http.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # -- requests -------------------------------------------------------------------------------------------------
    async def request(self, ep: Endpoint, method: str, path: str, body: Any = None) -> Any:
        """The parsed JSON answer of ``method url/path`` (``body`` sent as JSON), retried as the module says."""
        import httpx

        sem = self._sems.get(ep.url)
        if sem is None:
            sem = self._sems[ep.url] = asyncio.Semaphore(self.max_concurrency)
        payload = None if body is None else json.dumps(body).encode()
        url = ep.url + path
        t0 = time.perf_counter()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                ep.stats["retries"] += 1
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            async with sem:
                self.meter.enter()
                ep.meter.enter()
                self.stats["requests"] += 1
                ep.stats["requests"] += 1
                try:
                    resp = await self._http.request(method, url, content=payload)
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

    async def gather(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """All ``coros`` concurrently; the first failure cancels the others and is raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def map(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """:meth:`gather` from a calling thread."""
        if not coros:
            return []
        return self.run(self.gather(coros))

    # -- health -----------------------------------------------------------------------------------------------------
    async def served_models(self, ep: Endpoint) -> dict[str, dict[str, Any]]:
        """``{served name: model card}`` from ``/v1/models`` after ``/health`` answers (retried as any request)."""
        await self._health(ep)
        data = await self.request(ep, "GET", "/v1/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise ServerError(f"{ep.part}: {ep.url}/v1/models did not list models; is it a vLLM server?")
        return {str(c.get("id")): c for c in cards if isinstance(c, dict)}

    async def _health(self, ep: Endpoint) -> None:
        """``GET /health`` (vLLM answers 200 with an empty body once the engine is up)."""
        import httpx

        t0 = time.perf_counter()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = await self._http.get(ep.url + "/health")
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
