"""Text generation with the RETRO model, retrieving from the pinned index version."""

from __future__ import annotations

from fastapi import APIRouter

from model.server.deps import Admitted, JsonBody, Pinned, RuntimeDep, ServerDep
from model.server.limits import LimitExceeded
from model.server.routes.common import RETRIEVAL_OFF_NOTE, neighbour_out, run_model_work
from model.server.schemas import ErrorBody, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"], dependencies=[JsonBody])  # 415 unless the body is sent as JSON

DEFAULT_NEW_TOKENS = 64


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def generate(body: GenerateRequest, server: ServerDep, runtime: RuntimeDep, _: Admitted, loaded: Pinned) -> GenerateResponse:
    """Continue a prompt; neighbours are retrieved once per completed 64-token chunk."""
    limits = server.limits
    max_new_tokens = body.max_new_tokens if body.max_new_tokens is not None else min(DEFAULT_NEW_TOKENS, limits.max_new_tokens)
    limits.check_new_tokens(max_new_tokens)
    if body.k is not None:
        limits.check_k(body.k)
    use_retrieval = body.retrieval and loaded is not None
    retriever = loaded.retriever if use_retrieval else None

    limits.check_prompt_bytes(body.prompt, runtime.longest_token_bytes)

    def work():
        from model.network.generation import generate as generate_text

        prompt_tokens = len(runtime.tokenizer.encode(body.prompt))
        limits.check_prompt_tokens(prompt_tokens)
        check_context(getattr(runtime.model.config, "max_seq_len", None), prompt_tokens + max_new_tokens, "prompt tokens + max_new_tokens")
        return generate_text(
            runtime.model,
            runtime.tokenizer,
            body.prompt,
            retriever=retriever,
            k=body.k,
            max_new_tokens=max_new_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            precision=runtime.precision,
        )

    result = await run_model_work(server, work)
    decode = runtime.tokenizer.decode
    return GenerateResponse(
        text=result.text,
        prompt_tokens=_count(result.prompt_tokens),
        generated_tokens=len(result.token_ids),
        retrieval=use_retrieval,
        index_version=loaded.version if use_retrieval else None,
        neighbours=[[neighbour_out(n, decode) for n in chunk] for chunk in result.neighbours] if use_retrieval else [],
        note=RETRIEVAL_OFF_NOTE if body.retrieval and not use_retrieval else None,
    )


def check_context(max_seq_len: int | None, needed: int, what: str) -> None:
    """The model attends over at most ``max_seq_len`` tokens; a request needing more is a 422."""
    if max_seq_len is not None and needed > max_seq_len:
        raise LimitExceeded("max_seq_len", needed, max_seq_len, what=what)


def _count(value) -> int:
    return value if isinstance(value, int) else len(value)
