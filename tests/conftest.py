"""Shared fixtures: a clean environment, settings on tmp_path, and the assembled core."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.app import App, build_app
from bot.config import Settings, load_settings

_ENV_PREFIXES = ("REELBOT_", "OPENAI_", "SLACK_", "DISCORD_")
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's configuration, and loopback never goes through a proxy
    (slack_sdk copies HTTP(S)_PROXY into its client and ignores NO_PROXY)."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _PROXIES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings with the data dir under tmp_path; keyword overrides use the env variable names."""

    def factory(**env: object) -> Settings:
        values: dict[str, object] = {"REELBOT_DATA_DIR": str(tmp_path / "data")}
        values.update(env)
        return load_settings(**values)

    return factory


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    """The core on the embedded defaults (local renderer, SQLite in tmp_path), worker not started."""
    application = await build_app(make_settings())
    try:
        yield application
    finally:
        await application.close()
