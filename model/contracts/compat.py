"""The compatibility contract: what a model, an index version and an ingest run must agree on.

A RETRO model reads neighbours that an index version found with keys from one embedder, chunked
by one tokenizer into chunks of one size with continuations of one length. Each of those parties
records its terms as a :class:`Compatibility` (``of_config`` for a model, ``of_manifest`` for a
version, the constructor for a run or an embedder), and :meth:`Compatibility.check` is the one
comparison: every mismatch named, with both values and how to fix it, in one format.

Imports neither torch nor faiss: the client side of the project may use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

# Fields compared by Compatibility.check, in the order a message names them.
TERMS = ("embedder", "tokenizer", "chunk_tokens", "continuation_tokens")


class Incompatible(ValueError):
    """Two parties were made with another embedder, tokenizer, chunk or continuation size."""


@dataclass(frozen=True)
class EmbedderSpec:
    """What made an index's keys; stored in every manifest and checkpoint config, compared on open.

    The precision the encoder ran in (fp32 or bf16 autocast, ``model.contracts.precision``) is not part of
    it: keys and queries of both may share a store. Measured on all-MiniLM-L6-v2, bf16 vectors have
    cosine >= 0.99997 to the fp32 ones, and exact top-2 over a store holding both agreed with
    all-fp32 on 99.5% of queries, well inside what the IVF search gives up (docs/ARCHITECTURE.md,
    "Precision"). An encoder whose vectors moved further (int8: cosine 0.88) would need its own spec.
    """

    name: str
    dim: int
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 128
    sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: "dict | EmbedderSpec") -> "EmbedderSpec":
        """From :meth:`to_dict`'s dict (a spec is returned as it is: configs now hold specs, not dicts)."""
        if isinstance(data, cls):
            return data
        return cls(**{k: data[k] for k in ("name", "dim", "pooling", "normalize", "max_length", "sha256")})

    @classmethod
    def of(cls, value: "EmbedderSpec | dict | None") -> "EmbedderSpec | None":
        """A spec from a spec, its dict (as configs written so far hold it) or None."""
        return None if value is None else cls.from_dict(value)

    def __str__(self) -> str:
        norm = ", normalized" if self.normalize else ""
        return f"{self.name} (dim {self.dim}, {self.pooling} pooling{norm}, max_length {self.max_length}, weights {self.sha256[:12] or '?'})"


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer made a checkpoint's or a version's token ids: its name and the sha256 of its file.

    Reads like a dict too (``info["sha256"]``), as the manifest's record did, for scripts.
    """

    name: str
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, value: "TokenizerInfo | dict | Any | None") -> "TokenizerInfo | None":
        """From a TokenizerInfo, its dict, anything with ``name`` and ``sha256`` (a RetroTokenizer), or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(name=value["name"], sha256=value["sha256"])
        return cls(name=value.name, sha256=value.sha256)

    def __getitem__(self, name: str) -> Any:
        if name not in ("name", "sha256"):
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default) if name in ("name", "sha256") else default

    def __str__(self) -> str:
        return f"sha256 {self.sha256[:12]} ({self.name})"


# How a message says what each kind of party records: "version V has 64-token chunks, the checkpoint uses 32-token chunks".
_WORDS = {
    "index": ("was embedded with {}", "was chunked with tokenizer {}", "has {}-token chunks", "has {}-token continuations"),
    "model": ("was trained with neighbours embedded by {}", "was trained with tokenizer {}", "uses {}-token chunks", "uses {}-token continuations"),
    "run": ("would embed with {}", "would chunk with tokenizer {}", "would cut {}-token chunks", "would keep {}-token continuations"),
}


@dataclass(frozen=True)
class Compatibility:
    """One party's terms; a term that is None was not recorded and is not compared.

    Args:
        embedder: the spec of the encoder whose vectors it holds or queries with.
        tokenizer_sha256: the tokenizer's identity (its file's sha256).
        chunk_tokens: m.
        continuation_tokens: tokens kept after each chunk.
        tokenizer_name: the tokenizer's name, for messages (not compared: the sha256 is its identity).
        source: how messages name this party ("the checkpoint ckpt/", "version v000002 of gs://b/p").
        kind: "model", "index" or "run": how messages word what it records.
    """

    embedder: EmbedderSpec | None = None
    tokenizer_sha256: str | None = None
    chunk_tokens: int | None = None
    continuation_tokens: int | None = None
    tokenizer_name: str | None = field(default=None, compare=False)
    source: str = field(default="the checkpoint", compare=False)
    kind: str = field(default="model", compare=False)

    def __post_init__(self):
        if self.kind not in _WORDS:
            raise ValueError(f"kind must be one of {sorted(_WORDS)}, got {self.kind!r}")

    @classmethod
    def of(cls, *, embedder=None, tokenizer=None, chunk_tokens: int | None = None, continuation_tokens: int | None = None,
           source: str, kind: str) -> "Compatibility":
        """Terms from typed values or their dicts; ``tokenizer``: a TokenizerInfo, its dict or a RetroTokenizer."""
        info = TokenizerInfo.of(tokenizer)
        return cls(
            embedder=EmbedderSpec.of(embedder),
            tokenizer_sha256=info.sha256 if info else None,
            chunk_tokens=chunk_tokens,
            continuation_tokens=continuation_tokens,
            tokenizer_name=info.name if info else None,
            source=source,
            kind=kind,
        )

    @classmethod
    def of_config(cls, config, *, source: str = "the checkpoint") -> "Compatibility":
        """A model's terms from its ``RetroConfig`` (embedder and tokenizer as recorded, or None)."""
        return cls.of(embedder=config.embedder, tokenizer=config.tokenizer, chunk_tokens=config.chunk_tokens,
                      continuation_tokens=config.continuation_tokens, source=source, kind="model")

    @classmethod
    def of_manifest(cls, manifest, *, source: str | None = None) -> "Compatibility":
        """An index version's terms from its ``Manifest``; source: default "version V"."""
        return cls.of(embedder=manifest.embedder, tokenizer=manifest.tokenizer, chunk_tokens=manifest.chunk_tokens,
                      continuation_tokens=manifest.continuation_tokens, source=source or f"version {manifest.version}", kind="index")

    def value(self, term: str):
        """One term's value, the tokenizer as "sha256 <12 hex> (<name>)"."""
        if term == "tokenizer":
            if self.tokenizer_sha256 is None:
                return None
            name = f" ({self.tokenizer_name})" if self.tokenizer_name else ""
            return f"sha256 {self.tokenizer_sha256[:12]}{name}"
        return getattr(self, term)

    def mismatches(self, other: "Compatibility", terms: Iterable[str] = TERMS) -> list[str]:
        """The terms both record with different values."""
        out = []
        for term in terms:
            if term not in TERMS:
                raise ValueError(f"unknown term {term!r}; the terms are {TERMS}")
            key = "tokenizer_sha256" if term == "tokenizer" else term  # the sha256 is its identity; the name a label
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is not None and theirs is not None and mine != theirs:
                out.append(term)
        return out

    def describe(self, term: str) -> str:
        """What this party records of one term, worded for its kind ("has 64-token chunks")."""
        return _WORDS[self.kind][TERMS.index(term)].format(self.value(term))

    def check(self, other: "Compatibility", *, fix: str, terms: Iterable[str] = TERMS, error: Callable[[str], Exception] = Incompatible) -> None:
        """Raise ``error`` naming every term in ``terms`` that this party and ``other`` both record differently.

        The message: "<other> <what it records>, <this> <what it records>[; ...]; <fix>", e.g.
        "version v2 has 64-token chunks, the checkpoint uses 32-token chunks; ...".

        Args:
            other: the party checked against (usually the index version or the recorded model).
            fix: how to fix it, said to the user.
            terms: which terms to compare (default all).
            error: makes the exception raised from the message (default :class:`Incompatible`).
        """
        bad = self.mismatches(other, terms)
        if bad:
            said = "; ".join(f"{other.source} {other.describe(term)}, {self.source} {self.describe(term)}" for term in bad)
            raise error(f"{said}; {fix}")
