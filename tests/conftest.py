"""Shared fixtures: a clean environment, settings on tmp_path, and the assembled core."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite.core
import pytest

from bot.app import App, build_app
from bot.config import Settings, load_settings

_ENV_PREFIXES = ("REELBOT_", "OPENAI_", "SLACK_", "DISCORD_", "FAL_", "OPENROUTER_")


class _DaemonThread(threading.Thread):
    """aiosqlite's connection thread, made a daemon in the test process only.

    A test that fails before it closes its store would otherwise leave a thread that keeps the test
    process alive after its results are printed, until an outer timeout kills it. Production keeps
    aiosqlite's own thread (``reelbot`` closes its store on every path; the start-up tests check it).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.daemon = True


aiosqlite.core.Thread = _DaemonThread  # type: ignore[misc]

# Bytecode is cached for the suite and every process it starts (pytest-xdist's workers, ``reelbot``
# children), in the gitignored __pycache__ folders. Where PYTHONDONTWRITEBYTECODE is set (as on our
# machine image) nothing would be cached: each worker would compile and assertion-rewrite every test
# module again (~3.5 s of CPU per worker) and each ``reelbot`` child would compile bot/ and adapters/.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

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
