"""`serve(app)`: an ASGI app on a real uvicorn server on loopback, for a test, without a server started
and stopped per test.

Stopping uvicorn takes 0.1 to 0.2 s whatever it served (its main loop looks at `should_exit` every
0.1 s, and its shutdown then sleeps 0.1 s), and the server tests serve well over a hundred apps. So
the servers are kept for the session: each was started by `otel_puppy.server.thread.serving` (the
same protocol, bounds and thread as the demo's), and `serve` borrows an idle one (or starts another:
nested `serve`s each get a server of their own), runs the app's lifespan startup as uvicorn does,
routes every request to the app, then runs its lifespan shutdown and gives the server back.
`close_servers` stops them all (the session's last fixture does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import Any, Final

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.lifespan.on import LifespanOn

from otel_puppy.server.thread import serving

__all__ = ("close_servers", "serve")

LIFESPAN_WITHIN_S: Final = 30.0


class _Server:
    """One uvicorn server whose requests go to the app mounted on it."""

    def __init__(self) -> None:
        self._app: ASGIApp | None = None
        self._lifespan: LifespanOn | None = None
        self._loop: Future[asyncio.AbstractEventLoop] = Future()
        self._stack = ExitStack()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:  # a function: uvicorn takes it for ASGI 3
            await self._dispatch(scope, receive, send)

        self.url = self._stack.enter_context(serving(app))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the server's own; each app's runs in `mount` and `unmount`
            while (await receive())["type"] == "lifespan.startup":
                self._loop.set_result(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        app, lifespan = self._app, self._lifespan
        if app is None or lifespan is None:
            raise RuntimeError(f"a request to {self.url} with no app served")
        await app({**scope, "state": lifespan.state.copy()}, receive, send)  # as uvicorn passes the state

    def _run(self, coroutine: Any) -> Any:
        loop = self._loop.result(LIFESPAN_WITHIN_S)
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(LIFESPAN_WITHIN_S)

    def mount(self, app: ASGIApp) -> None:
        async def startup() -> LifespanOn:
            lifespan = LifespanOn(uvicorn.Config(app, lifespan="on", log_config=None))
            await lifespan.startup()
            return lifespan

        lifespan: LifespanOn = self._run(startup())
        if lifespan.should_exit:
            raise RuntimeError("the app's lifespan startup failed (see the uvicorn.error log)")
        self._app, self._lifespan = app, lifespan

    def unmount(self) -> None:
        lifespan = self._lifespan
        self._app = self._lifespan = None
        if lifespan is not None:
            self._run(lifespan.shutdown())
            if lifespan.should_exit:
                raise RuntimeError("the app's lifespan shutdown failed (see the uvicorn.error log)")

    def close(self) -> None:
        self._stack.close()


_lock = threading.Lock()
_idle: list[_Server] = []
_started: list[_Server] = []


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Serve `app` on loopback; yield its base URL. Its lifespan has started on entry and ended on exit."""
    with _lock:
        server = _idle.pop() if _idle else None
    if server is None:
        server = _Server()
        with _lock:
            _started.append(server)
    try:
        server.mount(app)
        try:
            yield server.url
        finally:
            server.unmount()
    finally:
        with _lock:
            _idle.append(server)


def close_servers() -> None:
    """Stop every server `serve` started."""
    with _lock:
        servers = list(_started)
        _started.clear()
        _idle.clear()
    for server in servers:
        server.close()
