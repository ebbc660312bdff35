"""Shared fixtures. Each fixture module under tests/fixtures/ owns one kind of real server."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

pytest_plugins = [
    "tests.fixtures.gcs",
    "tests.fixtures.prefect",
    "tests.fixtures.retro",
    "tests.fixtures.site",
    "tests.fixtures.server",
]
