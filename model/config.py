"""Configuration: ``RetroConfig`` (the network's shape) and ``Settings`` (server and CLI, from the env)."""

from __future__ import annotations

from pathlib import Path

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
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: SecretStr | None = Field(None, description="bearer token for POST /admin/reload")
    reload_interval_s: float = Field(5.0, description="how often the server checks CURRENT")
    device: str = Field("cpu", description="torch device for the model and the embedder")

    # Request limits: anything larger is a 4xx naming the limit.
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_k: int = 16
    max_batch: int = 64


def get_settings() -> Settings:
    """Read settings from the environment (call once at start-up and pass the object along)."""
    return Settings()
