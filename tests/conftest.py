from __future__ import annotations

from collections.abc import Iterator

import logfire
import pytest

from otel_puppy.engine import PolicyEngine
from otel_puppy.testing import engine_for_tests


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_for_tests()
    yield engine
    engine.close()


@pytest.fixture
def logfire_engine() -> Iterator[PolicyEngine]:
    """Real logfire, configured with our processor, as a user would in their app."""
    engine = engine_for_tests()
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name="tests",
        additional_span_processors=[engine.span_processor()],
    )
    yield engine
    engine.span_processor().force_flush()
    engine.close()
