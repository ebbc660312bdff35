"""Request and response models of the RETRO server's HTTP API (pydantic only: the client imports this)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

# Hard sanity bounds only. The configurable limits (Settings.max_k, max_batch, ...) are checked by
# the server, which answers with the name of the limit a request broke.


# Counts are strict integers: JSON true is not k=1, nor "3" k=3, nor 2.0 a count.
Count = StrictInt


class _Request(BaseModel):
    # Unknown fields are errors, not silently ignored: a misspelt "max_new_token" must not
    # quietly fall back to the default.
    model_config = ConfigDict(extra="forbid")


# health


class Health(BaseModel):
    """``GET /healthz``: the process is up and its event loop answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """``GET /readyz``: whether the server takes traffic, and whether retrieval is on."""

    ready: bool
    retrieval: bool = Field(description="false while no index version is loaded: answers come from the model alone")
    index_version: str | None = None
    reason: str | None = Field(None, description="why not ready, or why retrieval is off")


# index


class SwapError(BaseModel):
    """The last version the server refused to serve, and why."""

    version: str | None
    error: str
    kind: str = Field(description="checksum, incompatible, cache, load, warmup or store")
    at: datetime


class CorruptFile(BaseModel):
    """A served shard file whose bytes no longer match the sha256 its ``shard.json`` records."""

    shard: str
    file: str
    path: str
    error: str


class IndexVerification(BaseModel):
    """The background re-verification of the served version's shard files (``RETROFRESH_REVERIFY_INTERVAL_S``)."""

    interval_s: float = Field(description="seconds between passes; 0: off (POST /admin/reverify still runs one)")
    passes: int = Field(0, description="passes completed since the process started")
    version: str | None = Field(None, description="the version the last pass checked")
    started_at: datetime | None = None
    verified_at: datetime | None = Field(None, description="when the last pass finished; null before the first")
    seconds: float | None = None
    files: int = 0
    bytes: int = 0
    shards_ok: int = 0
    shards_corrupt: list[str] = Field(default_factory=list, description="shards with a file that no longer matches")
    corrupt_files: list[CorruptFile] = Field(default_factory=list)


class IndexInfo(BaseModel):
    """``GET /v1/index``: the version being served."""

    version: str | None = Field(description="null while no version is loaded (retrieval off)")
    created_at: datetime | None = None
    documents: int | None = None
    chunks: int | None = None
    watermark: datetime | None = Field(None, description="newest fetched_at of any document in the version")
    loaded_at: datetime | None = Field(None, description="when the version was swapped in")
    load_seconds: float | None = Field(None, description="how long it took to download, verify, map and warm before the swap")
    retrieval: bool = False
    swaps: int = Field(0, description="versions swapped in since the process started (the first load included)")
    checked_at: datetime | None = Field(None, description="last time the server read CURRENT")
    last_error: SwapError | None = None
    verification: IndexVerification | None = Field(None, description="the last re-verification of the served shards")


# retrieve


class RetrieveRequest(_Request):
    """``POST /v1/retrieve``: one text or a batch of texts, k neighbours each."""

    text: str | None = Field(None, min_length=1, description="one query (a chunk of text)")
    texts: list[str] | None = Field(None, min_length=1, description="a batch of queries")
    k: Count = Field(2, ge=1, description="neighbours per query")

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> "RetrieveRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and any(not t for t in self.texts):
            raise ValueError("'texts' must not contain empty strings")
        return self

    @property
    def queries(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class NeighbourOut(BaseModel):
    """A retrieved chunk as the API shows it."""

    chunk_id: int
    doc_id: str
    url: str
    text: str
    continuation: str = Field("", description="the text that follows the chunk in its document")
    score: float


class RetrieveResponse(BaseModel):
    index_version: str
    results: list[list[NeighbourOut]] = Field(description="one list of neighbours per query, best first")


# generate


class GenerateRequest(_Request):
    """``POST /v1/generate``."""

    prompt: str = Field(min_length=1)
    max_new_tokens: Count | None = Field(None, ge=1, description="null: 64, or the server's limit if that is lower")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 means greedy")
    top_k: Count | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63)
    retrieval: bool = Field(True, description="false: generate without neighbours")
    k: Count | None = Field(None, ge=1, description="neighbours per chunk; null: the model's default")


class GenerateResponse(BaseModel):
    text: str = Field(description="the generated continuation (the prompt excluded)")
    prompt_tokens: int
    generated_tokens: int
    retrieval: bool = Field(description="whether neighbours were retrieved")
    index_version: str | None = Field(description="the version the neighbours came from; null when retrieval was off")
    neighbours: list[list[NeighbourOut]] = Field(description="neighbours used, one list per retrieved chunk")
    note: str | None = Field(None, description="why retrieval was off, when it was asked for")


# score


class ScoreRequest(_Request):
    """``POST /v1/score``."""

    text: str = Field(min_length=1)
    retrieval: bool = True
    k: Count | None = Field(None, ge=1)


class ScoreResponse(BaseModel):
    loss: float = Field(description="mean next-token cross-entropy, nats")
    bits_per_byte: float
    tokens: int
    bytes: int
    retrieval: bool
    index_version: str | None
    note: str | None = None


# admin


class ReloadResponse(BaseModel):
    """``POST /admin/reload``: what the check of CURRENT found and did."""

    current: str | None = Field(description="what CURRENT names in the store")
    version: str | None = Field(description="the version being served after the check")
    swapped: bool
    error: SwapError | None = Field(None, description="set when CURRENT names a version the server refused")


# errors


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: ``detail`` says what was wrong; ``limit`` names a broken limit."""

    detail: str
    limit: str | None = None
    maximum: int | None = None
    errors: list[dict] | None = None
