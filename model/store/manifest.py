"""What a version is: the manifest (pydantic) and the shard entries it lists.

Tombstones are ordered. A shard's ``since`` is the number of tombstones the version had when the
shard was added; tombstone ``i`` hides a chunk in shard ``s`` only if ``i >= s.since``. A document
that changes A -> B -> A therefore gets its A chunks back in the new shard while the first shard's
copies stay hidden (chunk ids are a hash of the content, so A's ids repeat).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.contracts.chunking import CHUNK_TOKENS, CONTINUATION_TOKENS
from model.contracts.clock import as_utc, utcnow
from model.contracts.compat import Compatibility, EmbedderSpec, TokenizerInfo
from model.store.errors import IncompatibleIndex, StoreError

FORMAT_VERSION = 1


class _Record(BaseModel):
    """A small record that also reads like a dict (``m.tokenizer["sha256"]``) for scripts."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


class ShardInfo(_Record):
    """One shard as a manifest lists it; ``sha256`` is that of its ``shard.json``."""

    id: str
    sha256: str
    count: int = Field(ge=0)
    factory: str
    lineage: str | None = None
    bytes: int = Field(0, ge=0, description="size of the shard's files together")
    since: int = Field(0, ge=0, description="tombstones before this position do not apply to the shard")


class SearchParams(_Record):
    """Search-time knobs recorded per version (FAISS ``nprobe`` for IVF, ``efSearch`` for HNSW).

    IVF scanning is bound by memory traffic, so search time grows with nprobe / nlist. nprobe 8 of
    ~4·sqrt(n) lists: recall@2 ~0.97 on clustered 384-d keys (``python -m bench.index`` prints
    the whole trade-off); raise it per version for more recall.
    """

    nprobe: int = Field(8, ge=1)
    efSearch: int = Field(64, ge=1)


class Stats(_Record):
    """``chunks`` counts live chunks: listed minus tombstoned."""

    documents: int = 0
    chunks: int = 0
    bytes: int = 0





class Manifest(BaseModel):
    """One index version: shards, tombstones and what made the keys. Immutable once written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    version: str
    parent: str | None = None
    created_at: datetime
    shards: list[ShardInfo] = []
    tombstones: list[int] = []
    embedder: EmbedderSpec
    tokenizer: TokenizerInfo
    chunk_tokens: int = CHUNK_TOKENS
    continuation_tokens: int = CONTINUATION_TOKENS
    metric: str = "inner_product"
    search: SearchParams = SearchParams()
    stats: Stats = Stats()
    watermark: datetime | None = None
    sources: list[str] = []
    ledger: str | None = None

    @field_validator("created_at", "watermark")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(f"manifest format {value} is newer than this retrofresh understands ({FORMAT_VERSION}); upgrade retrofresh")
        return value

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def documents(self) -> int:
        return self.stats.documents

    @property
    def chunks(self) -> int:
        return self.stats.chunks

    @property
    def lineage(self) -> str | None:
        """The lineage holding most of this version's IVF chunks: pass it to ``write_shard`` so
        large delta shards share its quantizer (and compact into one shard); None if no IVF."""
        sizes: dict[str, int] = {}
        for s in self.shards:
            if s.lineage and s.factory.startswith("IVF"):
                sizes[s.lineage] = sizes.get(s.lineage, 0) + s.count
        return max(sizes, key=sizes.get) if sizes else None

    def retuned(self, *, version: str, nprobe: int, parent: str | None) -> "Manifest":
        """The same version with another ``search.nprobe``, under a new id (manifests are immutable).

        Args:
            version: the new id (:meth:`Store.new_version_id`).
            nprobe: the tuned value.
            parent: the new manifest's parent: this version's own parent when it replaces an
                unpublished draft, this version when it follows a published one.
        """
        return self.model_copy(update={
            "version": version,
            "parent": parent,
            "created_at": utcnow(),
            "search": self.search.model_copy(update={"nprobe": int(nprobe)}),
        })

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str, *, where: str = "manifest") -> "Manifest":
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise StoreError(f"{where} is not a valid manifest: {exc}") from exc

    def shard_tombstones(self, shard: ShardInfo) -> list[int]:
        """The tombstones that apply to one shard of this version."""
        return self.tombstones[shard.since :]

    @classmethod
    def next(
        cls,
        parent: "Manifest | None",
        *,
        version: str,
        embedder: EmbedderSpec,
        tokenizer: dict | TokenizerInfo,
        add_shards: list[ShardInfo],
        tombstones: Iterable[int],
        ledger: str | None,
        documents: int,
        watermark: datetime | None,
        sources: list[str],
        search: SearchParams | dict | None = None,
        created_at: datetime | None = None,
        chunk_tokens: int | None = None,
        continuation_tokens: int | None = None,
    ) -> "Manifest":
        """The manifest of a version built on ``parent``: its shards plus new ones, its
        tombstones plus new ones; stats computed.

        Args:
            parent: the version this one extends (None for the first or a full rebuild).
            version: the new version id (:meth:`Store.new_version_id`).
            embedder: what made the new shards' keys; must equal the parent's if it has shards.
            tokenizer: ``{"name", "sha256"}`` of the tokenizer that made the chunks.
            add_shards: shards written for this version (:meth:`Store.write_shard`).
            tombstones: chunk ids deleted since the parent (old ids of changed or gone documents).
            ledger: the new version's ledger path (:meth:`Store.write_ledger`), or None.
            documents: live documents in the new version.
            watermark: newest ``fetched_at`` of this run; the result keeps the newer of it and the
                parent's.
            sources: names of the sources ingested; merged with the parent's.
            search: search parameters; default: the parent's (or the defaults).
            created_at: default now (UTC).
            chunk_tokens: default the parent's, else 64.
            continuation_tokens: default the parent's, else 64.

        Returns:
            The new, unwritten manifest.

        Raises:
            IncompatibleIndex: the parent has shards made by another embedder, or chunks made with
                another tokenizer or chunk size.
            StoreError: a shard listed twice.
        """
        tokenizer = TokenizerInfo.of(tokenizer)
        chunk_tokens = chunk_tokens if chunk_tokens is not None else (parent.chunk_tokens if parent else CHUNK_TOKENS)
        continuation_tokens = (
            continuation_tokens if continuation_tokens is not None else (parent.continuation_tokens if parent else CONTINUATION_TOKENS)
        )
        if parent is not None and parent.shards:
            new = Compatibility.of(embedder=embedder, tokenizer=tokenizer, chunk_tokens=chunk_tokens, source=f"version {version}", kind="run")
            old = Compatibility.of_manifest(parent, source=f"its parent {parent.version}")
            new.check(old, terms=("embedder",), error=IncompatibleIndex, fix="re-embed everything into a new version with parent=None instead")
            new.check(old, terms=("tokenizer", "chunk_tokens"), error=IncompatibleIndex, fix="rebuild with parent=None")
        old_shards = list(parent.shards) if parent else []
        old_tombstones = list(parent.tombstones) if parent else []
        new_tombstones = list(dict.fromkeys(int(t) for t in tombstones))  # de-duplicated, in order
        all_tombstones = old_tombstones + new_tombstones
        # New shards were written after every tombstone so far: none of them applies.
        added = [s.model_copy(update={"since": len(all_tombstones)}) for s in add_shards]
        shards = old_shards + added
        ids = [s.id for s in shards]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise StoreError(f"shard {dup} is listed twice in version {version}; add each shard once")
        merged_sources = list(dict.fromkeys([*(parent.sources if parent else []), *sources]))
        if watermark is not None and parent is not None and parent.watermark is not None:
            watermark = max(as_utc(watermark), parent.watermark)
        elif watermark is None and parent is not None:
            watermark = parent.watermark
        if search is None:
            search = parent.search if parent else SearchParams()
        return cls(
            version=version,
            parent=parent.version if parent else None,
            created_at=created_at or utcnow(),
            shards=shards,
            tombstones=all_tombstones,
            embedder=embedder,
            tokenizer=tokenizer,
            chunk_tokens=chunk_tokens,
            continuation_tokens=continuation_tokens,
            search=SearchParams.model_validate(search.model_dump() if isinstance(search, SearchParams) else search),
            stats=Stats(
                documents=int(documents),
                chunks=max(0, sum(s.count for s in shards) - len(all_tombstones)),
                bytes=sum(s.bytes for s in shards),
            ),
            watermark=watermark,
            sources=merged_sources,
            ledger=ledger,
        )
