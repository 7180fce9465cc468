"""One TCP probe, so an unreachable service (a Ray head, a Snowflake emulator) is reported in seconds
instead of after a driver's own minutes of retries."""

from __future__ import annotations

import socket

CONNECT_TIMEOUT_S = 3.0


def unreachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if a TCP connection opens within `timeout`, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port} unreachable ({error.strerror or error})"
