"""The server's background tasks (the index watcher, the re-verifier, the retrieve batcher) stop alike."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has ended (None: nothing runs)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
