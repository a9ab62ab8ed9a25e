"""`serving(app)`: an ASGI app on uvicorn in a background thread, for the demo and for tests.

The socket is bound here, before uvicorn starts, so a port in use is an `OSError` at once
(uvicorn would exit the process instead), and port 0 picks a free one. `otel-puppy serve` runs
uvicorn on the main thread instead, where it handles signals.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import uvicorn
from starlette.types import ASGIApp

from otel_puppy.server.http import uvicorn_options

if TYPE_CHECKING:
    from otel_puppy.settings import PuppySettings

__all__ = ("serving",)

STOP_GRACE_S: Final = 5


@contextlib.contextmanager
def serving(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    start_timeout_s: float = 30.0,
    settings: PuppySettings | None = None,
) -> Iterator[str]:
    """Serve `app` from a daemon thread; yield its base URL; stop it and close its port on exit.

    Connections are bounded as `otel-puppy serve` bounds them, by `settings` (defaults when None):
    head deadline, keep-alive timeout, connection limit.

    Raises:
        OSError: the address cannot be bound (a port in use).
        RuntimeError: uvicorn did not start within `start_timeout_s`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    with contextlib.closing(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=STOP_GRACE_S,
            **uvicorn_options(settings),
        )
        server = uvicorn.Server(config)
        # Off the main thread uvicorn installs no signal handlers: Ctrl-C stays the caller's.
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + start_timeout_s
            while not server.started:  # an event we poll for, not time we wait out
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start on {host}:{port}")
                time.sleep(0.005)
            shown = f"[{host}]" if ":" in host else host
            yield f"http://{shown}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=STOP_GRACE_S + 5)
