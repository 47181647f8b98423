"""Configuration: the documented variables, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings
from bot.money import UnknownPriceError, clip_cost, format_usd, usd_to_micros


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "REELBOT_PROVIDER", "REELBOT_BUDGET_PERIOD", "REELBOT_USER_BUDGET_USD"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_need_no_key() -> None:
    settings = load_settings()
    assert settings.resolved_provider == "local"
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.budget_period == "month"
    assert str(settings.db_path).endswith("reelbot-data/reelbot.db")


def test_a_key_selects_the_openai_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    assert load_settings().resolved_provider == "openai"
    monkeypatch.setenv("REELBOT_PROVIDER", "local")
    assert load_settings().resolved_provider == "local"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("REELBOT_BUDGET_PERIOD", "year", "REELBOT_BUDGET_PERIOD: must be 'day', 'week' or 'month' (got 'year')"),
        ("REELBOT_PROVIDER", "sora", "REELBOT_PROVIDER: must be 'local' or 'openai' (got 'sora')"),
        ("REELBOT_USER_BUDGET_USD", "ten", "REELBOT_USER_BUDGET_USD: must be a number (got 'ten')"),
        ("REELBOT_USER_BUDGET_USD", "-1", "REELBOT_USER_BUDGET_USD: must be greater than or equal to 0"),
        ("REELBOT_HTTP_PORT", "70000", "REELBOT_HTTP_PORT: must be less than or equal to 65535"),
        ("OPENAI_BASE_URL", "api.example.com", "OPENAI_BASE_URL: must be an http(s)://"),
        ("REELBOT_PROVIDER", "openai", "REELBOT_PROVIDER=openai needs OPENAI_API_KEY"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-value")
    settings = load_settings()
    assert "xoxb-secret-value" not in repr(settings)


def test_prices_are_exact_integers() -> None:
    assert clip_cost("sora-2", "1280x720", 4) == 400_000
    assert clip_cost("sora-2-pro", "720x1280", 8) == 2_400_000
    assert clip_cost("sora-2-pro", "1792x1024", 12) == 6_000_000
    assert format_usd(2_400_000) == "$2.40"
    assert format_usd(1_234_567) == "$1.234567"
    assert usd_to_micros("12.50") == 12_500_000
    with pytest.raises(UnknownPriceError):
        clip_cost("sora-2", "1792x1024", 4)
    with pytest.raises(UnknownPriceError):
        clip_cost("sora-3", "1280x720", 4)
