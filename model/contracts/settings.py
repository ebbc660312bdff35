"""Runtime settings of the server, the CLI and the flows: ``Settings``, read from ``RETROFRESH_*``.

Below every layer that reads them (the store's cache, the server, the commands, the flows); the
network's shape is :mod:`model.network.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        "auto", description="fp32, bf16 (autocast), or auto: bf16 where this device runs it faster (model.contracts.precision)"
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
