"""Shared fixtures. Each fixture module under tests/fixtures/ owns one kind of real server."""

import os

import pytest

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


@pytest.fixture(scope="session", autouse=True)
def retrofresh_cache_dir(tmp_path_factory):
    """``RETROFRESH_CACHE_DIR`` under the session's temp dir: the commands' default log files
    (``<cache dir>/logs/refresh.log``) and shard caches never land in the user's ``~/.cache``."""
    previous = os.environ.get("RETROFRESH_CACHE_DIR")
    os.environ["RETROFRESH_CACHE_DIR"] = str(tmp_path_factory.mktemp("retrofresh-cache"))
    yield os.environ["RETROFRESH_CACHE_DIR"]
    if previous is None:
        os.environ.pop("RETROFRESH_CACHE_DIR", None)
    else:
        os.environ["RETROFRESH_CACHE_DIR"] = previous
