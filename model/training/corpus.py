"""Text and JSONL files as documents, and indexing them into a fresh store version before training."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from model.contracts.tokenizer import RetroTokenizer

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
            # utf-8-sig: a byte order mark (Windows editors write one) is not part of the first line.
            for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
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
            text = path.read_text(encoding="utf-8-sig")
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
        embedder: makes the keys (:class:`model.contracts.embedder.Embedder`).
        progress: show the embedding progress bar.

    Returns:
        The published version id.

    Raises:
        ValueError: the store already has a published version (train from it with ``--store``), or
            a URL is listed twice.
    """
    from model.store.documents import publish_documents

    if store.current() is not None:
        raise ValueError(
            f"store {store.uri} already has version {store.current()}; train on it without --input, "
            "or index the files into a new store directory"
        )
    LOG.info("indexing %d documents into %s", len(documents), store.uri)
    return publish_documents(store, documents, tokenizer, embedder, source="files", progress=progress)
