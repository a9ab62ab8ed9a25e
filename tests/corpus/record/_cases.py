"""What the corpus recorders share besides the mock APIs: one recording's provider, cases and manifest."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from importlib.metadata import version
from types import TracebackType
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.corpus._recording import Manifest, capturing


class Recording:
    """One instrumentation's recording: `with Recording(...) as r:` instrument `r.provider`, call, `r.case(...)`.

    Its resource names it (`service.name` = `corpus-<instrumentation>`); each `case` takes every span
    ended since the last one, so a case holds all the spans of its calls, parents included. The
    manifest is written when the block ends without an error.
    """

    def __init__(self, instrumentation: str, packages: Iterable[str]) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": f"corpus-{instrumentation}"}))
        self.manifest = Manifest(instrumentation, {name: version(name) for name in packages})
        self._stack = ExitStack()
        self._exporter: InMemorySpanExporter | None = None

    def __enter__(self) -> Recording:
        self._exporter = self._stack.enter_context(capturing(self.provider))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stack.close()
        if exc is None:
            print(self.manifest.write())

    def case(self, name: str, calls: list[dict[str, Any]]) -> None:
        """The spans ended since the last case are case `name`, whose calls really were `calls`."""
        assert self._exporter is not None, "use Recording in a with block"
        self.provider.force_flush()
        self.manifest.add(name, self._exporter.get_finished_spans(), calls)
        self._exporter.clear()


def expect_failure(error: type[BaseException], call: Callable[..., Any], /, **arguments: Any) -> None:
    """Call, and insist that it fails with `error`: a recording of a failed call that did not fail is a lie."""
    try:
        call(**arguments)
    except error:
        return
    raise AssertionError(f"{call!r} did not raise {error.__name__}")


def with_labels(call: dict[str, Any], span_labels: dict[str, str] | None) -> dict[str, Any]:
    """`call` with the labels its spans name where they lose the user's (`provider`, `model`): the
    manifest says so, as `shortfall` does for tokens, and the coverage table reports it."""
    return {**call, "span_labels": dict(span_labels)} if span_labels else call
