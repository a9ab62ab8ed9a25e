"""`/metrics` on a port of its own, for applications that run the engine in-process.

A thin wrapper over prometheus_client's `start_http_server` that checks its arguments, defaults to
loopback (prometheus_client's default, `0.0.0.0`, would publish budget names to the network) and
returns a handle that stops the server. `otel-puppy serve` needs none of this: it serves `/metrics`
on its own port.
"""

from __future__ import annotations

import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

__all__ = ("MAX_ADDR_LENGTH", "MetricsServer", "start_metrics_server")

MAX_ADDR_LENGTH: Final = 253
"""A host name has at most 253 characters (RFC 1035); an IP address far fewer."""
_STOP_TIMEOUT_S: Final = 5.0


class MetricsServer:
    """A running `/metrics` endpoint. `close()` (or leaving a `with` block) stops it; idempotent."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._lock = threading.Lock()
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port: the one asked for, or the one the system chose for port 0."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_STOP_TIMEOUT_S)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve `registry` as Prometheus text on `http://addr:port/metrics` from a daemon thread.

    `port` 0 lets the system choose (read it back from `.port`).

    Raises:
        ValueError: `port` is not an integer in 0..65535, or `addr` is empty, longer than 253
            characters or holds a control character.
        OSError: the address cannot be bound (in use, not local).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}")
    if not isinstance(addr, str) or not 0 < len(addr) <= MAX_ADDR_LENGTH or not addr.isprintable():
        shown = addr[:40] + "..." if isinstance(addr, str) and len(addr) > 40 else addr
        raise ValueError(f"addr must be a host name or IP address of 1 to {MAX_ADDR_LENGTH} characters, not {shown!r}")
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
