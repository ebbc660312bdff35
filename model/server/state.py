"""One server's state (runtime, index holder, re-verifier, batcher, limits, metrics) and its start-up and shutdown."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import anyio
from fastapi import FastAPI

from model.contracts.settings import Settings
from model.server.batching import RetrieveBatcher
from model.server.limits import Admission, Limits
from model.server.metrics import ServerMetrics
from model.server.reverify import Reverifier
from model.server.runtime import Runtime, load_runtime
from model.server.swap import IndexHolder, LoadedVersion, SwapFailure, Watcher

LOG = logging.getLogger(__name__)


@dataclass
class ServerState:
    """Everything the routes reach through :mod:`model.server.deps`; one per app, no globals."""

    settings: Settings
    limits: Limits
    admission: Admission
    metrics: ServerMetrics
    model_limiter: anyio.CapacityLimiter
    runtime: Runtime | None = None
    holder: IndexHolder | None = None
    watcher: Watcher | None = None
    reverifier: Reverifier | None = None
    batcher: RetrieveBatcher | None = None

    @classmethod
    def create(cls, settings: Settings) -> "ServerState":
        state: ServerState

        def version_info():
            loaded = state.holder.current if state.holder is not None else None
            return (loaded.version, loaded.manifest.created_at) if loaded is not None else (None, None)

        state = cls(
            settings=settings,
            limits=Limits.from_settings(settings),
            admission=Admission(settings.max_inflight),
            metrics=ServerMetrics(version_info),
            model_limiter=anyio.CapacityLimiter(settings.model_workers),
        )
        return state

    async def start(self) -> None:
        """Load the model, embedder and store (off the event loop), then start watching CURRENT."""
        self.runtime = await anyio.to_thread.run_sync(load_runtime, self.settings)
        from model.store.retriever import StoreRetriever

        self.holder = IndexHolder(
            self.runtime.store,
            self.runtime.embedder,
            self.runtime.compatibility,
            make_retriever=StoreRetriever,
            on_swap=self._on_swap,
            on_failure=self._on_failure,
        )
        self.batcher = RetrieveBatcher(
            self.runtime.embedder,
            window_s=self.settings.batch_window_ms / 1000.0,
            max_texts=max(self.settings.max_batch, 1) * 4,
            on_batch=self.metrics.batch_size.observe,
        )
        self.batcher.start()
        # The first check runs in the watcher, so /healthz answers while the first version loads
        # and /readyz says when it is in.
        self.watcher = Watcher(self.holder, self.settings.reload_interval_s)
        self.watcher.start()
        self.reverifier = Reverifier(self.holder, self.settings.reverify_interval_s, self.metrics,
                                     verifier=self.runtime.store.cache.verifier)
        self.reverifier.start()

    async def stop(self) -> None:
        if self.reverifier is not None:
            await self.reverifier.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.holder is not None:
            self.holder.close()

    def _on_swap(self, loaded: LoadedVersion, seconds: float) -> None:
        self.metrics.swaps.inc()
        self.metrics.swap_seconds.observe(seconds)
        self.metrics.set_version(loaded.version)

    def _on_failure(self, failure: SwapFailure) -> None:
        self.metrics.swap_failures.labels(kind=failure.kind).inc()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """FastAPI lifespan: start the app's :class:`ServerState`, stop it at shutdown."""
    state: ServerState = app.state.server
    try:
        await state.start()
        yield
    finally:
        await state.stop()
