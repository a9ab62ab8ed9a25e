"""`otel-puppy serve`: the service on uvicorn, with the settings a service needs and a graceful stop."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from otel_puppy.cli.errors import print_error, print_policy_errors
from otel_puppy.exceptions import PolicyErrors, SettingsError, StoreError

if TYPE_CHECKING:
    import uvicorn

    from otel_puppy.engine import PolicyEngine
    from otel_puppy.forward.sender import Forwarder
    from otel_puppy.server.record import SpanRecorder
    from otel_puppy.settings import PuppySettings

__all__ = ("SERVICE_STORE", "register", "service_settings", "url_host")

SERVICE_STORE: Final = "sqlite:///otel-puppy.db"
"""The store of `otel-puppy serve` when none is configured: embedded SQLite, in the working directory.

The library's default is `memory://` (an in-process engine lives as long as its application);
a service's state must survive restarts, so it defaults to a file.
"""


_GRACEFUL_SHUTDOWN_S: Final = 10


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` to the command line."""
    serve = commands.add_parser(
        "serve",
        help="run the service: OTLP/HTTP receiver, decision API and /metrics",
        description="Receive OTLP/HTTP traces on /v1/traces, answer the decision API and serve /metrics. "
        "Stops gracefully on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "--host",
        default=None,
        help="address to bind (default OTEL_PUPPY_HOST or 127.0.0.1); beyond loopback OTEL_PUPPY_API_TOKEN or a "
        "tokens file (OTEL_PUPPY_TOKENS_FILE, or tokens.yaml beside the policies) must be there",
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port (default OTEL_PUPPY_PORT or 4319; 0: any free port)"
    )
    serve.add_argument(
        "--store",
        default=None,
        help=f"state store URL (default OTEL_PUPPY_STORE, else {SERVICE_STORE}: an embedded SQLite file in the "
        "working directory; the library's default, memory://, does not survive a restart)",
    )
    serve.add_argument("--policies", type=Path, default=None, help="directory or file (default: settings)")
    serve.add_argument(
        "--allow-no-policies",
        action="store_true",
        help="start even with no policy file at --policies: nothing enforced (also OTEL_PUPPY_ALLOW_NO_POLICIES=true)",
    )
    serve.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="append every accepted OTLP export to FILE as OTLP JSON lines, for `otel-puppy replay` "
        "(created with mode 0600: spans may carry prompts)",
    )
    serve.add_argument(
        "--record-max-bytes",
        type=_record_cap,
        default=None,
        metavar="N",
        help="stop recording once FILE would pass N bytes, its earlier content included (default 1 GiB); "
        "exports are still applied",
    )
    serve.add_argument(
        "--forward-to",
        default=None,
        metavar="URL",
        help="pass every span received on to URL/v1/traces (OTLP/HTTP protobuf, gzip), each model call with its "
        "cost written on (default OTEL_PUPPY_FORWARD_URL; headers in OTEL_PUPPY_FORWARD_HEADERS)",
    )
    serve.set_defaults(handler=_serve)


def _record_cap(text: str) -> int:
    from otel_puppy.server.record import MAX_BYTES_LIMIT

    if not (text.isascii() and text.isdigit() and len(text) <= 20) or not 1 <= int(text) <= MAX_BYTES_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes from 1 to {MAX_BYTES_LIMIT}")
    return int(text)


def service_settings(
    *,
    host: str | None = None,
    port: int | None = None,
    store: str | None = None,
    policies: Path | None = None,
    forward_url: str | None = None,
) -> PuppySettings:
    """The settings `otel-puppy serve` runs with: `OTEL_PUPPY_*`, then these overrides, and
    `SERVICE_STORE` unless a store was configured (environment, `.env` or `store=`).

    Raises:
        SettingsError: a setting is invalid, or the host is beyond loopback without `api_token`.
    """
    from otel_puppy.settings import PuppySettings

    overrides = {
        name: value
        for name, value in (
            ("host", host),
            ("port", port),
            ("store", store),
            ("policies", policies),
            ("forward_url", forward_url),
        )
        if value is not None
    }
    settings = PuppySettings.load(**overrides)
    if "store" not in settings.model_fields_set:
        settings = PuppySettings.load(**overrides, store=SERVICE_STORE)
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from prometheus_client.registry import CollectorRegistry

    from otel_puppy.engine import PolicyEngine
    from otel_puppy.policies.presence import CLI_ALLOW_HINT, missing_policies
    from otel_puppy.server.app import create_app
    from otel_puppy.server.decoder import DecodePool, default_processes
    from otel_puppy.server.http import uvicorn_options

    # Settings first: a host beyond loopback without a token is refused before anything binds.
    settings = service_settings(
        host=args.host, port=args.port, store=args.store, policies=args.policies, forward_url=args.forward_to
    )
    # Then the policies, before the store is opened: a service enforcing nothing by mistake must not start.
    if args.allow_no_policies:
        settings = settings.model_copy(update={"allow_no_policies": True})
    elif not settings.allow_no_policies and (missing := missing_policies(settings.policies)):
        print_error(f"{missing}; {CLI_ALLOW_HINT}")
        return 1
    try:
        # its own registry, not prometheus_client.REGISTRY: /metrics shows otel_puppy's series only
        engine = PolicyEngine.from_settings(settings, registry=CollectorRegistry(auto_describe=True))
    except PolicyErrors as exc:
        print_policy_errors(exc)
        return 1
    except StoreError as exc:
        print_error(str(exc))
        return 1
    recorder = forwarder = decoder = None
    try:
        recorder = _recorder(args, engine)
        if recorder is None and args.record is not None:
            return 1
        if settings.forward_url is not None:
            forwarder = _forwarder(settings, engine)
            if forwarder is None:
                return 1
        processes = default_processes() if settings.decode_processes is None else settings.decode_processes
        if processes:
            decoder = DecodePool(processes).start()  # started now: the first batch does not wait for them
        try:
            app = create_app(engine, recorder=recorder, forwarder=forwarder, decoder=decoder)
        except PolicyErrors as exc:  # the tokens file (`TokenFileErrors`): a service must not start without it
            print_policy_errors(exc)
            return 1
        _show_audit_lines()
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            **uvicorn_options(settings),
        )
        server = _announcing_server(config, _announce)
        config.load()  # uvicorn's own imports, before the freeze
        _freeze_startup_objects()
        with _StopOnSignals(server):
            server.run()
    except SystemExit:  # uvicorn exits when it cannot start (the port is taken...); it has logged why
        return 1
    finally:
        if decoder is not None:
            decoder.close()
        if forwarder is not None:
            forwarder.close()
        if recorder is not None:
            recorder.close()
        engine.close()
    return 0


def _forwarder(settings: PuppySettings, engine: PolicyEngine) -> Forwarder | None:
    """The forwarder `--forward-to` asks for, started (None when it cannot be: said why)."""
    from otel_puppy.forward.sender import Forwarder
    from otel_puppy.settings import redact_url

    try:
        forwarder = Forwarder.from_settings(settings, engine)
    except (SettingsError, StoreError) as exc:
        print_error(str(exc))
        return None
    target = str(forwarder.target)
    if forwarder.queue.durable:
        print(f"otel-puppy forwarding every span to {target}, queued in {redact_url(settings.store)}", flush=True)
    else:
        print(
            f"warning: forwarding to {target} is not durable on {redact_url(settings.store)}: spans acknowledged "
            "upstream but not yet accepted downstream are lost if the service stops; use a sqlite:// or redis:// store",
            file=sys.stderr,
            flush=True,
        )
    forwarder.start()
    return forwarder


def _recorder(args: argparse.Namespace, engine: PolicyEngine) -> SpanRecorder | None:
    """The recorder `--record` asks for (None without it, or when FILE cannot be opened: said why)."""
    from otel_puppy.server.record import DEFAULT_MAX_BYTES, SpanRecorder

    if args.record is None:
        return None
    cap = args.record_max_bytes if args.record_max_bytes is not None else DEFAULT_MAX_BYTES
    try:
        return SpanRecorder(args.record, max_bytes=cap, registry=engine.registry)
    except OSError as exc:
        print_error(f"cannot record to {args.record}: {exc.strerror or exc}")
        return None


def _show_audit_lines() -> None:
    """The audit trail (`otel_puppy.audit`: refused requests, admin actions, tokens reloaded) on stderr,
    from INFO up, unless the operator routed that logger already."""
    audit = logging.getLogger("otel_puppy.audit")
    if audit.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False


def _freeze_startup_objects() -> None:
    """Put everything built to start (modules, schemas, the price snapshot, the policies) out of
    the cyclic garbage collector's reach for good: a full collection over it all takes tens of
    milliseconds, during which every request in flight waits. Requests' own garbage is still
    collected as usual."""
    gc.collect()
    gc.freeze()


def _announce(url: str) -> None:
    print(f"otel-puppy serving OTLP/HTTP, the decision API and /metrics on {url}", flush=True)


def _announcing_server(config: uvicorn.Config, announce: Callable[[str], None]) -> uvicorn.Server:
    """uvicorn's server, announcing its URL once it listens (the bound port, when asked for port 0)."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.servers and self.servers[0].sockets:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                announce(f"http://{url_host(str(host))}:{port}")

    return AnnouncingServer(config)


class _StopOnSignals:
    """SIGTERM and SIGINT stop `server` gracefully, then `serve` closes the engine and exits 0.

    uvicorn handles both while it runs and re-raises the signal once it has shut down, for the
    handler that was there before: that handler is this one, which only asks the server to stop
    (harmless by then), so the process goes on to close the engine instead of dying of the signal.
    Installed before uvicorn starts, it also turns a signal during startup into a clean stop.
    """

    _SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.server.should_exit = True

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self._SIGNALS}

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def url_host(host: str) -> str:
    """`host` as it goes in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host
