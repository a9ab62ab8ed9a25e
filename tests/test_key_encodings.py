"""The keys an applied call's record carries, built without a memo per value: the ledger row key
(`encode_dims`, JSON) and the settle key, each equal to its plain definition for every value a span
can send; and the memo the ledger keys keep, bounded whatever the number of agents."""

from __future__ import annotations

import json
import random

from prometheus_client.registry import CollectorRegistry

from otel_puppy._keys import escape
from otel_puppy.admission import settle_key
from otel_puppy.clock import ManualClock
from otel_puppy.engine import PolicyEngine
from otel_puppy.ledger import decode_dims, encode_dims
from otel_puppy.policies import PolicySet
from otel_puppy.settings import PuppySettings
from otel_puppy.testing import make_call

T0 = 1_767_225_600.0
_CHARS = ("a", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\ud800", "|", "/", "𝄞", " ")
"""Each that JSON escapes, that `escape` escapes, and neither: text from a span is any of these."""


def _text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randrange(most)))


def test_a_ledger_key_is_what_json_dumps_writes_for_any_text() -> None:
    rng = random.Random(20)
    for _ in range(5_000):
        dims = tuple(None if rng.random() < 0.2 else _text(rng, 6) for _ in range(7))
        encoded = encode_dims(dims)
        assert encoded == json.dumps(list(dims), separators=(",", ":"), ensure_ascii=False)
        assert decode_dims(encoded) == dims
    # Not text (never from the engine): as json.dumps writes it too.
    assert encode_dims(("p", 1, None, True, "x", None, "")) == '["p",1,null,true,"x",null,""]'  # type: ignore[arg-type]


def test_a_settle_key_escapes_its_separator_as_ever() -> None:
    rng = random.Random(21)
    for _ in range(5_000):
        parts = [None if rng.random() < 0.2 else _text(rng, 5) for _ in range(4)]
        assert settle_key(*parts) == "|".join(escape(part or "", "|") for part in parts)  # type: ignore[arg-type]
    assert settle_key("openai", "gpt-4.1", "a|b", None) == "openai|gpt-4.1|a\\|b|"
    assert settle_key("openai", "gpt-4.1", "a", "b") == "openai|gpt-4.1|a|b"  # not the key above
    assert settle_key("openai", "gpt-4.1", "a\\", "|b") == "openai|gpt-4.1|a\\\\|\\|b"


def test_the_ledger_key_memo_holds_at_most_its_limit_with_ten_thousand_agents() -> None:
    engine = PolicyEngine(
        PuppySettings.load(store="memory://", watch_policies_s=None, allow_no_policies=True),
        policies=PolicySet(),
        clock=ManualClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )
    memo = engine._rules.admission.dims
    most = 0
    for first in range(0, 10_000, 500):
        engine.observe_many([make_call(end_s=T0, agent=f"agent-{i}") for i in range(first, first + 500)])
        most = max(most, len(memo))
    assert 0 < most <= 1_024  # `admission._DIMS_LIMIT`
    rows = engine.store.read_ledger(int(T0), int(T0) + 3600)
    assert len(rows) == 10_000  # every agent's row, however many keys the memo forgot
    assert {decode_dims(dims)[3] for _, dims, _ in rows} == {f"agent-{i}" for i in range(10_000)}  # type: ignore[index]
    engine.close()
