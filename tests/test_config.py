"""Configuration: the documented variables, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from bot.catalog import shipped_catalog
from bot.config import ConfigError, load_settings
from bot.money import UnknownPriceError, clip_cost, format_usd, usd_to_micros


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "REELBOT_PROVIDER", "REELBOT_BUDGET_PERIOD", "REELBOT_USER_BUDGET_USD"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_need_no_key() -> None:
    settings = load_settings()
    assert settings.provider_names == ("local",)
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.budget_period == "month"
    assert str(settings.db_path).endswith("reelbot-data/reelbot.db")


def test_every_key_turns_its_provider_on_and_local_keeps_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    assert load_settings().provider_names == ("openai",)
    monkeypatch.setenv("FAL_KEY", "id:secret")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    assert load_settings().provider_names == ("fal", "openrouter", "openai")
    monkeypatch.setenv("REELBOT_PROVIDER", "local")
    assert load_settings().provider_names == ("local",)


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
        (
            "REELBOT_USER_BUDGET_USD",
            "0.0000001",
            "REELBOT_USER_BUDGET_USD: must be whole cents, such as 10 or 2.50 (got '0.0000001')",
        ),
        ("REELBOT_USER_BUDGET_USD", "2.505", "REELBOT_USER_BUDGET_USD: must be whole cents"),
        ("REELBOT_USER_BUDGET_USD", "NaN", "REELBOT_USER_BUDGET_USD: must be"),
        ("REELBOT_DATA_DIR", "", "REELBOT_DATA_DIR: must name a folder; leave it unset to use ./reelbot-data"),
        ("REELBOT_DATA_DIR", "  ", "REELBOT_DATA_DIR: must name a folder"),
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
    # Prices come from the model catalog (tests/test_catalog.py has the full table); money stays integer.
    catalog = shipped_catalog()
    sora, pro = catalog.get("sora-2"), catalog.get("sora-2-pro")
    assert sora is not None and pro is not None
    assert sora.clip_cost(4, "720p", None) == clip_cost(100_000, 4) == 400_000
    assert pro.clip_cost(8, "720p", None) == 2_400_000
    assert format_usd(2_400_000) == "$2.40"
    assert format_usd(1_234_567) == "$1.234567"
    assert usd_to_micros("12.50") == 12_500_000
    with pytest.raises(UnknownPriceError):
        sora.price_per_second("1080p", None)
    with pytest.raises(TypeError):
        clip_cost(0.1, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "10", "2.50", "1000000.00"])
def test_budgets_in_whole_cents_are_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("REELBOT_USER_BUDGET_USD", value)
    assert usd_to_micros(str(load_settings().user_budget_usd)) % 10_000 == 0


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        ({}, ()),
        ({"SLACK_BOT_TOKEN": "x", "SLACK_APP_TOKEN": "y"}, ()),
        ({"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "y", "DISCORD_BOT_TOKEN": "z"}, ()),
        (
            {"SLACK_BOT_TOKEN": "x"},
            (
                "Slack: SLACK_BOT_TOKEN is set but SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET "
                "(HTTP mode) is missing.",
            ),
        ),
        ({"SLACK_APP_TOKEN": "y"}, ("Slack: SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is missing.",)),
        (
            {"SLACK_SIGNING_SECRET": "y", "DISCORD_GUILD_ID": "7"},
            (
                "Slack: SLACK_SIGNING_SECRET is set but SLACK_BOT_TOKEN is missing.",
                "Discord: DISCORD_GUILD_ID is set but DISCORD_BOT_TOKEN is missing.",
            ),
        ),
    ],
)
def test_a_platform_with_some_variables_set_names_the_missing_one(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problems: tuple[str, ...]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings().incomplete_platforms == problems


@pytest.mark.parametrize("name", ["FAL_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "OPENROUTER_WEBHOOK_SECRET"])
def test_an_empty_key_is_one_line_not_a_provider_that_fails_later(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "  ")
    with pytest.raises(ConfigError, match=f"^{name}: must not be empty; unset it to turn that provider off$"):
        load_settings()
