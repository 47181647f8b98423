"""``WebServer``: the one aiohttp server reelbot listens on (Slack's HTTP mode, provider webhooks, ``/healthz``).

Everything that serves HTTP mounts its routes here before ``start()``, so Slack and the webhooks share
``REELBOT_HTTP_PORT``. The server is hardened against slow and abusive clients (issue 12: 300
connections trickling a body into ``POST /slack/events`` once held every descriptor, kept ``/healthz``
down for 95 s and wrote 690 MB of "Too many open files" tracebacks):

* **Header timeout**: aiohttp's ``keepalive_timeout`` is armed when a connection opens and after every
  response, and closes a connection whose next request's headers have not all arrived by then (an
  idle keep-alive connection included). A reverse proxy in front must therefore keep its idle
  upstream connections for less than ``header_timeout``.
* **Body timeout**: a middleware reads every request body within ``body_timeout`` seconds of its
  headers, in total (a per-read idle timeout would let a client send one byte a second forever). A
  slow or stalled client gets 408 and its connection is closed; ``lingering_time=0`` stops aiohttp
  from then reading the rest of its body for another 10 s.
* **Body size**: ``client_max_size``; a declared ``Content-Length`` above it gets 413 before a byte
  of the body is read.
* **Connection cap**: at most ``max_connections`` connections are served at once, and never more
  than half of what the descriptor limit leaves (``RLIMIT_NOFILE`` less a reserve for SQLite, the
  platform clients and renders). A connection beyond the cap is answered by a tiny protocol that
  serves ``GET /healthz`` (so health checks keep working under attack), answers anything else with
  503 and closes within ``overflow_grace_s``; beyond ``overflow_connections`` of those the oldest
  is closed to make room (a flood of silent connections cannot keep a health check out for long).
  asyncio accepts in small batches, so a burst cannot take every descriptor before the
  cap is applied (see ``_GatedSite``).
* **Accept errors** (EMFILE, ENFILE, ENOBUFS, ENOMEM), which asyncio reports through the loop's
  exception handler with a traceback for every failed ``accept()``, are logged once per
  ``log_interval_s`` with a count instead.

Why a buffering reverse proxy (nginx, a cloud load balancer) still belongs in front in production:
these guards bound the damage, but every slow client still costs this process a descriptor and a
slot until a timeout fires, and a few hundred of them can fill the cap and turn honest requests
away with 503 until they are dropped. A proxy that buffers whole requests before forwarding them
absorbs slow clients with its own, far larger connection capacity, terminates TLS, and hands this
server only complete requests over a few keep-alive connections. Without one, lower the timeouts.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bot.web.ratelimited_log import RateLimitedLog

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
DESCRIPTOR_RESERVE = 64
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_MESSAGE = "socket.accept() out of system resource"
_ACCEPT_RETRY_S = 1.2  # asyncio's ACCEPT_RETRY_DELAY (1 s) and a margin
_HEALTH_BODY = json.dumps({"ok": True}).encode()


def descriptor_budget(reserve: int = DESCRIPTOR_RESERVE) -> int:
    """Descriptors the server may use for connections: ``RLIMIT_NOFILE`` less ``reserve`` for the rest."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(32, soft - reserve)


def _limits(budget: int, max_connections: int, overflow: int | None) -> tuple[int, int, int]:
    """(connections served, overflow connections, accept batch) that together fit in ``budget`` descriptors.

    Half the budget serves requests; the accept batch is what asyncio may accept in one go before the
    gate sees it; the overflow (4 batches) answers ``/healthz`` and 503 during a burst; two batches stay
    free for connections being closed.
    """
    batch = max(8, min(64, budget // 16))
    cap = max(1, min(max_connections, budget // 2))
    return cap, (4 * batch if overflow is None else overflow), batch


def _raw_response(status: str, body: bytes, *, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Overflow(asyncio.Protocol):
    """A connection beyond the cap: ``GET /healthz`` is answered, anything else gets 503; closed soon either way."""

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._gate.admit(transport)
        self._timer = asyncio.get_running_loop().call_later(self._gate.overflow_grace_s, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._buffer = (self._buffer + data)[:2048]
        if b"\n" not in self._buffer and len(self._buffer) < 2048:
            return
        parts = self._buffer.split(b"\n", 1)[0].split()
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?", 1)[0] == HEALTH_PATH.encode():
            self._transport.write(_raw_response("200 OK", _HEALTH_BODY))
        else:
            body = json.dumps({"error": "server busy, try again"}).encode()
            self._transport.write(_raw_response("503 Service Unavailable", body, extra="Retry-After: 1\r\n"))
        self._transport.close()
        # Answered: it no longer counts against the overflow, though closing takes another loop turn.
        self._gate.overflow.pop(self._transport, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._gate.overflow.pop(self._transport, None)
        self._transport = None


class _Gate:
    """The protocol factory handed to ``loop.create_server``: aiohttp's handler while under the cap."""

    def __init__(
        self,
        runner: web.AppRunner,
        *,
        max_connections: int,
        overflow_connections: int,
        overflow_grace_s: float,
        busy_log: RateLimitedLog,
    ) -> None:
        self._runner = runner
        self.max_connections = max_connections
        self.overflow_connections = overflow_connections
        self.overflow_grace_s = overflow_grace_s
        self.overflow: dict[asyncio.Transport, None] = {}  # oldest first
        self._busy_log = busy_log

    def __call__(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        if server is not None and len(server.connections) < self.max_connections:
            return server()
        self._busy_log.note("HTTP connection limit (%d) reached: refusing new connections", self.max_connections)
        return _Overflow(self)

    def admit(self, transport: asyncio.Transport) -> None:
        """An overflow connection; the oldest one is closed when there are too many."""
        while self.overflow and len(self.overflow) >= self.overflow_connections:
            oldest = next(iter(self.overflow))
            del self.overflow[oldest]
            oldest.abort()
        if self.overflow_connections > 0:
            self.overflow[transport] = None
        else:
            transport.abort()

    def close_overflow(self) -> None:
        for transport in list(self.overflow):
            transport.abort()


class _GatedSite(web.BaseSite):
    """``TCPSite`` with the connection gate as its protocol factory and a small accept batch.

    asyncio's accept loop takes up to ``backlog`` connections per wake-up before any of them reaches
    the gate (and it keeps going after EMFILE), so with a long backlog one burst can take every
    descriptor first. Here asyncio gets ``accept_batch`` as its backlog, and the kernel's listen queue
    is set back to ``backlog`` afterwards, so bursts still queue in the kernel instead of being dropped.
    """

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, backlog: int, accept_batch: int, gate: _Gate
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._accept_batch = accept_batch
        self._gate = gate

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        try:
            sock.setblocking(False)
            self._server = await loop.create_server(self._gate, sock=sock, backlog=self._accept_batch)
        except BaseException:
            sock.close()
            raise
        sock.listen(self._backlog)  # asyncio set the kernel's queue to the batch size


class WebServer:
    """One hardened aiohttp server; add routes, then ``start()``.

    Args:
        host: the interface (``0.0.0.0`` in production; tests use ``127.0.0.1``).
        port: ``REELBOT_HTTP_PORT``; 0 picks a free port (see ``port`` after ``start``).
        header_timeout: seconds a connection may take to send a request's headers, or stay idle.
        body_timeout: seconds a request may take to send its whole body.
        max_body_bytes: the largest body accepted (413 above it).
        max_connections: connections served at once (lowered to what the descriptor limit allows).
        overflow_connections: connections beyond the cap that still get an answer (``/healthz``, 503);
            by default four accept batches.
        overflow_grace_s: how long such a connection may take to send its request line.
        log_interval_s: at most one line per interval for floods (accept errors, refusals, slow bodies).
    """

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 3000,
        header_timeout: float = 10.0,
        body_timeout: float = 10.0,
        max_body_bytes: int = 1024**2,
        max_connections: int = 1024,
        overflow_connections: int | None = None,
        overflow_grace_s: float = 0.5,
        backlog: int = 1024,
        shutdown_timeout: float = 5.0,
        log_interval_s: float = 60.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self._overflow_connections = overflow_connections
        self._overflow_grace_s = overflow_grace_s
        self._backlog = backlog
        self._shutdown_timeout = shutdown_timeout
        self._accept_log = RateLimitedLog(logger=log, level=logging.ERROR, interval_s=log_interval_s)
        self._busy_log = RateLimitedLog(logger=log, interval_s=log_interval_s)
        self._slow_log = RateLimitedLog(logger=log, interval_s=log_interval_s)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._body_guard])
        self.app.router.add_get(HEALTH_PATH, self._health)
        self._runner: web.AppRunner | None = None
        self._gate: _Gate | None = None
        self._port: int | None = None
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None
        self._last_accept_error = float("-inf")

    def __repr__(self) -> str:
        return f"WebServer(host={self.host!r}, port={self.port})"

    # --- routes ---------------------------------------------------------------------------------

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Mounts routes (``web.post(path, handler)``...); only before ``start()``."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the web server starts")
        self.app.add_routes(list(routes))

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """``callback`` runs after the server has stopped serving (to close what the routes opened)."""
        self._on_stop.append(callback)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int | None:
        """The bound port after ``start()`` (the requested one before)."""
        return self._port if self._port is not None else self._requested_port

    @property
    def url(self) -> str:
        """``http://host:port`` to reach the server from this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def connection_limit(self) -> int | None:
        """The cap in force (after ``start()``)."""
        return self._gate.max_connections if self._gate is not None else None

    @property
    def connection_count(self) -> int:
        """Connections being served now (those beyond the cap not counted)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def start(self) -> None:
        """Starts listening; a second call does nothing."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self.header_timeout,
            lingering_time=0,
        )
        await runner.setup()
        cap, overflow, batch = _limits(descriptor_budget(), self.max_connections, self._overflow_connections)
        gate = _Gate(
            runner,
            max_connections=cap,
            overflow_connections=overflow,
            overflow_grace_s=self._overflow_grace_s,
            busy_log=self._busy_log,
        )
        site = _GatedSite(
            runner,
            self.host,
            self._requested_port,
            backlog=self._backlog,
            accept_batch=batch,
            gate=gate,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._gate = runner, gate
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        self._loop = asyncio.get_running_loop()
        self._previous_handler = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._loop_exception)
        log.info("HTTP server listening on %s:%s (at most %d connections)", self.host, self._port, gate.max_connections)

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (up to ``shutdown_timeout``), then runs ``on_stop``."""
        runner, gate = self._runner, self._gate
        if runner is None or gate is None:
            return
        self._runner = self._gate = None
        gate.close_overflow()
        await runner.cleanup()
        # asyncio retries a failed accept() a second later, even after the socket is closed; those retries
        # must still meet this server's exception handler, not the loop's default one (a traceback each).
        pending = self._last_accept_error + _ACCEPT_RETRY_S - time.monotonic()
        if pending > 0:
            await asyncio.sleep(pending)
        if self._loop is not None and self._loop.get_exception_handler() == self._loop_exception:
            self._loop.set_exception_handler(self._previous_handler)
        self._loop = None
        for callback in self._on_stop:
            try:
                await callback()
            except Exception:
                log.exception("closing a web route's resources failed")

    # --- guards ---------------------------------------------------------------------------------

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "")
        if message == _ACCEPT_MESSAGE or (
            isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS and "socket" in context
        ):
            self._last_accept_error = time.monotonic()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self._accept_log.note("the HTTP server could not accept a connection: %s", reason)
            return
        if isinstance(exc, ValueError) and "_start_serving" in message:
            # asyncio schedules one accept retry per failed accept() (up to ``backlog`` per wake-up); the
            # ones that fire after the listening socket was closed fail on its descriptor -1: nothing to say.
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    @web.middleware
    async def _body_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Reads the whole body within ``body_timeout`` and ``max_body_bytes`` before any handler runs."""
        if not request.body_exists:
            return await handler(request)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._closing(413, f"the body is larger than {self.max_body_bytes} bytes")
        try:
            async with asyncio.timeout(self.body_timeout):
                await request.read()
        except TimeoutError:
            self._slow_log.note("dropped an HTTP client that did not send its body within %.0f s", self.body_timeout)
            return self._closing(408, "the body took too long")
        except web.HTTPRequestEntityTooLarge:
            return self._closing(413, f"the body is larger than {self.max_body_bytes} bytes")
        except (ConnectionError, RequestPayloadError):
            return self._closing(400, "the body could not be read")
        return await handler(request)

    @staticmethod
    def _closing(status: int, error: str) -> web.Response:
        response = web.json_response({"error": error}, status=status)
        response.force_close()
        return response

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(body=_HEALTH_BODY, content_type="application/json")


__all__ = ["HEALTH_PATH", "WebServer", "descriptor_budget"]
