"""Provider webhooks over real HTTP: fal (ED25519, a JWKS served on 127.0.0.1 with a decoy key) and
OpenRouter (HMAC), good and bad signatures, old timestamps, tampered bodies, another user's webhook,
missing headers, repeats, key rotation and an unreachable JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bot.config import Settings
from bot.web import Webhooks, WebServer, build_web, webhook_url
from bot.web.fal_signature import FalWebhookVerifier, Verdict

pytestmark = pytest.mark.timeout(30)

FAL_USER = "fal-user-7"
OR_SECRET = "or-webhook-secret-3b9f1c"
MARKER = "BODY-MARKER-never-in-logs"


def jwk(key: Ed25519PrivateKey, kid: str) -> dict:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


class Jwks:
    """fal's JWKS endpoint on 127.0.0.1: the keys can change, and it can fail."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.status = 200
        self.fetches = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _serve(self, _request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status, text="upstream trouble")
        # Keys of other kinds are in real JWKS documents too; they must be skipped.
        return web.json_response({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}, *self.keys]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/.well-known/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Calls:
    """What ``on_webhook`` was called with; it can be held to show the answer does not wait for it."""

    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    results: list[dict[str, Any] | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(
        self, provider: str, request_id: str, job_id: str | None, *, result: dict[str, Any] | None = None
    ) -> None:
        self.seen.append((provider, request_id, job_id))
        self.results.append(result)
        self.arrived.set()
        await self.release.wait()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    server: WebServer
    hooks: Webhooks
    jwks: Jwks
    calls: Calls
    clock: Clock
    key: Ed25519PrivateKey
    decoy: Ed25519PrivateKey
    session: aiohttp.ClientSession

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        async with self.session.post(f"{self.server.url}{path}", data=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def settled(self) -> list[tuple[str, str, str | None]]:
        self.calls.release.set()
        await asyncio.wait_for(self.hooks.idle(), 5)
        return self.calls.seen


def fal_body(request_id: str, status: str = "OK") -> bytes:
    return json.dumps(
        {"request_id": request_id, "gateway_request_id": request_id, "status": status, "payload": {"note": MARKER}}
    ).encode()


def fal_headers(
    key: Ed25519PrivateKey, body: bytes, *, request_id: str, user_id: str = FAL_USER, ts: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    message = f"{request_id}\n{user_id}\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "Content-Type": "application/json",
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": stamp,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


def openrouter_body(job: str, status: str = "completed") -> bytes:
    return json.dumps(
        {
            "type": f"video.generation.{status}",
            "created_at": "2026-12-07T03:00:00.000Z",
            "data": {"id": job, "status": status, "generation_id": "gen-1", "model": "google/veo-3.1", "note": MARKER},
        }
    ).encode()


def openrouter_headers(body: bytes, *, secret: str = OR_SECRET, ts: int | None = None, status="completed") -> dict:
    stamp = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(secret.encode(), stamp.encode() + b"," + body, hashlib.sha256).hexdigest()
    job = json.loads(body)["data"]["id"]
    return {
        "Content-Type": "application/json",
        "X-OpenRouter-Signature": f"t={stamp},v1={digest}",
        "X-OpenRouter-Idempotency-Key": f"{job}-{status}",
    }


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    jwks = Jwks()
    await jwks.start()
    key, decoy = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    jwks.keys = [jwk(decoy, "decoy"), jwk(key, "current")]  # the decoy comes first: every key is tried
    clock, calls = Clock(), Calls()
    verifier = FalWebhookVerifier(jwks_url=jwks.url, user_id=FAL_USER, refresh_interval_s=60, clock=clock)
    hooks = Webhooks(on_webhook=calls, fal=verifier, openrouter_secret=OR_SECRET)
    server = WebServer(host="127.0.0.1", port=0)
    server.add_routes(hooks.routes())
    server.on_stop(hooks.aclose)
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        yield Rig(server, hooks, jwks, calls, clock, key, decoy, session)
    finally:
        calls.release.set()
        await session.close()
        await server.stop()
        await jwks.stop()


async def test_a_signed_fal_webhook_is_answered_at_once_and_then_handed_on(rig: Rig) -> None:
    body = fal_body("req-1")
    headers = fal_headers(rig.key, body, request_id="req-1")
    # The callback is held: the answer must not wait for it.
    status, answer = await rig.post("/webhooks/fal?job=job_abc-1", body, headers)
    assert (status, answer) == (200, {"ok": True})
    await asyncio.wait_for(rig.calls.arrived.wait(), 5)
    assert await rig.settled() == [("fal", "req-1", "job_abc-1")]
    assert rig.jwks.fetches == 1  # cached from now on
    body2 = fal_body("req-2")
    status, _ = await rig.post(
        "/webhooks/fal?job=bad%0Ahint%20", body2, fal_headers(rig.key, body2, request_id="req-2")
    )
    assert status == 200
    assert (await rig.settled())[-1] == ("fal", "req-2", None)  # an odd job hint is dropped, not passed on
    assert rig.jwks.fetches == 1
    # A signed OK delivery hands its whole body on (fal allows using a verified payload); an ERROR one
    # is only a nudge, so the status call decides how the render failed.
    assert rig.calls.results == [json.loads(body), json.loads(body2)]
    failed = fal_body("req-3", status="ERROR")
    status, _ = await rig.post("/webhooks/fal?job=job_abc-3", failed, fal_headers(rig.key, failed, request_id="req-3"))
    assert status == 200
    assert (await rig.settled())[-1] == ("fal", "req-3", "job_abc-3")
    assert rig.calls.results[-1] is None


async def test_bad_fal_webhooks_get_401_change_nothing_and_log_briefly(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = fal_body("req-9")
    now = int(time.time())
    stranger = Ed25519PrivateKey.generate()
    good = fal_headers(rig.key, body, request_id="req-9")
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "bad signature": (body, fal_headers(stranger, body, request_id="req-9")),
        "old timestamp": (body, fal_headers(rig.key, body, request_id="req-9", ts=now - 301)),
        "future timestamp": (body, fal_headers(rig.key, body, request_id="req-9", ts=now + 400)),
        "tampered body": (body.replace(b'"OK"', b'"ERROR"'), good),
        "another user id": (body, fal_headers(rig.key, body, request_id="req-9", user_id="someone-else")),
        "signed for another request": (body, {**good, "X-Fal-Webhook-Request-Id": "req-other"}),
        "garbage signature": (body, {**good, "X-Fal-Webhook-Signature": "zz" * 64}),
        "non-numeric timestamp": (body, {**good, "X-Fal-Webhook-Timestamp": "soon"}),
    }
    for name in (
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    ):
        cases[f"missing {name}"] = (body, {k: v for k, v in good.items() if k != name})
    for what, (payload, headers) in cases.items():
        status, answer = await rig.post("/webhooks/fal?job=j1", payload, headers)
        assert status == 401, what
        assert answer == {"error": "invalid signature"}, what
    assert await rig.settled() == []
    # One short line for the lot (once a minute), never the body.
    refusals = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert len(refusals) == 1 and len(refusals[0].getMessage()) < 200
    assert MARKER not in caplog.text and "req-9" not in caplog.text
    assert rig.jwks.fetches == 1  # unknown keys refetch at most once a minute
    # The genuine delivery still works afterwards.
    assert (await rig.post("/webhooks/fal?job=j1", body, good))[0] == 200
    assert await rig.settled() == [("fal", "req-9", "j1")]


async def test_a_repeated_fal_delivery_is_acknowledged_and_handled_once(rig: Rig) -> None:
    body = fal_body("req-5")
    for _ in range(3):
        headers = fal_headers(rig.key, body, request_id="req-5")  # fal re-signs each retry
        assert (await rig.post("/webhooks/fal?job=j5", body, headers))[0] == 200
    assert await rig.settled() == [("fal", "req-5", "j5")]
    # A different status for the same request is a different delivery.
    error = fal_body("req-5", status="ERROR")
    assert (await rig.post("/webhooks/fal?job=j5", error, fal_headers(rig.key, error, request_id="req-5")))[0] == 200
    assert await rig.settled() == [("fal", "req-5", "j5"), ("fal", "req-5", "j5")]


async def test_a_rotated_fal_key_is_picked_up_but_the_jwks_is_not_hammered(rig: Rig) -> None:
    new = Ed25519PrivateKey.generate()
    body = fal_body("req-r")
    assert (await rig.post("/webhooks/fal", body, fal_headers(new, body, request_id="req-r")))[0] == 401
    assert rig.jwks.fetches == 1
    rig.jwks.keys.append(jwk(new, "next"))  # fal publishes the new key
    rig.clock.t += 30  # within the refresh interval: no new fetch yet
    assert (await rig.post("/webhooks/fal", body, fal_headers(new, body, request_id="req-r")))[0] == 401
    assert rig.jwks.fetches == 1
    rig.clock.t += 31
    assert (await rig.post("/webhooks/fal", body, fal_headers(new, body, request_id="req-r")))[0] == 200
    assert rig.jwks.fetches == 2
    old = fal_body("req-o")
    assert (await rig.post("/webhooks/fal", old, fal_headers(rig.key, old, request_id="req-o")))[0] == 200
    assert rig.jwks.fetches == 2
    assert [c[1] for c in await rig.settled()] == ["req-r", "req-o"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_unreachable_jwks_means_503_or_401_and_never_a_crash(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    body = fal_body("req-u")
    # Nothing listens there at all.
    nowhere = FalWebhookVerifier(jwks_url=f"http://127.0.0.1:{closed_port()}/jwks.json", clock=rig.clock)
    try:
        assert await nowhere.verify(fal_headers(rig.key, body, request_id="req-u"), body) is Verdict.UNAVAILABLE
    finally:
        await nowhere.aclose()
    # fal's JWKS answers 500 before reelbot ever had a key: 503, so fal retries later.
    rig.jwks.status = 500
    status, answer = await rig.post("/webhooks/fal", body, fal_headers(rig.key, body, request_id="req-u"))
    assert status == 503 and "retry" in answer["error"]
    assert rig.calls.seen == []
    # It recovers; the next fetch is allowed after the refresh interval.
    rig.jwks.status = 200
    rig.clock.t += 61
    assert (await rig.post("/webhooks/fal", body, fal_headers(rig.key, body, request_id="req-u")))[0] == 200
    # Down again, with keys cached: good signatures still pass, bad ones are 401, not 503.
    rig.jwks.status = 503
    rig.clock.t += 61
    stranger = Ed25519PrivateKey.generate()
    assert (await rig.post("/webhooks/fal", body, fal_headers(stranger, body, request_id="req-u")))[0] == 401
    other = fal_body("req-v")
    assert (await rig.post("/webhooks/fal", other, fal_headers(rig.key, other, request_id="req-v")))[0] == 200
    assert [c[1] for c in await rig.settled()] == ["req-u", "req-v"]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_signed_but_malformed_fal_body_is_400(rig: Rig) -> None:
    for body in (b"not json", b"[1, 2]", b"[" * 100_000, json.dumps({"request_id": "someone-else"}).encode()):
        status, _ = await rig.post("/webhooks/fal", body, fal_headers(rig.key, body, request_id="req-m"))
        assert status == 400
    assert await rig.settled() == []


async def test_openrouter_webhooks_are_checked_with_the_shared_secret(rig: Rig) -> None:
    body = openrouter_body("or-job-1")
    now = int(time.time())
    good = openrouter_headers(body)
    refused = {
        "wrong secret": (body, openrouter_headers(body, secret="not-the-secret")),
        "old": (body, openrouter_headers(body, ts=now - 301)),
        "future": (body, openrouter_headers(body, ts=now + 400)),
        "tampered": (body.replace(b"completed", b"failed"), good),
        "unsigned": (body, {"Content-Type": "application/json"}),
        "garbled header": (body, {**good, "X-OpenRouter-Signature": "v1=abc"}),
    }
    for what, (payload, headers) in refused.items():
        assert (await rig.post("/webhooks/openrouter?job=j9", payload, headers))[0] == 401, what
    for _ in range(2):  # the delivery and its retry
        assert (await rig.post("/webhooks/openrouter?job=j9", body, openrouter_headers(body)))[0] == 200
    failed = openrouter_body("or-job-1", "failed")
    assert (await rig.post("/webhooks/openrouter", failed, openrouter_headers(failed, status="failed")))[0] == 200
    not_json = b"{oops"
    assert (await rig.post("/webhooks/openrouter", not_json, {**openrouter_headers(body), **_sig(not_json)}))[0] == 400
    assert await rig.settled() == [("openrouter", "or-job-1", "j9"), ("openrouter", "or-job-1", None)]


def _sig(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    digest = hmac.new(OR_SECRET.encode(), stamp.encode() + b"," + body, hashlib.sha256).hexdigest()
    return {"X-OpenRouter-Signature": f"t={stamp},v1={digest}"}


async def test_without_a_secret_openrouter_webhooks_are_refused() -> None:
    calls = Calls()
    hooks = Webhooks(on_webhook=calls, openrouter_secret=None)
    server = WebServer(host="127.0.0.1", port=0)
    server.add_routes(hooks.routes())
    await server.start()
    try:
        body = openrouter_body("or-job-2")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.url}/webhooks/openrouter", data=body, headers=openrouter_headers(body)
            ) as r:
                assert r.status == 401
            async with session.post(f"{server.url}/webhooks/fal", data=body) as r:
                assert r.status == 404  # fal not configured: not mounted
    finally:
        await server.stop()
    assert calls.seen == []


async def test_build_web_mounts_the_configured_providers(make_settings: Callable[..., Settings]) -> None:
    calls = Calls()
    calls.release.set()
    settings = make_settings(
        FAL_KEY="id:secret",
        FAL_JWKS_URL="http://127.0.0.1:9/jwks.json",
        OPENROUTER_API_KEY="sk-or-test",
        OPENROUTER_WEBHOOK_SECRET=OR_SECRET,
    )
    server = build_web(settings, on_webhook=calls, host="127.0.0.1", port=0)
    await server.start()
    try:
        body = openrouter_body("or-job-3")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.url}/webhooks/openrouter?job=j3", data=body, headers=openrouter_headers(body)
            ) as r:
                assert r.status == 200
            async with session.post(f"{server.url}/webhooks/fal", data=b"{}") as r:
                assert r.status == 401  # mounted, and unsigned
            async with session.get(f"{server.url}/healthz") as r:
                assert r.status == 200
    finally:
        await server.stop()
    assert calls.seen == [("openrouter", "or-job-3", "j3")]
    bare = build_web(make_settings(), on_webhook=calls, host="127.0.0.1", port=0)
    await bare.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{bare.url}/webhooks/fal", data=b"{}") as r:
                assert r.status == 404
    finally:
        await bare.stop()
    assert webhook_url("https://bot.example.com/", "fal", "job1") == "https://bot.example.com/webhooks/fal?job=job1"
