"""Configuration: ``RetroConfig`` (the network's shape) and ``Settings`` (server and CLI, from the env)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.compat import EmbedderSpec, TokenizerInfo


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
    (``model.compat.Compatibility.of_config``). Given as dicts (config.json), they become typed values.
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
    # CCA keys also read the neighbour token before them, and CCA starts as an induction head (model.retro):
    # what lets a small model trained from scratch copy from its neighbours. Needs d_model = enc_d_model = H·d.
    cca_previous_token_keys: bool = False
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
        if self.continuation_tokens < 0:
            raise ValueError(f"continuation_tokens must be >= 0, got {self.continuation_tokens}")

    @property
    def neighbour_tokens(self) -> int:
        """r: tokens per neighbour (chunk plus continuation)."""
        return self.chunk_tokens + self.continuation_tokens

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cca_layers"] = list(self.cca_layers)
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


class Settings(BaseSettings):
    """Runtime settings shared by the server and the CLI; every field reads ``RETROFRESH_<NAME>``.

    Command-line flags override these; nothing else in the code base reads the environment.
    """

    model_config = SettingsConfigDict(env_prefix="RETROFRESH_", extra="ignore")

    store: str | None = Field(None, description="index store: a directory or gs://bucket/prefix")
    checkpoint: Path | None = Field(None, description="RETRO checkpoint directory")
    cache_dir: Path = Field(Path.home() / ".cache" / "retrofresh", description="local shard cache")
    cache_max_bytes: int | None = Field(
        None, gt=0, description="most bytes of GCS shards kept in cache_dir (least recently used out first); None: no limit"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: SecretStr | None = Field(None, description="bearer token for POST /admin/reload")
    reload_interval_s: float = Field(5.0, description="how often the server checks CURRENT")
    reverify_interval_s: float = Field(
        3600.0, ge=0,
        description="how often the server hashes the served version's shard files again (0: never; ~1.7 s per GB)",
    )
    device: str = Field("cpu", description="torch device for the model and the embedder")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="fp32, bf16 (autocast), or auto: bf16 where this device runs it faster (model.precision)"
    )
    # Read by the Prefect flows when a deployment leaves them out (flows/).
    sources: str | None = Field(None, description="sources file (YAML) that a refresh ingests")
    servers: list[str] = Field(default_factory=list, description="server URLs a refresh notifies (JSON list)")

    # Request limits: anything larger is a 4xx naming the limit.
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_k: int = 16
    max_batch: int = 64
    max_inflight: int = Field(64, description="requests doing model work at once; more get 503")
    max_query_chars: int = Field(8192, description="characters per retrieve query (a RETRO query is one 64-token chunk)")

    # Serving.
    embedder_path: Path | None = Field(None, description="query encoder directory; None: the bundled all-MiniLM-L6-v2")
    batch_window_ms: float = Field(2.0, description="how long a retrieve request waits to share an embed batch")
    model_workers: int = Field(2, description="threads running generation and scoring at once")


def get_settings() -> Settings:
    """Read settings from the environment (call once at start-up and pass the object along)."""
    return Settings()
