"""Nearest chunks for query texts, from the pinned index version."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from model.server.deps import Admitted, JsonBody, Pinned, RuntimeDep, ServerDep
from model.server.routes.common import RETRIEVAL_OFF_NOTE, neighbour_out
from model.server.schemas import ErrorBody, RetrieveRequest, RetrieveResponse

router = APIRouter(tags=["retrieve"], dependencies=[JsonBody])  # 415 unless the body is sent as JSON


@router.post(
    "/v1/retrieve",
    response_model=RetrieveResponse,
    responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def retrieve(body: RetrieveRequest, server: ServerDep, runtime: RuntimeDep, _: Admitted, loaded: Pinned) -> RetrieveResponse:
    """k neighbours for each text; requests arriving together share one embed + search batch."""
    queries = body.queries
    server.limits.check_batch(len(queries))
    server.limits.check_k(body.k)
    server.limits.check_query_chars(queries)
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, RETRIEVAL_OFF_NOTE)
    assert server.batcher is not None
    hits = await server.batcher.retrieve(loaded, queries, body.k)
    decode = runtime.tokenizer.decode
    return RetrieveResponse(
        index_version=loaded.version,
        results=[[neighbour_out(n, decode) for n in row] for row in hits],
    )
