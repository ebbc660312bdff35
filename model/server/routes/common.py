"""Helpers shared by the model routes: neighbour rendering and running model work off the loop."""

from __future__ import annotations

from typing import Callable, TypeVar

import anyio
from fastapi import HTTPException, status

from model.contracts.retrieval import Neighbour
from model.server.schemas import NeighbourOut

T = TypeVar("T")

RETRIEVAL_OFF_NOTE = "no index version is loaded yet: retrieval is off"


def neighbour_out(neighbour: Neighbour, decode: Callable[[list[int]], str]) -> NeighbourOut:
    """The API form of a neighbour; ``decode`` renders its continuation tokens as text."""
    return NeighbourOut(
        chunk_id=neighbour.chunk_id,
        doc_id=neighbour.doc_id,
        url=neighbour.url,
        text=neighbour.text,
        continuation=decode(neighbour.continuation) if neighbour.continuation else "",
        score=float(neighbour.score),
    )


async def run_model_work(server, fn: Callable[[], T]) -> T:
    """Run blocking model work in a worker thread, at most ``model_workers`` at once.

    The model's functions raise ValueError for inputs they cannot take (bad sampling settings, a
    text too short to score); those are the client's to fix, so they become a 422.
    """
    try:
        return await anyio.to_thread.run_sync(fn, limiter=server.model_limiter)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
