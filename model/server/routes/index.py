"""What index version is served."""

from __future__ import annotations

from fastapi import APIRouter

from model.server.deps import ServerDep
from model.server.schemas import IndexInfo, SwapError
from model.server.swap import IndexHolder, SwapFailure

router = APIRouter(tags=["index"])


@router.get("/v1/index", response_model=IndexInfo)
async def index_info(server: ServerDep) -> IndexInfo:
    """The version served now (version, created_at, documents, chunks, watermark, loaded_at), the last swap
    error and the last re-verification of its shard files."""
    holder = server.holder
    if holder is None:
        return IndexInfo(version=None)
    info = describe(holder)
    if server.reverifier is not None:
        info.verification = server.reverifier.report()
    return info


def describe(holder: IndexHolder) -> IndexInfo:
    """The :class:`IndexInfo` of what ``holder`` serves now."""
    loaded = holder.current
    info = IndexInfo(version=None, swaps=holder.swaps, checked_at=holder.checked_at, last_error=swap_error(holder.last_error))
    if loaded is None:
        return info
    manifest = loaded.manifest
    stats = manifest.stats
    return info.model_copy(
        update=dict(
            version=loaded.version,
            created_at=manifest.created_at,
            documents=_field(stats, "documents"),
            chunks=_field(stats, "chunks"),
            watermark=getattr(manifest, "watermark", None),
            loaded_at=loaded.loaded_at,
            load_seconds=loaded.load_seconds,
            retrieval=True,
        )
    )


def swap_error(failure: SwapFailure | None) -> SwapError | None:
    if failure is None:
        return None
    return SwapError(version=failure.version, error=failure.error, kind=failure.kind, at=failure.at)


def _field(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
