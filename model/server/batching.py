"""Coalesce concurrent retrieve requests into one embed + search call per index version."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

import anyio

from model.contracts.retrieval import Neighbour
from model.server.background import cancel
from model.server.swap import LoadedVersion

LOG = logging.getLogger(__name__)


@dataclass
class _Pending:
    loaded: LoadedVersion
    texts: list[str]
    k: int
    future: asyncio.Future = field(repr=False)


class RetrieveBatcher:
    """Collects retrieve requests that arrive within ``window_s`` and serves them as one batch.

    Embedding is the expensive step and it is much cheaper per text in batches, so twenty
    concurrent single-text requests cost about one forward pass, not twenty. Requests pinned to
    different index versions are searched separately, each against the version it pinned.

    Args:
        embedder: the query embedder (``encode(texts) -> (n, dim) float32``).
        window_s: how long the first request of a batch waits for company. While a batch runs,
            new requests queue up and form the next batch without waiting.
        max_texts: the most texts embedded in one call.
        on_batch: called with the number of texts in each batch (for metrics).
    """

    def __init__(self, embedder, *, window_s: float = 0.002, max_texts: int = 256, on_batch: Callable[[int], None] | None = None):
        self.embedder = embedder
        self.window_s = window_s
        self.max_texts = max_texts
        self.on_batch = on_batch
        self.batches = 0  # embed + search calls made, for tests and logs
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="retrieve-batcher")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def retrieve(self, loaded: LoadedVersion, texts: list[str], k: int) -> list[list[Neighbour]]:
        """Neighbours for each text from the version ``loaded`` (which the caller keeps pinned).

        Args:
            loaded: the version the request pinned.
            texts: query texts.
            k: neighbours per text.

        Returns:
            One list of up to k neighbours per text, best first.
        """
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(loaded, list(texts), k, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            deadline = loop.time() + self.window_s
            while size < self.max_texts:
                try:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        pending = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        pending = self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(pending)
                size += len(pending.texts)
            await self._serve(batch)

    async def _serve(self, batch: list[_Pending]) -> None:
        by_version: dict[int, list[_Pending]] = {}
        for pending in batch:
            if not pending.future.done():  # skip requests whose client already left
                by_version.setdefault(id(pending.loaded), []).append(pending)
        for group in by_version.values():
            try:
                results = await anyio.to_thread.run_sync(self._search, group)
            except Exception as exc:  # one bad batch fails its requests, never the batcher
                LOG.exception("retrieve batch of %d requests failed", len(group))
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, result in zip(group, results):
                if not pending.future.done():
                    pending.future.set_result(result)

    def _search(self, group: list[_Pending]) -> list[list[list[Neighbour]]]:
        texts = [text for pending in group for text in pending.texts]
        k = max(pending.k for pending in group)
        # Batches come in every size and length: fixed shapes keep the CPU kernels' memory bounded.
        vectors = self.embedder.encode(texts, fixed_shapes=True)
        hits = group[0].loaded.view.search(vectors, k)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(texts))
        out, start = [], 0
        for pending in group:
            out.append([row[: pending.k] for row in hits[start : start + len(pending.texts)]])
            start += len(pending.texts)
        return out
