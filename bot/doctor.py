"""``reelbot doctor``: checks the set-up without spending money, one line per thing checked.

Each configured chat platform is asked who the bot is (Slack ``auth.test``, Discord
``GET /users/@me``), each configured provider whether it accepts its key (through a free call:
a list or a status, never a render), and the model catalog which models are offered with these
providers and, where a provider lists its models, which are live there. The data directory's
database is opened and its ledger checked against budget usage.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx

from bot.catalog import Catalog
from bot.config import Settings
from bot.providers._http import tls_context
from bot.providers.base import VideoProvider
from bot.providers.factory import build_provider

_TIMEOUT = httpx.Timeout(10.0)


@runtime_checkable
class KeyCheck(Protocol):
    """A provider that can tell, for free, whether its key is accepted (None when it is)."""

    async def check(self) -> str | None: ...


@runtime_checkable
class ModelList(Protocol):
    """A provider that can list the models it serves right now (None when it cannot tell)."""

    async def live_models(self) -> set[str] | None: ...


@dataclass(frozen=True, slots=True)
class Finding:
    subject: str
    status: str  # "ok", "FAIL" or "--" (not configured)
    text: str

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        return f"{self.status:<4} {self.subject}: {self.text}"


def _ok(subject: str, text: str) -> Finding:
    return Finding(subject, "ok", text)


def _fail(subject: str, text: str) -> Finding:
    return Finding(subject, "FAIL", text)


async def _slack(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> Finding:
    names = {
        "SLACK_BOT_TOKEN": settings.slack_bot_token,
        "SLACK_APP_TOKEN": settings.slack_app_token,
        "SLACK_SIGNING_SECRET": settings.slack_signing_secret,
    }
    if not any(names.values()):
        return Finding("slack", "--", "not configured")
    if settings.slack_bot_token is None:
        return _fail("slack", "SLACK_BOT_TOKEN is missing (the app and signing secrets alone cannot post)")
    if not settings.slack_configured:
        return _fail("slack", "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
    url = settings.slack_api_url.rstrip("/") + "/auth.test"
    token = settings.slack_bot_token.get_secret_value()
    try:
        async with httpx.AsyncClient(transport=transport, timeout=_TIMEOUT, verify=tls_context()) as client:
            response = await client.post(url, headers={"Authorization": f"Bearer {token}"})
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return _fail("slack", f"could not reach {settings.slack_api_url} ({type(exc).__name__})")
    if not isinstance(body, dict) or not body.get("ok"):
        error = body.get("error") if isinstance(body, dict) else None
        return _fail("slack", f"SLACK_BOT_TOKEN was refused ({error or f'HTTP {response.status_code}'})")
    mode = "Socket Mode" if settings.slack_app_token is not None else f"HTTP mode on port {settings.http_port}"
    return _ok("slack", f"workspace {body.get('team', '?')} as {body.get('user', '?')}, {mode}")


async def _discord(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> Finding:
    if settings.discord_bot_token is None:
        return Finding("discord", "--", "not configured")
    url = settings.discord_api_url.rstrip("/") + "/users/@me"
    token = settings.discord_bot_token.get_secret_value()
    try:
        async with httpx.AsyncClient(transport=transport, timeout=_TIMEOUT, verify=tls_context()) as client:
            response = await client.get(url, headers={"Authorization": f"Bot {token}"})
    except httpx.HTTPError as exc:
        return _fail("discord", f"could not reach {settings.discord_api_url} ({type(exc).__name__})")
    if response.status_code == 401:
        return _fail("discord", "DISCORD_BOT_TOKEN was refused (HTTP 401)")
    if not response.is_success:
        return _fail("discord", f"{settings.discord_api_url} answered HTTP {response.status_code}")
    try:
        name = response.json().get("username", "?")
    except (ValueError, AttributeError):
        name = "?"
    return _ok("discord", f"logged in as {name}")


async def _provider(provider: VideoProvider) -> tuple[Finding, set[str] | None]:
    live: set[str] | None = None
    if isinstance(provider, KeyCheck):
        problem = await provider.check()
        if problem is not None:
            return _fail(provider.name, problem), None
    if isinstance(provider, ModelList):
        with contextlib.suppress(Exception):
            live = await provider.live_models()
    if provider.name == "local":
        return _ok("local", "the embedded renderer (no key; stands in for every catalog model)"), None
    return _ok(provider.name, "key accepted"), live


async def diagnose(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    make_provider: Callable[[Settings, str], VideoProvider] = build_provider,
    extra: Callable[[], Awaitable[list[Finding]]] | None = None,
) -> list[Finding]:
    """Every check, in order: platforms, providers, models, then ``extra`` (the store's)."""
    findings = [await _slack(settings, transport), await _discord(settings, transport)]
    live_by_provider: dict[str, set[str] | None] = {}
    for name in settings.provider_names:
        provider = make_provider(settings, name)
        try:
            finding, live = await _provider(provider)
        except Exception as exc:  # a provider that cannot even be asked is a finding, not a traceback
            finding, live = _fail(name, f"could not be asked ({type(exc).__name__}: {exc})"), None
        finally:
            with contextlib.suppress(Exception):
                await provider.aclose()
        findings.append(finding)
        if not finding.failed:
            live_by_provider[name] = live
    if catalog is not None:
        findings.append(_models(catalog, live_by_provider))
    if extra is not None:
        findings.extend(await extra())
    return findings


def _models(catalog: Catalog, live_by_provider: dict[str, set[str] | None]) -> Finding:
    """Which catalog models are offered through the providers that answered, and which are live."""
    enabled = catalog.enabled(tuple(live_by_provider))
    if not enabled:
        return _fail("models", "no catalog model can be served by the providers that answered")
    names = []
    for model in enabled:
        routes = [r for r in model.routes if r.provider in live_by_provider]
        listed = [(r, live_by_provider[r.provider]) for r in routes if live_by_provider[r.provider] is not None]
        if listed and not any(r.model_id in (live or set()) for r, live in listed):
            names.append(f"{model.name} (not listed by its provider)")
        else:
            names.append(model.name)
    default = catalog.default_for(tuple(live_by_provider))
    return _ok("models", f"{len(enabled)} offered, default {default.name if default else '-'}: {', '.join(names)}")


async def store_findings(settings: Settings) -> list[Finding]:
    """The data directory and its database: readable, a schema this reelbot knows, books that balance."""
    from bot.store import Store, StoreError

    if not settings.db_path.exists():
        return [Finding("data", "--", f"no database yet in {settings.data_dir} (made at the first start)")]
    try:
        store = await Store.open(settings.db_path)
    except (StoreError, OSError, sqlite3.Error) as exc:
        return [_fail("data", f"{settings.db_path} cannot be used: {str(exc).splitlines()[0]}")]
    try:
        mismatches = await store.check_ledger()
    finally:
        await store.close()
    if mismatches:
        return [_fail("ledger", m.line()) for m in mismatches]
    return [_ok("data", f"{settings.db_path}, schema {store.schema_version}; the ledger matches budget usage")]
