"""Shared fixtures. Each fixture module under tests/fixtures/ owns one kind of real server."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# fp32 is the reference the suite's equalities hold in: the CLI and the server default to "auto",
# which picks bf16 on a CPU that runs it faster. The bf16 path has its own tests (test_precision.py).
os.environ["RETROFRESH_PRECISION"] = "fp32"

pytest_plugins = [
    "tests.fixtures.gcs",
    "tests.fixtures.prefect",
    "tests.fixtures.retro",
    "tests.fixtures.site",
    "tests.fixtures.server",
]
