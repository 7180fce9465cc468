"""A small TCP proxy on loopback for fault tests: it sits between the loader and a real endpoint
(moto's S3 server) and breaks the first connections on purpose, so the real drivers meet real
network faults (a reset, a closed socket) instead of mocks.

Bounded: it listens on 127.0.0.1 only, forwards to one loopback port, and `stop()` (or leaving the
`with` block) closes the listener and every open connection and joins every thread it started."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal

DropMode = Literal["reset", "close"]


class TcpProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>.

    The first `drop_first` accepted connections are broken at once, without a byte forwarded:
    `mode="reset"` sends a TCP RST (the client sees "connection reset by peer"), `mode="close"` a
    plain FIN (the client sees an empty reply). Later connections are forwarded both ways.
    `arm(n)` drops n more. `dropped` and `forwarded` count what happened; `port` is the listening port."""

    def __init__(self, target_port: int, *, drop_first: int = 0, mode: DropMode = "reset",
                 target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.drop_first = drop_first
        self.mode = mode
        self.dropped = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.port = 0

    def arm(self, connections: int) -> None:
        """Drop the next `connections` connections (on top of any still pending)."""
        with self._lock:
            self.drop_first = max(self.drop_first, self.dropped) + connections

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            open_sockets = list(self._sockets)
            self._sockets.clear()
        for sock in open_sockets:
            _close(sock)
        if self._listener is not None:
            _close(self._listener)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            with self._lock:
                drop = self.dropped < self.drop_first
                if drop:
                    self.dropped += 1
            if drop:
                self._drop(client)
            else:
                self._spawn(self._serve, client)

    def _drop(self, client: socket.socket) -> None:
        if self.mode == "reset":  # SO_LINGER with a zero timeout: close() sends RST, not FIN
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _close(client)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        with self._lock:
            if self._stopping.is_set():
                _close(client)
                _close(upstream)
                return
            self.forwarded += 1
            self._sockets.update((client, upstream))
        open_directions = [2]
        self._spawn(self._pipe, upstream, client, open_directions)
        self._pipe(client, upstream, open_directions)

    def _pipe(self, source: socket.socket, sink: socket.socket, open_directions: list[int]) -> None:
        """Copy one direction until EOF and pass the half-close on; the last direction closes both."""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            open_directions[0] -= 1
            last = open_directions[0] == 0
            if last:
                self._sockets.discard(source)
                self._sockets.discard(sink)
        if last:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
