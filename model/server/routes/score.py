"""Loss and bits-per-byte of a text under the RETRO model, with retrieval on or off."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from model.server.deps import Admitted, JsonBody, Pinned, RuntimeDep, ServerDep
from model.server.routes.common import RETRIEVAL_OFF_NOTE, run_model_work
from model.server.schemas import ErrorBody, ScoreRequest, ScoreResponse

router = APIRouter(tags=["score"], dependencies=[JsonBody])  # 415 unless the body is sent as JSON


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def score(body: ScoreRequest, server: ServerDep, runtime: RuntimeDep, _: Admitted, loaded: Pinned) -> ScoreResponse:
    """Mean next-token loss (nats) and bits per UTF-8 byte of ``text``."""
    limits = server.limits
    if body.k is not None:
        limits.check_k(body.k)
    use_retrieval = body.retrieval and loaded is not None
    retriever = loaded.retriever if use_retrieval else None

    limits.check_prompt_bytes(body.text, runtime.longest_token_bytes, what="the text's length in tokens")

    def work():
        from model.network.scoring import score as score_text

        tokens = len(runtime.tokenizer.encode(body.text))
        limits.check_prompt_tokens(tokens, what="the text's length in tokens")
        if tokens < 2:  # the first token is never predicted: one token leaves nothing to score
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"the text is {tokens} token(s); scoring needs at least 2")
        return score_text(runtime.model, runtime.tokenizer, body.text, retriever=retriever, k=body.k, precision=runtime.precision)

    result = await run_model_work(server, work)
    return ScoreResponse(
        loss=float(result.loss),
        bits_per_byte=float(result.bits_per_byte),
        tokens=int(result.tokens),
        bytes=int(result.bytes),
        retrieval=use_retrieval,
        index_version=loaded.version if use_retrieval else None,
        note=RETRIEVAL_OFF_NOTE if body.retrieval and not use_retrieval else None,
    )
