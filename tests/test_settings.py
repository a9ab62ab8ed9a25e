from __future__ import annotations

from pathlib import Path

import pytest

from otel_puppy.exceptions import SettingsError
from otel_puppy.settings import PuppySettings


def test_env_prefix_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("OTEL_PUPPY_TIMEZONE=Europe/Paris\nOTEL_PUPPY_PORT=9000\n")
    monkeypatch.setenv("OTEL_PUPPY_PORT", "9100")
    settings = PuppySettings.load()
    assert (settings.timezone, settings.port) == ("Europe/Paris", 9100)  # env beats .env


def test_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PUPPY_PORT", "eighty")
    monkeypatch.setenv("OTEL_PUPPY_TIMEZONE", "Mars/Olympus")
    with pytest.raises(SettingsError) as info:
        PuppySettings.load()
    message = str(info.value)
    assert "OTEL_PUPPY_PORT: Input should be a valid integer" in message
    assert "OTEL_PUPPY_TIMEZONE: Value error, unknown IANA timezone 'Mars/Olympus'" in message


def test_token_required_beyond_loopback_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="needs OTEL_PUPPY_API_TOKEN"):
        PuppySettings.load(host="0.0.0.0")
    settings = PuppySettings.load(host="0.0.0.0", api_token="s3cret-token")
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings)
    assert PuppySettings.load(host="::1").host == "::1"


def test_store_url_is_checked() -> None:
    with pytest.raises(SettingsError, match="OTEL_PUPPY_STORE"):
        PuppySettings.load(store="postgres://x")


@pytest.mark.parametrize("value", ["0", "-1", "34560001", "inf", "nan"])
def test_the_dedupe_window_is_bounded(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OTEL_PUPPY_DEDUPE_TTL_S", value)
    with pytest.raises(SettingsError, match="OTEL_PUPPY_DEDUPE_TTL_S"):
        PuppySettings.load()


def test_the_dedupe_window_may_be_400_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PUPPY_DEDUPE_TTL_S", "34560000")
    assert PuppySettings.load().dedupe_ttl_s == 400 * 86400


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_PUPPY_QUEUE_SIZE", "0"),
        ("OTEL_PUPPY_QUEUE_SIZE", "1000001"),
        ("OTEL_PUPPY_QUEUE_SIZE", "1" + "0" * 4000),
        ("OTEL_PUPPY_MAX_LABEL_VALUES", "0"),
        ("OTEL_PUPPY_MAX_LABEL_VALUES", "10001"),
        ("OTEL_PUPPY_WATCH_POLICIES_S", "0"),
        ("OTEL_PUPPY_WATCH_POLICIES_S", "3600.001"),
        ("OTEL_PUPPY_WATCH_POLICIES_S", "inf"),
        ("OTEL_PUPPY_WATCH_POLICIES_S", "nan"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "0"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "86400.5"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "inf"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "nan"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "1e308"),
        ("OTEL_PUPPY_DECODE_PROCESSES", "-1"),
        ("OTEL_PUPPY_DECODE_PROCESSES", "17"),
        ("OTEL_PUPPY_DECODE_PROCESSES", "1" + "0" * 4000),
        ("OTEL_PUPPY_DECODE_PROCESSES", "1.5"),
    ],
)
def test_sizes_and_intervals_are_bounded(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    # Unbounded, an infinite poll interval stopped the policy watcher (`Event.wait(inf)` raises), an
    # infinite reservation held its budget for good, and a queue or a label of any size was accepted.
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        PuppySettings.load()


def test_sizes_and_intervals_may_be_their_largest(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in [
        ("OTEL_PUPPY_QUEUE_SIZE", "1000000"),
        ("OTEL_PUPPY_MAX_LABEL_VALUES", "10000"),
        ("OTEL_PUPPY_WATCH_POLICIES_S", "3600"),
        ("OTEL_PUPPY_RESERVATION_TTL_S", "86400"),
        ("OTEL_PUPPY_DECODE_PROCESSES", "16"),
    ]:
        monkeypatch.setenv(variable, value)
    settings = PuppySettings.load()
    assert settings.decode_processes == 16
    assert (settings.queue_size, settings.max_label_values) == (1_000_000, 10_000)
    assert (settings.watch_policies_s, settings.reservation_ttl_s) == (3600.0, 86400.0)
