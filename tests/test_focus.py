"""The cost ledger as FOCUS 1.2 CSV: exact rows, the same from the store and the service, bounded inputs,
and `status --by team`. (The FinOps Foundation's validator runs on a real run's export in
tests/test_focus_validator.py.)

gpt-4.1 (genai-prices): $2 per million input tokens, $0.50 cached, $8 output (reasoning too). The call:
10,000 input tokens (4,000 cached) and 1,000 output (300 reasoning): $0.022 in all.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.registry import CollectorRegistry

from otel_puppy.engine import PolicyEngine
from otel_puppy.focus import FOCUS_COLUMNS, focus_csv_lines, focus_rows, write_focus_csv
from otel_puppy.ledger import LedgerRow, encode_dims, parse_period, read_rows
from otel_puppy.policies import PolicySet
from otel_puppy.server.app import create_app
from otel_puppy.server.otlp import PROTOBUF
from otel_puppy.server.tokens import Keyring
from otel_puppy.settings import PuppySettings
from otel_puppy.store import open_store
from otel_puppy.testing import FakeClock, engine_for_tests, make_call
from tests._service import cli_all
from tests._serving import serve
from tests.server.test_otlp import make_request, span
from tests.test_tokens import Spec, write_tokens

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
JANUARY = (int(T0), int(T0) + 31 * 86400)


def gpt_call(engine: PolicyEngine, **fields: Any) -> Any:
    made = make_call(end_s=engine.clock.now(), agent="support", input_tokens=10_000, output_tokens=1_000)
    base = {"cache_read_tokens": 4_000, "reasoning_tokens": 300, "team": "payments", "environment": "prod"}
    return dataclasses.replace(made, **{**base, **fields})


@pytest.fixture
def engine() -> Iterator[PolicyEngine]:
    engine = engine_for_tests(PolicySet())
    engine.observe(gpt_call(engine))
    engine.observe(gpt_call(engine, team="search", agent=None))
    yield engine
    engine.close()


def rows_of(engine: PolicyEngine) -> list[dict[str, str]]:
    return list(focus_rows(read_rows(engine.store, *JANUARY)))


def test_one_row_per_token_type_with_its_own_price_quantity_and_cost(engine: PolicyEngine) -> None:
    payments = [row for row in rows_of(engine) if '"team":"payments"' in row["Tags"]]
    assert [(r["x_TokenType"], r["PricingQuantity"], r["ListUnitPrice"], r["BilledCost"]) for r in payments] == [
        ("input", "6000.0", "0.000002", "0.012000000"),
        ("cached_input", "4000.0", "0.0000005", "0.002000000"),
        ("output", "700.0", "0.000008", "0.005600000"),
        ("reasoning", "300.0", "0.000008", "0.002400000"),
    ]
    input_row = payments[0]
    assert {key: input_row[key] for key in FOCUS_COLUMNS if input_row[key]} == {
        "BilledCost": "0.012000000",
        "BillingAccountId": "openai",
        "BillingAccountName": "OpenAI",
        "BillingCurrency": "USD",
        "BillingPeriodEnd": "2026-02-01T00:00:00Z",
        "BillingPeriodStart": "2026-01-01T00:00:00Z",
        "ChargeCategory": "Usage",
        "ChargeDescription": "Input Tokens for gpt-4.1",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": "2026-01-01T01:00:00Z",
        "ChargePeriodStart": "2026-01-01T00:00:00Z",
        "ConsumedQuantity": "6000.0",
        "ConsumedUnit": "Tokens",
        "ContractedCost": "0.012000000",
        "ContractedUnitPrice": "0.000002",
        "EffectiveCost": "0.012000000",
        "InvoiceIssuerName": "OpenAI",
        "ListCost": "0.012000000",
        "ListUnitPrice": "0.000002",
        "PricingCategory": "Standard",
        "PricingCurrency": "USD",
        "PricingCurrencyContractedUnitPrice": "0.000002",
        "PricingCurrencyEffectiveCost": "0.012000000",
        "PricingCurrencyListUnitPrice": "0.000002",
        "PricingQuantity": "6000.0",
        "PricingUnit": "Tokens",
        "ProviderName": "OpenAI",
        "PublisherName": "OpenAI",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": "OpenAI API",
        "ServiceSubcategory": "Generative AI",
        "SkuId": "openai/gpt-4.1",
        "SkuMeter": "Input Tokens",
        "SkuPriceDetails": '{"x_TokenType": "input"}',
        "SkuPriceId": "openai/gpt-4.1/input/0.000002",
        "Tags": '{"agent":"support","team":"payments","environment":"prod"}',
        "x_TokenType": "input",
    }
    search = [row for row in rows_of(engine) if '"team":"search"' in row["Tags"]]
    assert search[0]["Tags"] == '{"team":"search","environment":"prod"}'  # no agent: no agent tag


def test_billed_cost_adds_up_to_the_spend_to_the_nano_dollar(engine: PolicyEngine) -> None:
    billed = sum(Decimal(row["BilledCost"]) for row in rows_of(engine))
    assert billed == engine.snapshot().spend("day") == Decimal("0.044")


def test_the_streamed_csv_is_the_written_one(engine: PolicyEngine) -> None:
    written = io.StringIO()
    count = write_focus_csv(read_rows(engine.store, *JANUARY), written)
    assert count == 8
    assert "".join(focus_csv_lines(read_rows(engine.store, *JANUARY))) == written.getvalue()
    assert written.getvalue().splitlines()[0] == ",".join(FOCUS_COLUMNS)
    written.getvalue().encode("ascii")  # FOCUS strings are ASCII


def test_a_row_without_known_prices_states_the_average_price() -> None:
    row = LedgerRow(int(T0), "openai", "other", None, None, None, None, "", (3, 7, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    (focus,) = focus_rows([row])
    assert (focus["PricingQuantity"], focus["BilledCost"], focus["ListCost"]) == ("7.0", "0.000000010", "0.000000010")
    assert focus["ListUnitPrice"].startswith("0.000000001428571428571428571")  # 10 nanos / 7 tokens


def test_names_that_are_not_ascii_are_written_ascii() -> None:
    dims = ("openai", "gpt-4.1-ünïcode", None, "agënt", None, None, "")
    row = LedgerRow.read(int(T0), encode_dims(dims), (1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert row is not None
    (focus,) = focus_rows([row])
    assert focus["SkuId"] == "openai/gpt-4.1-?n?code"
    assert focus["Tags"] == '{"agent":"ag\\u00ebnt"}'
    assert focus["ChargeDescription"] == "Input Tokens for gpt-4.1-?n?code"


def test_periods_default_to_last_month_and_refuse_what_is_not_one() -> None:
    now = 1_780_000_000.0  # 2026-05-28
    assert parse_period(None, None, now) == (1_775_001_600, 1_777_593_600)  # 2026-04-01 .. 2026-05-01
    assert parse_period("2026-01-31T23:30:00+01:00", "2026-02", now) == (1_769_896_800, 1_769_904_000)
    for start, end, message in [
        ("yesterday", None, "from: 'yesterday' is not a date (YYYY-MM-DD, YYYY-MM) or an ISO 8601 time"),
        ("2026-02", "2026-01", "to: must be after from"),
        ("2000-01", "2026-01", "to: the period is over 3660 days"),
        ("9" * 65, None, "from: not a date or time (at most 64 characters)"),
    ]:
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
            parse_period(start, end, now)


# --- over HTTP and from the command line ---------------------------------------------------------


def test_the_service_exports_and_adds_up_what_the_store_holds(engine: PolicyEngine) -> None:
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as client:
        exported = client.get("/v1/export/focus", params={"from": "2026-01", "billing_account": "acme"})
        costs = client.get("/v1/costs", params={"by": "team,agent"})  # this month (the clock's: January)
        bad = client.get("/v1/costs", params={"by": "user"})
        long = client.get("/v1/export/focus", params={"from": "2" * 65})
        account = client.get("/v1/export/focus", params={"from": "2026-01", "billing_account": "a" * 257})
        widest = client.get("/v1/export/focus", params={"from": "2026-01", "billing_account": "a" * 256})
        longest_by = client.get("/v1/costs", params={"by": ",".join(["team"] * 26)})  # 129 characters
    assert exported.status_code == 200
    written = io.StringIO()
    write_focus_csv(read_rows(engine.store, *JANUARY), written, billing_account="acme")
    assert exported.text == written.getvalue()
    assert costs.json() == {
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
        "by": ["team", "agent"],
        "costs": [
            {"team": "payments", "agent": "support", "cost_usd": "0.022000000", "calls": 1},
            {"team": "search", "agent": None, "cost_usd": "0.022000000", "calls": 1},
        ],
        "total_usd": "0.044000000",
    }
    assert bad.status_code == 422  # not one of the dimensions the document's pattern lists
    assert bad.json()["message"].startswith("query.by: String should match pattern")
    assert long.status_code == 422
    assert account.status_code == 422
    assert "query.billing_account" in account.json()["message"]
    assert widest.status_code == 200
    assert {row["BillingAccountId"] for row in csv.DictReader(io.StringIO(widest.text))} == {"a" * 256}
    assert longest_by.status_code == 422
    assert "query.by" in longest_by.json()["message"]
    assert "query.from" in long.json()["message"]


def test_a_query_parameter_the_endpoint_does_not_take_is_refused_not_ignored(engine: PolicyEngine) -> None:
    """A misspelt filter would otherwise be answered as if it were absent: with every account's rows."""
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as client:
        misspelt = client.get("/v1/export/focus", params={"from": "2026-01", "billing_acount": "acme"})
        costs = client.get("/v1/costs", params={"by": "team", "agnet": "support"})
        nameless = client.get("/v1/costs?=x")
        both = client.get("/v1/export/focus", params={"from": "2026-01", "billing_account": "acme", "to": "2026-02"})
    assert (misspelt.status_code, misspelt.json()) == (
        422,
        {"code": "invalid_request", "message": "query.billing_acount: Extra inputs are not permitted"},
    )
    assert (costs.status_code, costs.json()["message"]) == (422, "query.agnet: Extra inputs are not permitted")
    assert (nameless.status_code, nameless.json()["message"]) == (422, "query.'': Extra inputs are not permitted")
    assert both.status_code == 200  # every parameter it takes, at once
    written = io.StringIO()
    write_focus_csv(read_rows(engine.store, *JANUARY), written, billing_account="acme")
    assert both.text == written.getvalue()


def test_a_retried_otlp_batch_does_not_double_the_ledger() -> None:
    engine = engine_for_tests(PolicySet())
    body = make_request(
        span(
            {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4.1",
             "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100},
            trace_id=7, span_id=7, start_ns=int(T0 * 1e9) - 10**9,
        )
    ).SerializeToString()  # fmt: skip
    with serve(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):  # the Collector retries
            assert client.post("/v1/traces", content=body, headers={"content-type": PROTOBUF}).status_code == 200
        costs = client.get("/v1/costs", params={"by": "model"}).json()
    assert costs["costs"] == [{"model": "gpt-4.1", "cost_usd": "0.002800000", "calls": 1}]
    engine.close()


def test_the_command_line_exports_from_a_store_and_a_service_alike(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'state.db'}"
    engine = PolicyEngine(
        PuppySettings.load(store=store, allow_no_policies=True, watch_policies_s=None),
        store=open_store(store),
        clock=FakeClock(T0),
        registry=CollectorRegistry(auto_describe=True),
    )
    engine.observe(gpt_call(engine))
    with serve(create_app(engine)) as url:
        remote, status = cli_all(
            tmp_path,
            ["export", "focus", "--url", url, "--from", "2026-01", "--out", str(tmp_path / "r.csv")],
            ["status", "--url", url, "--by", "team,agent"],
        )
    engine.close()
    # the store closed: read by the command line alone; the refusals read nothing, or nothing of it
    local, refused, too_long, wrong = cli_all(
        tmp_path,
        ["export", "focus", "--store", store, "--from", "2026-01", "--out", str(tmp_path / "l.csv")],
        ["export", "focus", "--store", "memory://"],
        ["export", "focus", "--store", store, "--billing-account", "a" * 257],
        ["export", "focus", "--store", store, "--from", "soon"],
    )
    assert (remote.returncode, local.returncode) == (0, 0), remote.stderr + local.stderr
    assert local.stderr == f"wrote 4 FOCUS rows to {tmp_path / 'l.csv'}\n"
    assert (tmp_path / "r.csv").read_text() == (tmp_path / "l.csv").read_text()
    assert list(csv.DictReader(io.StringIO((tmp_path / "l.csv").read_text())))[3]["BilledCost"] == "0.002400000"
    assert status.returncode == 0, status.stderr
    assert "Cost from 2026-01-01T00:00:00Z to 2026-02-01T00:00:00Z" in status.stdout
    assert "payments" in status.stdout
    assert "$0.022" in status.stdout
    assert "total $0.022" in status.stdout
    assert refused.returncode == 2
    assert "the memory store lives in its process" in refused.stderr
    assert too_long.returncode == 2
    assert "--billing-account: must be 1 to 256 characters, not 257" in too_long.stderr
    assert (wrong.returncode, wrong.stderr.strip()) == (
        2,
        "error: from: 'soon' is not a date (YYYY-MM-DD, YYYY-MM) or an ISO 8601 time",
    )


def test_a_scoped_token_gets_its_scopes_rows_alone(tmp_path: Path) -> None:
    team = Spec("grafana-search", ("read",), {"team": "search"})
    user = Spec("one-user", ("read",), {"user": "u-1"})
    keyring = Keyring(write_tokens(tmp_path / "tokens.yaml", [team, user]), api_token="operator-secret-0123456789")
    engine = engine_for_tests(PolicySet())
    for name in ("search", "ads", None):
        engine.observe(gpt_call(engine, team=name))
    with serve(create_app(engine, keyring=keyring)) as url, httpx.Client(base_url=url, timeout=10) as client:
        costs = client.get("/v1/costs", params={"by": "team"}, headers=team.header).json()
        exported = client.get("/v1/export/focus", params={"from": "2026-01"}, headers=team.header)
        refused = client.get("/v1/costs", headers=user.header)
        everything = client.get(
            "/v1/costs", params={"by": "team"}, headers={"Authorization": "Bearer operator-secret-0123456789"}
        ).json()
    engine.close()
    assert costs["costs"] == [{"team": "search", "cost_usd": "0.022000000", "calls": 1}]
    tags = {row["Tags"] for row in csv.DictReader(io.StringIO(exported.text))}
    assert tags == {'{"agent":"support","team":"search","environment":"prod"}'}
    assert refused.status_code == 403
    assert refused.json() == {
        "code": "forbidden",
        "message": "this token is scoped to user=u-1: the ledger is not kept by user",
    }
    assert [row["team"] for row in everything["costs"]] == [None, "ads", "search"]  # equal costs: by name
    assert everything["total_usd"] == "0.066000000"


def test_this_months_cost_by_team_and_agent_on_metrics() -> None:
    """`otel_puppy_cost_this_month_usd`: the month's ledger by team and agent, refreshed once a minute;
    past `max_label_values` values of a label, later ones fold into `other`, as on every family."""
    engine = engine_for_tests(PolicySet(), max_label_values=2)
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    clock.set(T0 + 10 * 86400)  # 2026-01-11
    engine.observe(gpt_call(engine))  # payments / support: $0.022
    engine.observe(gpt_call(engine, team="search", agent=None, input_tokens=20_000))  # $0.042

    def sample(team: str, agent: str) -> float | None:
        return engine.registry.get_sample_value("otel_puppy_cost_this_month_usd", {"team": team, "agent": agent})

    assert (sample("payments", "support"), sample("search", "")) == (0.022, 0.042)
    engine.observe(gpt_call(engine, team="ads", agent="x", cache_read_tokens=0, reasoning_tokens=0))  # $0.028
    assert sample("other", "other") is None  # up to a minute old
    clock.advance(60)
    # a third team and a third agent, past two values each: `other`, as the call metrics fold agent `x`
    assert (sample("payments", "support"), sample("search", ""), sample("other", "other")) == (0.022, 0.042, 0.028)
    clock.set(T0 + 31 * 86400 + 60)  # February: a new month
    assert engine.registry.get_sample_value("otel_puppy_cost_this_month_usd", {"team": "search", "agent": ""}) is None
    engine.close()
