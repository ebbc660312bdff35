"""flows.common.runlog: where a command's run log goes by default."""

from __future__ import annotations

from pathlib import Path

from flows.common.runlog import default_log_file


def test_the_suite_writes_run_logs_under_its_temp_dir_not_the_users_cache():
    # A refresh run in-process without --log-file appends to default_log_file("refresh"): under the
    # session's RETROFRESH_CACHE_DIR (tests/conftest.py), never the user's ~/.cache/retrofresh/logs.
    log = default_log_file("refresh")
    assert not log.is_relative_to(Path.home() / ".cache"), log
