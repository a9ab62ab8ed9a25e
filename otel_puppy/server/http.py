"""The HTTP protocol the service runs under uvicorn: httptools, with a bound on a request's head.

uvicorn's httptools protocol (the fast one `uvicorn[standard]` brings) reads a request's line and
headers without any limit, before the app (and so the token check) sees anything: a client could
send hundreds of megabytes of headers. h11 stops at 16 KiB; this protocol does the same for
httptools, answering `400` and closing the connection. Without httptools, h11 is used.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ("MAX_HEAD_BYTES", "http_protocol")

MAX_HEAD_BYTES: Final = 16 * 1024
"""A request's line and headers, as h11 allows."""


def http_protocol() -> Any:
    """What to pass as `uvicorn.Config(http=...)`: the bounded httptools protocol, or `"h11"`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _in_head = True

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
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

    return BoundedHttpToolsProtocol
