"""Slack's HTTP mode under abuse, through the real endpoint and a real Bolt app (issue 12 items 2, 3, 18).

- 300 connections trickling a body into ``POST /slack/events``, against ``reelbot``'s server in a child
  process limited to 256 descriptors: ``/healthz`` keeps answering, the slow clients are dropped, the
  log stays small.
- 20 unsigned 1 MB bodies: 401s, a bounded log, nothing parsed.
- Signed but malformed bodies: 400 each, no traceback; a forged newline never becomes a log record.
- Bolt's "`token` will be unused" warning does not appear at start.
- Slack and the provider webhooks share one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from adapters.slack import SlackAdapter
from bot.app import build_app
from bot.config import Settings
from bot.providers.local import LocalRenderer
from bot.web import build_web
from tests.fakes.slack_api import FakeSlack, SlackBot, sign, slack_env, start_slack_bot

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
FORM = "application/x-www-form-urlencoded"
FORGED = "ERROR adapters.slack.adapter: forged record"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


@pytest.fixture
async def slack(fake: FakeSlack, make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")), worker=False)
    try:
        yield bot
    finally:
        await bot.stop()


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """The production log format, written to a file at DEBUG for reelbot and INFO for the libraries."""
    path = tmp_path / "reelbot.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("adapters", "bot", "slack_bolt", "aiohttp")}
    old_root = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("adapters", "bot"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_root)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_unsigned_megabyte_bodies_get_401_and_a_bounded_log(
    slack: SlackBot, fake: FakeSlack, log_file: Path
) -> None:
    before = log_file.stat().st_size
    padding = b"x" * 1_000_000
    for i in range(20):
        body = b"command=%2Fvideo&text=boat%0A" + FORGED.encode() + b"%0A&user_id=U_ALICE&p=" + padding
        body = body[:1_000_000]
        signature = "" if i % 2 else "v0=" + "0" * 64  # missing, then forged
        ack = await fake.post_signed(body, FORM, signature=signature)
        assert ack.status == 401 and json.loads(ack.body) == {"error": "invalid request"}
    await slack.settle()
    grown = log_file.stat().st_size - before
    # 20 MB of bodies used to be 20 MB of log at INFO; now one short DEBUG line each, none above.
    assert grown < 20 * 150, log_file.read_text()[-2_000:]
    text = log_file.read_text()
    assert "forged record" not in text and "xxxxxxxx" not in text
    # Nothing at INFO; one WARNING (at most one every 10 minutes) says requests are being refused.
    loud = [line for line in text.split("Slack HTTP endpoint", 1)[-1].splitlines()[1:] if " DEBUG " not in line]
    assert len(loud) == 1 and "WARNING" in loud[0] and "SLACK_SIGNING_SECRET" in loud[0], loud
    assert await slack.jobs() == [] and fake.responses == []


def signed(fake: FakeSlack, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    stamp = timestamp or str(int(time.time()))
    digest = hmac.new(fake.signing_secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + digest.hexdigest()}


MALFORMED: dict[str, tuple[bytes, str]] = {
    "payload=x": (b"payload=x", FORM),
    "payload that is not JSON": (b"payload=%7Bnot-json", FORM),
    "payload that is a list": (b"payload=%5B1%2C2%5D", FORM),
    "bad JSON": (b'{"type": "event_callback", ', "application/json"),
    "a JSON list": (b"[1, 2, 3]", "application/json"),
    "invalid UTF-8": (b"command=%2Fvideo&text=\xff\xfe\xfd", FORM),
    "a bogus charset": (b"command=%2Fvideo&text=boat", FORM + "; charset=no-such-charset"),
    "deep nesting (past the recursion limit)": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
    "deep nesting": (b'{"type":"event_callback","event":' + b"[" * 200 + b"]" * 200 + b"}", "application/json"),
    "a lone surrogate": (b'{"type":"event_callback","event":{"type":"message","text":"\\ud800"}}', "application/json"),
}


@pytest.mark.parametrize("what", list(MALFORMED))
async def test_signed_but_malformed_bodies_get_400_and_no_traceback(
    slack: SlackBot, fake: FakeSlack, log_file: Path, what: str
) -> None:
    body, kind = MALFORMED[what]
    ack = await fake.post_signed(body, kind, headers=signed(fake, body))
    assert ack.status == 400, (what, ack.body)
    assert "error" in json.loads(ack.body)
    await slack.settle()
    text = log_file.read_text()
    assert "Traceback" not in text and "Error handling request" not in text
    assert await slack.jobs() == []


async def test_a_signed_request_with_a_non_numeric_timestamp_is_400_and_a_forged_one_401(
    slack: SlackBot, fake: FakeSlack, log_file: Path
) -> None:
    body = urlencode(fake.command_form("a paper boat --seconds 4")).encode()
    assert (await fake.post_signed(body, FORM, headers=signed(fake, body, timestamp="soon"))).status == 400
    forged = {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": sign("wrong-secret", "soon", body)}
    assert (await fake.post_signed(body, FORM, headers=forged)).status == 401
    await slack.settle()
    assert "Traceback" not in log_file.read_text()
    assert await slack.jobs() == []
    # The same command, correctly signed, still works: nothing above broke the adapter.
    assert (await fake.post_signed(body, FORM)).status == 200
    await fake.wait_responses(1)


async def test_a_forged_newline_never_becomes_a_log_record(slack: SlackBot, fake: FakeSlack, log_file: Path) -> None:
    nasty = f"a boat\n{FORGED}\r\n{FORGED}"
    body = urlencode(fake.command_form(nasty)).encode()
    await fake.post_signed(body, FORM, signature="v0=" + "1" * 64)  # unsigned
    await fake.post_signed(body, FORM, headers=signed(fake, body, timestamp="1 " + FORGED))  # signed, bad stamp
    await fake.post_signed(body + b"\xff", FORM)  # signed, not UTF-8
    event = {"type": "app_mention", "text": nasty, "user": "U_ALICE", "channel": "C_GENERAL", "ts": "5.000001"}
    await fake.post_signed(json.dumps(fake.event_body(event)).encode(), "application/json")  # signed and fine
    unhandled = {"type": "event_callback", "event": {"type": "no_such_event", "text": nasty}, "team_id": fake.team_id}
    await fake.post_signed(json.dumps(unhandled).encode(), "application/json")  # signed, nobody listens
    await slack.settle()
    lines = log_file.read_text().splitlines()
    assert not [line for line in lines if line.startswith(FORGED) or line.startswith("ERROR adapters")]


async def test_bolt_does_not_warn_that_the_token_is_unused(
    fake: FakeSlack, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Production sets SLACK_BOT_TOKEN, which Bolt reads by itself and then warns about at every start."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake.bot_token)
    caplog.set_level(logging.DEBUG)
    bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")), worker=False)
    try:
        assert (await fake.command("budget")).status == 200
    finally:
        await bot.stop()
    assert not [r for r in caplog.records if "will be unused" in r.getMessage()]
    assert [r for r in caplog.records if r.name == "slack_bolt.reelbot"]  # Bolt's own logger still logs


async def test_slack_and_the_webhooks_share_one_port(fake: FakeSlack, make_settings: Callable[..., Settings]) -> None:
    secret = "or-secret-shared-port"
    settings = make_settings(
        **slack_env(fake, "http"), OPENROUTER_API_KEY="sk-or-test-key-0000", OPENROUTER_WEBHOOK_SECRET=secret
    )
    app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders", fps=8))
    nudged = asyncio.Event()
    seen: list[tuple[str, str, str | None]] = []

    async def on_webhook(provider: str, request_id: str, job_id: str | None) -> None:
        seen.append((provider, request_id, job_id))
        nudged.set()

    web = build_web(settings, on_webhook=on_webhook, host="127.0.0.1", port=0)
    adapter = SlackAdapter.from_settings(app.bot, settings, host="127.0.0.1", server=web)
    await adapter.start()
    await web.start()
    try:
        fake.mode, fake.bot_url = "http", adapter.url
        assert adapter.url == f"{web.url}/slack/events"
        ack = await fake.command("budget")
        assert ack.status == 200 and ack.elapsed < 3
        await fake.wait_responses(1)
        body = json.dumps({"type": "video.generation.completed", "data": {"id": "gen-1", "status": "completed"}})
        stamp = str(int(time.time()))
        digest = hmac.new(secret.encode(), stamp.encode() + b"," + body.encode(), hashlib.sha256).hexdigest()
        async with aiohttp.ClientSession() as session:
            headers = {"X-OpenRouter-Signature": f"t={stamp},v1={digest}", "Content-Type": "application/json"}
            async with session.post(f"{web.url}/webhooks/openrouter?job=j1", data=body, headers=headers) as r:
                assert r.status == 200
            async with session.get(f"{web.url}/healthz") as r:
                assert r.status == 200
        await asyncio.wait_for(nudged.wait(), 5)
        assert seen == [("openrouter", "gen-1", "j1")]
    finally:
        await web.stop()
        await adapter.stop()
        await app.close()


# --- 300 slow clients against a server limited to 256 descriptors ----------------------------------------

_CHILD = textwrap.dedent(
    """
    import asyncio, resource, sys
    from adapters.slack import SlackAdapter
    from bot.app import build_app
    from bot.config import load_settings
    from bot.logging_setup import configure_logging
    from bot.providers.local import LocalRenderer
    from bot.web import WebServer

    api_url, secret, token, data_dir = sys.argv[1:5]
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    configure_logging("INFO")

    async def main():
        settings = load_settings(
            SLACK_BOT_TOKEN=token, SLACK_SIGNING_SECRET=secret, SLACK_API_URL=api_url, REELBOT_DATA_DIR=data_dir
        )
        app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders", fps=8))
        server = WebServer(host="127.0.0.1", port=0, header_timeout=2.0, body_timeout=2.0)
        adapter = SlackAdapter.from_settings(app.bot, settings, host="127.0.0.1", server=server)
        await adapter.start()
        await server.start()
        print(server.port, server.connection_limit, flush=True)
        stdin = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        await stdin.read()  # until the test closes it
        await server.stop()
        await adapter.stop()
        await app.close()

    asyncio.run(main())
    """
)


async def trickler(port: int, until: float) -> tuple[bytes, float]:
    """A client that sends its body one byte every 0.25 s; what it got back, and when it was cut off."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"X-Slack-Request-Timestamp: 1\r\nX-Slack-Signature: v0=0\r\nContent-Length: 100000\r\n\r\n"
    )

    async def feed() -> None:
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < until:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.25)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(until - time.monotonic() + 10):
            answer = await reader.read()
        return answer, time.monotonic()
    except ConnectionError:
        return b"", time.monotonic()
    finally:
        feeder.cancel()
        writer.close()


_PROBE = r"""
import socket, sys, time
port = int(sys.argv[1])
while True:
    started = time.perf_counter()
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError as exc:
        print("FAIL", repr(exc), flush=True)
    else:
        ok = answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"ok": true}')
        print("OK" if ok else "FAIL", time.perf_counter() - started if ok else repr(answer[:80]), flush=True)
    time.sleep(0.1)
"""


class HealthProbe:
    """``GET /healthz`` every 100 ms from a process of its own, so neither the 300 clients sharing the test's
    event loop nor the test's GIL count in the latency it records."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._child: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PROBE, str(self.port), stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        async for line in self._child.stdout:
            verdict, _, detail = line.decode().strip().partition(" ")
            if verdict == "OK":
                self.latencies.append(float(detail))
            else:
                self.failures.append(detail)

    async def stop(self) -> None:
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
            await self._child.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)


async def test_300_slow_clients_are_dropped_and_health_stays_up_within_256_descriptors(
    fake: FakeSlack, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("SLACK_")}
    env["PYTHONPATH"] = str(ROOT)
    with log_path.open("w") as log_out:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            fake.api_url,
            fake.signing_secret,
            fake.bot_token,
            str(tmp_path / "data"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_out,
            env=env,
        )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        port, limit = (int(part) for part in line.split())
        assert limit < 256  # the cap follows the descriptor limit
        started = time.monotonic()
        trickle_until = started + 4.0  # they would keep trickling for 4 s; the server cuts them at 2 s
        probe = HealthProbe(port)
        await probe.start()
        clients = [asyncio.create_task(trickler(port, trickle_until)) for _ in range(300)]
        results = await asyncio.wait_for(asyncio.gather(*clients), 30)
        during = len(probe.latencies)
        deadline = time.monotonic() + 10
        while len(probe.latencies) < during + 5:  # and a few more after them
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await probe.stop()
        # Every slow client was cut off well before it finished (100,000 bytes at 4 a second).
        assert all(cut_at < trickle_until for _, cut_at in results), max(c for _, c in results) - started
        statuses = {answer[:12] for answer, _ in results}
        assert statuses <= {b"HTTP/1.1 408", b"HTTP/1.1 503", b""}, statuses
        # /healthz answered quickly throughout, and afterwards.
        assert probe.failures == []
        # (a probe every 0.1 s while the clients trickled for about 2 s; fewer on a loaded machine, never none).
        # An outage would be seconds; the bound leaves room for a suite of eight workers on two cores.
        assert during >= 8 and max(probe.latencies) < 0.5, (during, sorted(probe.latencies)[-5:])
        # The endpoint works again: a real signed command is acknowledged.
        fake.mode, fake.bot_url = "http", f"http://127.0.0.1:{port}/slack/events"
        assert (await fake.command("budget")).status == 200
        child.stdin.close()
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    text = log_path.read_text()
    assert "Traceback" not in text and "Too many open files" not in text, text[-3000:]
    assert len(text) < 4_000, text[-3000:]
