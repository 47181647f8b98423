"""What the fake protocol servers share: the aiohttp lifecycle on 127.0.0.1, an RST, an MP4-looking head.

Each fake (``videos_server``, ``fal_queue``, ``openrouter_api``) follows its own reference; only the
plumbing around the protocol is the same and is kept here:

- ``FakeServer.start`` binds ``host`` (127.0.0.1) on ``port`` (0: any free port, read back into
  ``self.port`` so a restarted fake comes back on the same one) with ``handler_cancellation`` on:
  a client that gives up cancels a handler held by an injected delay, so ``stop()`` never waits for
  one. Fakes that call out (webhooks) get an ``aiohttp.ClientSession`` with a 5 s total timeout.
- ``FakeServer.stop`` cancels and awaits the background tasks the fake started (webhook
  deliveries) before closing the session and the runner, so nothing outlives a test.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import struct
from typing import Self

import aiohttp
from aiohttp import web

__all__ = ["FakeServer", "reset_connection", "synthetic_mp4_head"]


class FakeServer(abc.ABC):
    """The start/stop of one fake aiohttp server; subclasses build the ``web.Application``.

    Args:
        host: where to listen (tests use 127.0.0.1 only).
        port: 0 for any free port; after ``start()`` it is the port bound.
        outgoing: whether the fake makes its own HTTP calls (then ``self._session`` is open while it runs).
    """

    def __init__(self, *, host: str, port: int, outgoing: bool) -> None:
        self.host = host
        self.port = port
        self._outgoing = outgoing
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @abc.abstractmethod
    def _make_app(self) -> web.Application:
        """The application with the fake's routes, middleware and signals."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # handler_cancellation: a client that gave up (timeout) cancels a delayed handler, so
        # stop() never waits for injected delays.
        self._runner = web.AppRunner(self._make_app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        if self._outgoing:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def reset_connection(request: web.Request) -> None:
    """Drops the connection with a TCP RST (SO_LINGER 0), as a crashed proxy would: the client sees a reset."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def synthetic_mp4_head(total: int) -> bytes:
    """The first bytes of an MP4-looking body of ``total`` bytes: an ``ftyp`` box and an ``mdat`` box header."""
    ftyp = struct.pack(">I4s4sI8s", 24, b"ftyp", b"isom", 0x200, b"isomiso2")
    mdat_size = max(8, total - len(ftyp))
    mdat = struct.pack(">I4s", mdat_size if mdat_size < 2**32 else 1, b"mdat")
    return (ftyp + mdat)[:total]
