"""Hostile decision requests against a real `otel-puppy serve`, on SQLite and on Redis (issue 12, points 3 and 9).

Before: a request whose own values made the decision path raise was answered by the fail mode
(allow by default) - a NaN or a string token count in-process, a lone surrogate on SQLite and Redis,
a huge estimate on a warn budget (an int64 overflow on SQLite, a Lua error on Redis reported as "the
state store is unavailable"), and a negative estimate reserved a negative amount, loosening the
budget for everyone. Now each is refused with 422 naming the field, reserves nothing, and an
exhausted deny budget keeps denying everyone; `/v1/budgets` and `/readyz` answer truthfully; other
clients keep being answered; and a flood of distinct hostile values costs a bounded number of log lines.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests._service import NANOS, Service, chat_spans, environment, export, service, spent_nanos

POLICIES = """
budgets:
  - {name: hard, limit_usd: 1, window: 30d, action: deny}
  - {name: per-agent, per: [agent], limit_usd: 5, window: 30d, action: warn, max_scopes: 5}
prices:
  - {provider: self-hosted, model: big, input_mtok: 1000000, output_mtok: 1}
"""
NORMAL = {"provider": "openai", "model": "gpt-4.1", "agent": "support"}

# (raw JSON body, the field the 422 must name)
HOSTILE: list[tuple[str, str]] = [
    ('{"provider": "openai", "model": "gpt-4.1", "agent": "\\ud800"}', "agent"),
    ('{"provider": "openai", "model": "gpt-4.1", "capabilities": ["\\udfff"]}', "capabilities"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": 1e999990}', "estimated_cost_usd"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "1e999990"}', "estimated_cost_usd"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "-0.5"}', "estimated_cost_usd"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": "NaN"}', "estimated_cost_usd"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_cost_usd": 9223372036.854775808}', "estimated_cost_usd"),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_input_tokens": 1e30}', "estimated_input_tokens"),
    (
        '{"provider": "openai", "model": "gpt-4.1", "estimated_input_tokens": 9223372036854775808}',
        "estimated_input_tokens",
    ),
    ('{"provider": "openai", "model": "gpt-4.1", "estimated_output_tokens": "5"}', "estimated_output_tokens"),
    ('{"provider": "self-hosted", "model": "big", "estimated_input_tokens": 100000000}', "estimated_input_tokens"),
    ('{"provider": "openai", "model": "gpt-4.1", "agent": "' + "x" * 257 + '"}', "agent"),
    ('{"provider": "openai", "model": "gpt-4.1", "priority": "urgent"}', "priority"),
    ('{"provider": "openai", "model": "gpt-4.1", "surprise": 1}', "surprise"),
    ('{"provider": "", "model": "gpt-4.1"}', "provider"),
]


@pytest.fixture(params=["sqlite", "redis"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    store = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    with service(tmp_path, "--policies", str(policies), "--store", store, env=environment()) as served:
        yield served


def test_hostile_requests_are_refused_and_the_exhausted_budget_still_denies(running: Service) -> None:
    url = running.url
    assert export(url, chat_spans(1)).name == "SUCCESS"
    stop, first = threading.Event(), threading.Event()
    answered: list[int] = []

    def other_client() -> None:  # another tenant asking all along: always answered (a hang guard only)
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set() or not answered:
                answered.append(client.post("/v1/decide", json={**NORMAL, "agent": "bystander"}).status_code)
                first.set()

    with httpx.Client(base_url=url, timeout=30) as client:
        rest = str(Decimal(10**9 - NANOS).scaleb(-9))  # what the span left of $1: now exhausted exactly
        exhaust = client.post("/v1/decide", json={**NORMAL, "estimated_cost_usd": rest})
        assert exhaust.json()["action"] == "allow"
        bystander = threading.Thread(target=other_client)
        bystander.start()
        try:
            for body, field in HOSTILE:
                response = client.post("/v1/decide", content=body, headers={"content-type": "application/json"})
                assert response.status_code == 422, (body[:80], response.text)
                assert response.json()["code"] == "invalid_request"
                assert field in response.json()["message"], (body[:80], response.text)
                after = client.post("/v1/decide", json=NORMAL).json()
                assert after["action"] == "deny", (body[:80], after)
                assert [(r["policy"], r["action"]) for r in after["reasons"]] == [
                    ("hard", "deny"),
                    ("per-agent", "allow"),
                ]
        finally:
            first.wait(30)  # the attack may be over before the bystander's first answer
            stop.set()
            bystander.join(60)
        assert not bystander.is_alive()
        assert answered
        assert set(answered) == {200}
        # nothing the hostile requests carried was reserved or counted
        budgets = client.get("/v1/budgets").json()["budgets"]
        [hard] = [b for b in budgets if b["policy"] == "hard"]
        assert (hard["spent_usd"], hard["reserved_usd"]) == (str(Decimal(NANOS).scaleb(-9)), rest)
        assert spent_nanos(url, "hard") == NANOS
        assert client.get("/readyz").status_code == 200
    output = running.output()
    assert "internal error" not in output
    assert "failing open" not in output


@pytest.mark.long
def test_a_flood_of_distinct_hostile_agents_logs_a_bounded_number_of_lines(running: Service) -> None:
    flood = 2_000
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for i in range(flood):
            decision = client.post("/v1/decide", json={**NORMAL, "agent": f"evil-{i}-" + "x" * 200})
            assert decision.status_code == 200
        budgets = client.get("/v1/budgets").json()["budgets"]
    scopes = sorted(b["scope"] for b in budgets if b["policy"] == "per-agent")
    assert len(scopes) == 6  # 5 kept, the rest share `other`
    assert scopes[-1] == "other"
    folds = [line for line in running.output().splitlines() if "scopes already" in line]
    assert len(folds) == 1  # it was one line per new agent: 1,995 lines
