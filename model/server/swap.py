"""The hot-swappable index: load, verify and warm a version off to the side, then swap one reference.

Each request pins the :class:`LoadedVersion` it started with (a reference count), so a swap never
pulls an index out from under a request; the old version's view is closed when its last request
ends. A version that fails any check is never served: the current one stays, and the failure is
kept in :attr:`IndexHolder.last_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

import anyio

from model.contracts.clock import utcnow
from model.contracts.compat import Compatibility
from model.server.background import cancel

LOG = logging.getLogger(__name__)

# Probe queries run against every new version before it is swapped in: they fault in the mmapped
# index pages and prove that search works on this version. They are embedded once per process
# (every version must match the one embedder), so warming a version costs no embedder time that
# requests are waiting for.
PROBE_TEXTS = (
    "The history of the city and its people.",
    "A new product was announced on Monday by the company.",
    "Scientists measured the temperature of the river in spring.",
    "The team won the final match of the season.",
)


class VersionRefused(Exception):
    """A version failed a check; ``kind`` is checksum, incompatible, cache, load, warmup or store."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class SwapFailure:
    """Why the server refused a version (or could not read the store)."""

    version: str | None
    kind: str
    error: str
    at: datetime


@dataclass(frozen=True)
class CheckResult:
    """What one check of ``CURRENT`` found and did."""

    current: str | None
    version: str | None  # served after the check
    swapped: bool
    error: SwapFailure | None = None


class LoadedVersion:
    """One verified, memory-mapped, warmed index version and the requests that hold it.

    Args:
        view: the store's ``IndexView`` (``search``, ``close``, ``manifest``).
        retriever: a ``model.contracts.retrieval.Retriever`` over the view, for generation and scoring.
    """

    def __init__(self, view, retriever):
        self.view = view
        self.retriever = retriever
        self.version: str = view.version
        self.manifest = view.manifest
        self.loaded_at = utcnow()
        self.load_seconds: float | None = None  # download + verify + map + warm, set by the holder
        self._lock = threading.Lock()
        self._refs = 0
        self._retired = False
        self.closed = False

    @property
    def refs(self) -> int:
        return self._refs

    def acquire(self) -> None:
        """Pin for one request (the holder only pins the version it serves, never a retired one)."""
        with self._lock:
            if self._retired:
                raise RuntimeError(f"index version {self.version} was pinned after it was swapped out")
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self.close()

    def retire(self) -> bool:
        """Refuse new pins from now on; True when no request holds it (the caller closes it then).

        Otherwise the last :meth:`release` closes it.
        """
        with self._lock:
            self._retired = True
            return self._refs == 0

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.view.close()
            LOG.info("released index version %s", self.version)
        except Exception:  # closing must never fail a request
            LOG.exception("closing index version %s failed", self.version)


class IndexHolder:
    """Owns the version served now; checks ``CURRENT`` and swaps in verified versions.

    Args:
        store: an index store (``current``, ``manifest``, ``open``) from ``model.store.open_store``.
        embedder: the server's query embedder (``encode``, ``spec``).
        compatibility: what every version must match (the checkpoint's embedder, tokenizer, chunk size).
        make_retriever: ``(view, embedder) -> Retriever`` for generation and scoring.
        probe_k: neighbours asked for by each warm-up probe.
        on_swap: called with ``(LoadedVersion, seconds)`` after a swap.
        on_failure: called with the :class:`SwapFailure` when a version is refused.
    """

    def __init__(
        self,
        store,
        embedder,
        compatibility: Compatibility,
        *,
        make_retriever: Callable[[Any, Any], Any],
        probe_k: int = 2,
        on_swap: Callable[[LoadedVersion, float], None] | None = None,
        on_failure: Callable[[SwapFailure], None] | None = None,
    ):
        self.store = store
        self.embedder = embedder
        self.compatibility = compatibility
        self.make_retriever = make_retriever
        self.probe_k = probe_k
        self.on_swap = on_swap
        self.on_failure = on_failure
        self._current: LoadedVersion | None = None
        self._pin_lock = threading.Lock()  # makes "read current + take a reference" one step
        self._check_lock = threading.Lock()  # one load at a time
        self._refused: dict[str, SwapFailure] = {}  # versions that failed a permanent check
        self.last_error: SwapFailure | None = None
        self.checked_at: datetime | None = None
        self.last_result: CheckResult | None = None
        self.swaps = 0
        self.checked_once = threading.Event()
        self._probe_vectors = None

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    @contextlib.contextmanager
    def pin(self) -> Iterator[LoadedVersion | None]:
        """Hold the version served now for the length of a request (None: retrieval is off)."""
        with self._pin_lock:
            loaded = self._current
            if loaded is not None:
                loaded.acquire()
        try:
            yield loaded
        finally:
            if loaded is not None:
                loaded.release()

    # checking and swapping (blocking: run in a worker thread)

    def check(self, *, force: bool = False) -> CheckResult:
        """Read ``CURRENT``; if it names another version, load, verify, warm and swap it in.

        Args:
            force: retry a version refused before (``/admin/reload``); the periodic check skips
                versions that failed a permanent check (checksum, compatibility, warm-up).

        Returns:
            What CURRENT names, what is served now, whether a swap happened, and the error if
            the version CURRENT names was refused.
        """
        with self._check_lock:
            try:
                self.last_result = self._check(force)
                return self.last_result
            finally:
                self.checked_once.set()

    def _check(self, force: bool) -> CheckResult:
        try:
            target = self.store.current()
        except Exception as exc:
            failure = self._fail(None, "store", f"reading CURRENT failed: {type(exc).__name__}: {exc}")
            return CheckResult(None, self._version(), False, failure)
        finally:
            self.checked_at = utcnow()
        if target is None or target == self._version():
            return CheckResult(target, self._version(), False)
        if target in self._refused and not force:
            return CheckResult(target, self._version(), False, self._refused[target])

        start = time.perf_counter()
        try:
            loaded = self._load(target)
        except VersionRefused as exc:
            failure = self._fail(target, exc.kind, str(exc))
            if exc.kind != "load":  # a failed download may work next time; a bad version never will
                self._refused[target] = failure
            return CheckResult(target, self._version(), False, failure)
        seconds = time.perf_counter() - start
        loaded.load_seconds = seconds
        self._swap(loaded)
        self._refused.pop(target, None)
        LOG.info("serving index version %s (loaded, verified and warmed in %.2fs)", target, seconds)
        if self.on_swap is not None:
            self.on_swap(loaded, seconds)
        return CheckResult(target, target, True)

    def _version(self) -> str | None:
        loaded = self._current
        return loaded.version if loaded is not None else None

    def _fail(self, version: str | None, kind: str, message: str) -> SwapFailure:
        failure = SwapFailure(version=version, kind=kind, error=message, at=utcnow())
        repeated = self.last_error is not None and (self.last_error.version, self.last_error.error) == (version, message)
        self.last_error = failure
        if not repeated:  # one log line per distinct failure, not one per poll
            LOG.error("refused index version %s (%s): %s; still serving %s", version, kind, message, self._version())
        if self.on_failure is not None:
            self.on_failure(failure)
        return failure

    def _swap(self, loaded: LoadedVersion) -> None:
        with self._pin_lock:
            old, self._current = self._current, loaded  # the one reference assignment
            self.swaps += 1
            # Retire under the pin lock: no request can read `old` and pin it after this point.
            idle = old is not None and old.retire()
        if idle:  # close outside the lock: requests pinning the new version need not wait
            old.close()

    def _load(self, version: str) -> LoadedVersion:
        from model.store import CacheTooSmall, ChecksumMismatch, IncompatibleIndex

        try:
            manifest = self.store.manifest(version)
        except Exception as exc:
            raise VersionRefused("load", f"reading the manifest of {version} failed: {exc}") from exc
        self._check_manifest(manifest)
        try:
            view = self.store.open(version, embedder=self.compatibility.embedder)
        except ChecksumMismatch as exc:
            raise VersionRefused("checksum", str(exc)) from exc
        except IncompatibleIndex as exc:
            raise VersionRefused("incompatible", str(exc)) from exc
        except CacheTooSmall as exc:  # permanent under this limit: retrying would only download and evict
            raise VersionRefused("cache", str(exc)) from exc
        except Exception as exc:
            raise VersionRefused("load", f"opening {version} failed: {type(exc).__name__}: {exc}") from exc
        try:
            self._warm(view)
            return LoadedVersion(view, self.make_retriever(view, self.embedder))
        except Exception as exc:
            view.close()
            if isinstance(exc, VersionRefused):
                raise
            raise VersionRefused("warmup", f"warming {version} failed: {type(exc).__name__}: {exc}") from exc

    def _check_manifest(self, manifest) -> None:
        self.compatibility.check(
            Compatibility.of_manifest(manifest),
            fix="publish a version built with the checkpoint's embedder, tokenizer and chunk sizes, or serve a checkpoint trained on it",
            error=lambda message: VersionRefused("incompatible", message),
        )

    def _warm(self, view) -> None:
        if self._probe_vectors is None:
            self._probe_vectors = self.embedder.encode(list(PROBE_TEXTS))
        results = view.search(self._probe_vectors, self.probe_k)
        if len(results) != len(PROBE_TEXTS):
            raise VersionRefused("warmup", f"{len(PROBE_TEXTS)} probe queries returned {len(results)} result lists")
        for hits in results:
            if len(hits) > self.probe_k:
                raise VersionRefused("warmup", f"a probe asked for {self.probe_k} neighbours and got {len(hits)}")
            for hit in hits:
                if not math.isfinite(hit.score):
                    raise VersionRefused("warmup", f"chunk {hit.chunk_id} scored {hit.score}")
        chunks = view.count  # live chunks: tombstoned ones are already left out
        if chunks > 0 and not any(results):
            raise VersionRefused("warmup", f"the version lists {chunks} live chunks but no probe found any")

    def close(self) -> None:
        """Retire the version served now (at shutdown)."""
        with self._pin_lock:
            old, self._current = self._current, None
            idle = old is not None and old.retire()
        if idle:
            old.close()


class Watcher:
    """Runs :meth:`IndexHolder.check` every ``interval_s`` seconds, off the event loop.

    Args:
        holder: the index holder.
        interval_s: seconds between checks of ``CURRENT``.
    """

    def __init__(self, holder: IndexHolder, interval_s: float):
        self.holder = holder
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        # Checks hold a worker thread for the whole load; a limiter of their own keeps them from
        # taking threads that requests need.
        self._limiter = anyio.CapacityLimiter(1)

    async def check_now(self, *, force: bool = False) -> CheckResult:
        return await anyio.to_thread.run_sync(lambda: self.holder.check(force=force), limiter=self._limiter)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="index-watcher")

    async def _run(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:  # the watcher must outlive any one bad check
                LOG.exception("index check failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
