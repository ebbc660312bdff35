"""``retrofresh serve``: run the RETRO server on uvicorn, hot-swapping the store's versions."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from model.contracts.settings import Settings


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), help="RETRO checkpoint directory [RETROFRESH_CHECKPOINT].")
@click.option("--store", help="index store: a directory or gs://bucket/prefix [RETROFRESH_STORE].")
@click.option("--host", help="address to bind [RETROFRESH_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="port to bind [RETROFRESH_PORT, default 8000].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="local shard cache [RETROFRESH_CACHE_DIR].")
@click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path), help="query encoder directory (default: bundled all-MiniLM-L6-v2).")
@click.option("--reload-interval", "reload_interval_s", type=float, help="seconds between checks of CURRENT [RETROFRESH_RELOAD_INTERVAL_S].")
@click.option("--reverify-interval", "reverify_interval_s", type=click.FloatRange(min=0),
              help="seconds between re-verifications of the served shards' sha256, 0: off [RETROFRESH_REVERIFY_INTERVAL_S, default 3600].")
@click.option("--device", help="torch device [RETROFRESH_DEVICE].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="the model's and the query embedder's: fp32, bf16 (autocast) or auto, bf16 where this machine runs it faster "
                   "[RETROFRESH_PRECISION, default auto].")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
def serve(log_level: str, **flags) -> None:
    """Serve a checkpoint over HTTP, hot-swapping the index version CURRENT names.

    The admin token for POST /admin/reload is read from RETROFRESH_ADMIN_TOKEN only, never from a
    flag, so it does not show up in process listings.
    """
    import uvicorn

    from model.server.app import create_app

    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    missing = [name for name in ("checkpoint", "store") if getattr(settings, name) is None]
    if missing:
        raise click.UsageError(f"missing {' and '.join('--' + m for m in missing)} (or RETROFRESH_{'/'.join(m.upper() for m in missing)})")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
