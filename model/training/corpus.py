"""Text and JSONL files as documents, and indexing them into a fresh store version before training."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from model.chunking import chunk_document
from model.ids import content_hash, doc_id
from model.tokenizer import RetroTokenizer

LOG = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


def read_documents(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """Load ``(url, text)`` documents from files.

    A ``.jsonl`` file holds one JSON object per line with a ``text`` field and optionally ``url``
    or ``id`` (default ``<path>#<line>``); any other file is one document (its URL is its path).

    Args:
        paths: files to read.

    Returns:
        The non-empty documents, in file order.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a JSONL line that is not an object with a string ``text`` (file and line named).
    """
    docs: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{number}: expected an object with a string 'text' field")
                url = str(record.get("url") or record.get("id") or f"{path.resolve()}#{number}")
                if record["text"].strip():
                    docs.append((url, record["text"]))
        else:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                docs.append((str(path.resolve()), text))
    if not docs:
        raise ValueError(f"no text found in {[str(p) for p in paths]}")
    return docs


def index_documents(store, documents: Sequence[tuple[str, str]], tokenizer: RetroTokenizer, embedder, *, progress: bool = False) -> str:
    """Chunk, embed and publish documents as the first version of an empty store.

    Args:
        store: a :class:`model.store.Store` with nothing published yet.
        documents: ``(url, text)`` pairs.
        tokenizer: cuts the chunks (the model's tokenizer).
        embedder: makes the keys (:class:`model.embedder.Embedder`).
        progress: show the embedding progress bar.

    Returns:
        The published version id.

    Raises:
        ValueError: the store already has a published version (train from it with ``--store``).
    """
    from model.store import Manifest

    if store.current() is not None:
        raise ValueError(
            f"store {store.uri} already has version {store.current()}; train on it without --input, "
            "or index the files into a new store directory"
        )
    chunks = []
    seen: set[str] = set()
    for url, text in documents:
        did = doc_id(url)
        if did in seen:
            raise ValueError(f"document {url} appears twice")
        seen.add(did)
        chunks.extend(chunk_document(tokenizer.encode(text), doc_id=did, url=url, content_hash=content_hash(text), tokenizer=tokenizer))
    LOG.info("indexing %d documents (%d chunks) into %s", len(documents), len(chunks), store.uri)
    vectors = embedder.encode([c.text for c in chunks], progress=progress)
    shard = store.write_shard(chunks, vectors, embedder=embedder.spec)
    manifest = Manifest.next(
        None,
        version=store.new_version_id(),
        embedder=embedder.spec,
        tokenizer={"name": tokenizer.name, "sha256": tokenizer.sha256},
        add_shards=[shard],
        tombstones=[],
        ledger=None,
        documents=len(documents),
        watermark=datetime.now(timezone.utc),
        sources=["files"],
    )
    store.publish(manifest, expected_current=None)
    return manifest.version
