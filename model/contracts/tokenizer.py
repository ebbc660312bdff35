"""The RETRO tokenizer: a byte-level BPE (``tokenizers``), shipped by default, trainable on a corpus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.contracts.compat import TokenizerInfo

DEFAULT_TOKENIZER_PATH = Path(__file__).parents[1] / "assets" / "tokenizer.json"  # model/assets
TOKENIZER_FILE = "tokenizer.json"
EOS = "<|endoftext|>"
PAD = "<|pad|>"


class RetroTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` that knows its name and content hash.

    The manifest of every index version records ``name`` and ``sha256``; the ingest job refuses a
    refresh whose tokenizer differs from its parent's, and the server refuses an index made with a
    tokenizer other than its checkpoint's.
    """

    def __init__(self, tokenizer: Tokenizer, name: str):
        self._tok = tokenizer
        self.name = name
        self.sha256 = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
        self.eos_id = tokenizer.token_to_id(EOS)
        self.pad_id = tokenizer.token_to_id(PAD)
        self._bytes: list[bytes] | None = None  # token id -> bytes, built on first use

    @property
    def info(self) -> TokenizerInfo:
        """Its name and sha256, as checkpoints and manifests record them."""
        return TokenizerInfo(name=self.name, sha256=self.sha256)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The exact bytes each token stands for (special tokens: their literal text).

        A byte-level BPE token may hold part of a multi-byte character, which ``decode`` of that
        token alone renders as U+FFFD; joining these bytes and decoding once gives the text back.
        """
        if self._bytes is None:
            self._bytes = _token_byte_table(self._tok)
        table = self._bytes
        return [table[i] for i in ids]

    def to_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text: exactly what ``sha256`` hashes."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str, name: str) -> "RetroTokenizer":
        """Rebuild from :meth:`to_json` text (e.g. shipped inside a Beam pipeline to its workers)."""
        return cls(Tokenizer.from_str(text), name=name)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (with its name in ``tokenizer_name.json``) into a directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))
        (directory / "tokenizer_name.json").write_text(json.dumps({"name": self.name}))
        return directory / TOKENIZER_FILE

    @classmethod
    def load(cls, path: str | Path | None = None) -> "RetroTokenizer":
        """Load from a ``tokenizer.json`` file or a directory holding one; None: the default."""
        path = Path(path) if path is not None else DEFAULT_TOKENIZER_PATH
        directory = path if path.is_dir() else path.parent
        file = directory / TOKENIZER_FILE if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"no tokenizer at {file}; pass a tokenizer.json or a checkpoint dir")
        name_file = directory / "tokenizer_name.json"
        name = json.loads(name_file.read_text())["name"] if name_file.exists() else file.stem
        return cls(Tokenizer.from_file(str(file)), name=name)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character standing for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _token_byte_table(tok: Tokenizer) -> list[bytes]:
    alphabet = _byte_alphabet()
    added = {token.content for token in tok.get_added_tokens_decoder().values()}
    table = []
    for i in range(tok.get_vocab_size()):
        piece = tok.id_to_token(i) or ""
        if piece in added or any(c not in alphabet for c in piece):
            table.append(piece.encode("utf-8"))  # literal text (special tokens, a non-byte-level vocab)
        else:
            table.append(bytes(alphabet[c] for c in piece))
    return table


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 8192, name: str) -> RetroTokenizer:
    """Train a GPT-2 style byte-level BPE on texts.

    Args:
        texts: the training corpus, streamed.
        vocab_size: target vocabulary size, special tokens included.
        name: recorded in checkpoints and manifests.

    Returns:
        The trained tokenizer.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return RetroTokenizer(tok, name=name)


def _default_corpus() -> Iterable[str]:
    # Python's own documentation topics: English prose shipped with every CPython, so the
    # default tokenizer can be rebuilt anywhere, offline, byte for byte.
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


if __name__ == "__main__":
    tokenizer = train_tokenizer(_default_corpus(), vocab_size=8192, name="retrofresh-bpe-8k")
    tokenizer.save(DEFAULT_TOKENIZER_PATH.parent)
    print(f"wrote {DEFAULT_TOKENIZER_PATH} ({tokenizer.vocab_size} tokens, sha256 {tokenizer.sha256[:12]})")
