"""How the service runs under uvicorn: httptools with bounds on a request's head, and the
connection limits of `otel-puppy serve` and `serving()`.

uvicorn's httptools protocol (the fast one `uvicorn[standard]` brings) reads a request's line and
headers without any limit, before the app (and so the token check) sees anything: a client could
send hundreds of megabytes of headers, or send them a byte a minute (or nothing at all after
connecting: uvicorn arms its keep-alive timer only after a response). This protocol stops a head
at 16 KiB (as h11 does), answering `400`, and closes a connection that has not completed a head
within `head_timeout_s` of connecting or of its previous response. Without httptools, h11 is used
(size-bounded, but with no head deadline).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from otel_puppy.settings import PuppySettings

__all__ = ("HEAD_TIMEOUT_S", "MAX_HEAD_BYTES", "http_protocol", "uvicorn_options")

MAX_HEAD_BYTES: Final = 16 * 1024
"""A request's line and headers, as h11 allows."""
HEAD_TIMEOUT_S: Final = 10.0


def uvicorn_options(settings: PuppySettings | None = None) -> dict[str, Any]:
    """The `uvicorn.Config` keywords bounding connections, from `settings` (defaults when None)."""
    from otel_puppy.settings import PuppySettings

    fields = PuppySettings.model_fields

    def value(name: str) -> Any:
        return getattr(settings, name) if settings is not None else fields[name].default

    return {
        "http": http_protocol(value("head_timeout_s")),
        "timeout_keep_alive": value("keep_alive_timeout_s"),
        # Past it uvicorn answers `503` (retryable) instead of holding file descriptors without end.
        "limit_concurrency": value("max_connections"),
    }


def http_protocol(head_timeout_s: float = HEAD_TIMEOUT_S) -> Any:
    """What to pass as `uvicorn.Config(http=...)`: the bounded httptools protocol, or `"h11"`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _in_head = True
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()  # the next request's head must come in time too

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_expired)

        def _disarm_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            # Only while waiting for (or reading) a head: a request in progress has its own deadlines.
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)  # the head may end in this chunk (the rest is body)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                # still in the head: at most one read (64 KiB) past the limit was ever held
                self.send_400_response(f"Request line and headers are over {MAX_HEAD_BYTES} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

    return BoundedHttpToolsProtocol
