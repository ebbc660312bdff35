"""Loopback ports for the servers this project starts itself: the demo's, the benchmarks', the tests'."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on at the time of asking.

    The port is free only until someone else binds it: start the server on it at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
