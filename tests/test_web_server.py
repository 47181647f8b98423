"""``WebServer``: timeouts for slow headers and bodies, the body limit, the connection cap with ``/healthz``
still answered beyond it, and accept errors (EMFILE) logged once per interval, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.web import WebServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]


class Echo:
    """A route that counts the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"bytes": len(await request.read())})


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
async def serve(echo: Echo) -> AsyncIterator[Callable[..., asyncio.Future]]:
    servers: list[WebServer] = []

    async def start(**options: object) -> WebServer:
        server = WebServer(host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        server.add_routes([web.post("/echo", echo.handle)])
        await server.start()
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop()


async def raw(server: WebServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_all(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it is still open after ``within``)."""
    async with asyncio.timeout(within):
        return await reader.read()


async def health(server: WebServer) -> tuple[int, float]:
    """``GET /healthz`` on a new connection: status and seconds taken."""
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{server.url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as response:
            await response.read()
            return response.status, time.perf_counter() - started


async def test_health_and_mounted_routes(serve, echo: Echo) -> None:
    server = await serve()
    assert await health(server) == (200, pytest.approx(0, abs=1))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/echo", data=b"x" * 5000) as response:
            assert response.status == 200 and (await response.json()) == {"bytes": 5000}
    assert echo.calls == 1
    with pytest.raises(RuntimeError, match="before the web server starts"):
        server.add_routes([web.get("/late", echo.handle)])


async def test_a_client_trickling_a_body_is_dropped_with_408(serve, echo: Echo) -> None:
    server = await serve(body_timeout=0.5)
    reader, writer = await raw(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)

    feeder = asyncio.create_task(trickle())
    try:
        answer = await read_all(reader, within=5)
    except ConnectionResetError:  # dropped with trickled bytes unread: the kernel may send a reset, not a FIN,
        answer = b""  # and a reset can overtake the 408 on a loaded machine
    finally:
        feeder.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:40]
    assert 0.4 < time.monotonic() - started < 3
    assert echo.calls == 0
    assert (await health(server))[0] == 200


async def test_a_client_trickling_headers_is_dropped(serve, echo: Echo) -> None:
    server = await serve(header_timeout=0.5)
    reader, writer = await raw(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(100):
                writer.write(f"X-Slow-{i}: y\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.05)

    feeder = asyncio.create_task(trickle())
    try:
        answer = await read_all(reader, within=5)
    except ConnectionResetError:  # dropped with our last headers unread: the kernel sends a reset, not a FIN
        answer = b""
    finally:
        feeder.cancel()
        writer.close()
    assert answer == b""  # closed without an answer: the request never started
    assert time.monotonic() - started < 3
    assert echo.calls == 0


async def test_an_idle_connection_is_closed_after_the_header_timeout(serve) -> None:
    server = await serve(header_timeout=0.3)
    reader, writer = await raw(server)
    try:
        assert await read_all(reader, within=3) == b""
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(serve, echo: Echo) -> None:
    server = await serve(max_body_bytes=10_000)
    reader, writer = await raw(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n")
    try:
        answer = await read_all(reader, within=3)  # no byte of the body was sent
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/echo", data=b"x" * 10_001, chunked=True) as response:
            assert response.status == 413  # chunked: no length declared, counted while reading
    assert echo.calls == 0


async def test_a_client_that_vanishes_mid_body_costs_no_traceback(
    serve, echo: Echo, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    _reader, writer = await raw(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
    await writer.drain()
    writer.transport.abort()
    deadline = time.monotonic() + 3
    while server.connection_count:
        assert time.monotonic() < deadline, "the server kept the vanished client's connection"
        await asyncio.sleep(0.02)
    assert echo.calls == 0
    assert not [r for r in caplog.records if r.exc_info]


async def test_beyond_the_connection_cap_health_is_answered_and_the_rest_refused(serve, echo: Echo) -> None:
    server = await serve(max_connections=5, overflow_connections=2, overflow_grace_s=1.0, header_timeout=30)
    assert server.connection_limit == 5
    idle = [await raw(server) for _ in range(5)]
    try:
        status, took = await health(server)
        assert status == 200 and took < 1
        reader, writer = await raw(server)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        answer = await read_all(reader, within=3)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        # Overflow connections that send nothing are closed after the grace period...
        silent = [await raw(server) for _ in range(2)]
        # ...and when there are too many, the oldest makes room at once: health checks still get in.
        status, took = await health(server)
        assert status == 200 and took < 0.5
        assert await read_all(silent[0][0], within=0.5) == b""
        assert await read_all(silent[1][0], within=3) == b""
        for _, w in silent:
            w.close()
        assert echo.calls == 0
    finally:
        for _, writer in idle:
            writer.close()
    # Once the idle connections are gone, requests are served again.
    deadline = time.monotonic() + 5
    while True:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/echo", data=b"ok") as response:
                if response.status == 200:
                    break
        assert time.monotonic() < deadline, "the cap never released"
        await asyncio.sleep(0.05)
    assert echo.calls == 1


_EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, logging, os, resource, sys
    from bot.web import WebServer

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    logging.basicConfig(filename=sys.argv[1], level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def main():
        server = WebServer(host="127.0.0.1", port=0, log_interval_s=60)
        await server.start()
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        held = []
        # Something else in the process has taken every descriptor (a leak, a burst of renders).
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print(server.port, flush=True)
        await stdin.readline()   # "free"
        for fd in held:
            os.close(fd)
        await stdin.readline()   # EOF: stop
        await server.stop()

    asyncio.run(main())
    """
)


async def test_accept_errors_are_logged_once_per_interval_not_per_connection(tmp_path: Path) -> None:
    """A process out of descriptors: asyncio's accept() fails again and again; one line, no traceback,
    and the server serves again once descriptors are free."""
    log_file = tmp_path / "child.log"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env["PYTHONPATH"] = str(ROOT)
    with (tmp_path / "child.err").open("w") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _EMFILE_CHILD,
            str(log_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(await asyncio.wait_for(child.stdout.readline(), 20))
        # 40 clients connect (the kernel queues them) while the child has no descriptor left to accept them.
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        for _, writer in conns:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 10
        while "could not accept" not in (log_file.read_text() if log_file.exists() else ""):
            assert time.monotonic() < deadline, "the accept failure was never logged"
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # asyncio retries accept() every second: at least two more failures
        child.stdin.write(b"free\n")
        await child.stdin.drain()
        # The queued clients are served once descriptors are back.
        for reader, writer in conns:
            answer = await asyncio.wait_for(reader.read(200), 10)
            assert answer.startswith(b"HTTP/1.1 200")
            writer.close()
        child.stdin.close()
        assert await asyncio.wait_for(child.wait(), 20) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    text = log_file.read_text()
    assert text.count("could not accept a connection") == 1, text
    assert "Too many open files" in text
    assert "Traceback" not in text
    assert len(text) < 2000
