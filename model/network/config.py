"""The network's shape: ``RetroConfig`` (saved as a checkpoint's ``config.json``) and its named presets.

The server's and the CLI's settings from the environment are :mod:`model.contracts.settings`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from model.contracts.compat import EmbedderSpec, TokenizerInfo


# The paper-like 185M configuration of the RETRO paper's smallest decoder (d 896, 12 layers, CCA
# from layer 6 every 3rd), used by `bench.model --gpu`; the small ones are CPU sized.
_PRESETS = {
    "tiny": dict(d_model=64, n_layers=4, n_heads=4, cca_layers=(2, 4), enc_d_model=64, enc_n_heads=4, max_seq_len=512),
    # The demo's model (model/assets/demo-checkpoint): 2.5M parameters, 10 MB, trains on 2 cores.
    "mini": dict(d_model=128, n_layers=4, n_heads=4, cca_layers=(2, 4), enc_d_model=128, enc_n_heads=4, max_seq_len=512,
                 cca_previous_token_keys=True),
    "small": dict(d_model=256, n_layers=6, n_heads=8, cca_layers=(3, 6), enc_d_model=256, enc_n_heads=8, max_seq_len=512),
    "185m": dict(vocab_size=32000, d_model=896, n_layers=12, n_heads=14, head_dim=64, cca_layers=(6, 9, 12),
                 enc_d_model=896, enc_n_heads=14, max_seq_len=2048),
}


@dataclass
class RetroConfig:
    """The shape of a RETRO network (decoder, neighbour encoder, chunked cross-attention).

    Saved as ``config.json`` beside ``model.safetensors``; ``embedder`` and ``tokenizer`` record
    what the model was trained with so a server can refuse an index made by something else
    (``model.contracts.compat.Compatibility.of_config``). Given as dicts (config.json), they become typed values.
    """

    vocab_size: int = 8192
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    head_dim: int | None = None  # None: d_model // n_heads
    cca_layers: tuple[int, ...] = (6, 9, 12)  # 1-based decoder layers with CCA (paper: every 3rd from 6)
    enc_layers: int = 2
    enc_d_model: int | None = None  # None: d_model
    enc_n_heads: int | None = None  # None: n_heads
    chunk_tokens: int = 64  # m
    continuation_tokens: int = 64  # a neighbour is r = chunk_tokens + continuation_tokens tokens
    k: int = 2  # neighbours per chunk
    # CCA keys also read the neighbour token before them, and CCA starts as an induction head (model.network.retro):
    # what lets a small model trained from scratch copy from its neighbours. Needs d_model = enc_d_model = H·d.
    cca_previous_token_keys: bool = False
    # CCA queries also read the embedding of the token just read (RETRO-fit): in a frozen pretrained
    # base the hidden state at a late layer no longer holds that token, so the induction match above
    # needs it from the input side. Needs cca_previous_token_keys.
    cca_token_query: bool = False
    max_seq_len: int = 2048
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # decoder logits reuse the token embedding, as GPT-2 does
    pad_token_id: int = 0  # fills missing neighbour tokens; always masked, so its value is moot
    embedder: EmbedderSpec | None = None  # the encoder that made the keys of the index it was trained on
    tokenizer: TokenizerInfo | None = None  # the RetroTokenizer that made its token ids
    extra: dict = field(default_factory=dict)  # free-form notes (training run, data), never read by the net

    def __post_init__(self):
        self.cca_layers = tuple(int(i) for i in self.cca_layers)
        self.embedder = EmbedderSpec.of(self.embedder)
        self.tokenizer = TokenizerInfo.of(self.tokenizer)
        if self.enc_d_model is None:
            self.enc_d_model = self.d_model
        if self.enc_n_heads is None:
            self.enc_n_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; set head_dim")
            self.head_dim = self.d_model // self.n_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary positions, got {self.head_dim}")
        if self.enc_d_model % self.enc_n_heads:
            raise ValueError(f"enc_d_model {self.enc_d_model} is not divisible by enc_n_heads {self.enc_n_heads}")
        if (self.enc_d_model // self.enc_n_heads) % 2:
            raise ValueError("encoder head size must be even for rotary positions")
        if not self.cca_layers or sorted(set(self.cca_layers)) != list(self.cca_layers):
            raise ValueError(f"cca_layers must be a non-empty increasing tuple, got {self.cca_layers}")
        if self.cca_layers[0] < 1 or self.cca_layers[-1] > self.n_layers:
            raise ValueError(f"cca_layers {self.cca_layers} must lie in 1..n_layers={self.n_layers}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "enc_layers", "chunk_tokens", "k", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cca_previous_token_keys and not self.d_model == self.enc_d_model == self.n_heads * self.head_dim:
            raise ValueError(
                f"cca_previous_token_keys starts CCA as identity maps, so d_model ({self.d_model}), enc_d_model "
                f"({self.enc_d_model}) and n_heads·head_dim ({self.n_heads * self.head_dim}) must be equal"
            )
        if self.cca_token_query and not self.cca_previous_token_keys:
            raise ValueError("cca_token_query completes the induction head of cca_previous_token_keys; set both")
        if self.continuation_tokens < 0:
            raise ValueError(f"continuation_tokens must be >= 0, got {self.continuation_tokens}")

    @property
    def neighbour_tokens(self) -> int:
        """r: tokens per neighbour (chunk plus continuation)."""
        return self.chunk_tokens + self.continuation_tokens

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cca_layers"] = list(self.cca_layers)
        if not self.cca_token_query:  # written only when set: a checkpoint saved before it existed keeps its bytes
            del data["cca_token_query"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RetroConfig":
        """Build from a dict (e.g. ``config.json``); unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RetroConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def preset(cls, name: str, **overrides) -> "RetroConfig":
        """A named configuration ("tiny", "mini", "small", "185m") with fields overridden.

        Args:
            name: one of the preset names.
            **overrides: RetroConfig fields to change.

        Returns:
            The config.
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})
