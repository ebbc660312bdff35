"""bench.scale stops at once, with the server's log, when a server it starts dies at start-up.

The script runs in a subprocess (tests never import bench scripts) on a tiny store, with a server
that cannot start: its embedder folder does not exist. Waiting on /readyz alone would poll the
dead server for 300 s and then report "connection refused".
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_a_server_that_dies_at_start_up_fails_the_bench_at_once_with_its_log(tmp_path):
    missing = tmp_path / "no-such-embedder"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETROFRESH_EMBEDDER_PATH": str(missing)}  # read by `retrofresh serve` only
    result = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--sizes", "2000", "--json", "--result", str(result)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=550)
    assert done.returncode != 0
    assert "ProcessExited" in done.stderr, done.stderr[-3000:]
    assert str(missing) in done.stderr  # the end of the server's own log, in the bench's error
    assert done.stdout == "" and not result.exists()  # no result from a failed run
