"""The RETRO HTTP server: FastAPI app, hot-swappable index, retrieve batcher, limits and metrics."""
