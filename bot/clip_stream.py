"""A clip's bytes handed to a second reader while the download still writes them to disk (a tee).

Why: from a provider's completion to the clip in the thread, the download and the platform's upload
were done one after the other. Where the platform takes a clip's bytes before it shows them (Slack:
upload, then complete; see ``bot.delivery.StagesClips``), the worker gives the download a
``ClipStream`` and the platform reads the same chunks as they arrive, so the upload ends right after
the download. Nothing is shown until the clip on disk was checked.

The file stays the truth. The stream breaks instead of ever serving bytes that differ from the file:
when the body has no declared length, when the download starts again (a retry), when it fails or is
cancelled, or when the reader falls ``max_buffered`` bytes behind (memory stays bounded). A broken
stream makes the staged upload fail, and the worker then uploads the checked file as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["ClipStream", "ClipStreamBroken"]

#: How far (bytes) the reader may fall behind the download before the stream gives up.
MAX_BUFFERED = 8 << 20


class ClipStreamBroken(Exception):
    """The stream stopped before the end; ``str(error)`` says why (for the log)."""


class ClipStream:
    """One download's bytes, for one reader. The writer calls ``begin``, ``feed``..., then ``finish`` or ``abort``."""

    def __init__(self, *, max_buffered: int = MAX_BUFFERED) -> None:
        self._max_buffered = max_buffered
        self._size: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0
        self._fed = 0
        self._begun = False
        self._finished = False
        self._broken: str | None = None

    # --- the download's side ---------------------------------------------------------------

    def begin(self, size: int | None) -> None:
        """The body is about to come, ``size`` bytes long (its Content-Length), or of unknown length (None)."""
        if self._begun:
            self.abort("the download started again")
            return
        self._begun = True
        if size is None or size <= 0:
            self.abort("the download declared no length")
            return
        if not self._size.done():
            self._size.set_result(size)

    def feed(self, chunk: bytes) -> None:
        """The next bytes, exactly as written to the file."""
        if self._broken is not None or self._finished:
            return
        self._buffered += len(chunk)
        self._fed += len(chunk)
        if self._buffered > self._max_buffered:
            self.abort("the upload fell behind the download")
            return
        self._chunks.put_nowait(chunk)

    def finish(self) -> None:
        """Every byte was fed and the file is complete."""
        if self._broken is not None or self._finished or not self._begun:
            return
        if self._fed != self._size.result():
            self.abort(f"{self._fed} bytes came, not the {self._size.result()} declared")
            return
        self._finished = True
        self._chunks.put_nowait(None)

    def abort(self, why: str) -> None:
        """Stops the stream for good; the reader gets ``ClipStreamBroken(why)``. Idempotent."""
        if self._broken is not None or self._finished:
            return
        self._broken = why
        while not self._chunks.empty():  # nobody will read them: the memory goes now
            self._chunks.get_nowait()
        if not self._size.done():
            self._size.set_exception(ClipStreamBroken(why))
            self._size.exception()  # retrieved here: a reader that never asked must not log it
        self._chunks.put_nowait(None)

    @property
    def broken(self) -> str | None:
        return self._broken

    # --- the reader's side -----------------------------------------------------------------

    async def size(self) -> int:
        """The declared length, once the download's headers arrived.

        Raises:
            ClipStreamBroken: the stream broke first.
        """
        return await asyncio.shield(self._size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in order, as they arrive.

        Raises:
            ClipStreamBroken: the stream broke before the end (the reader must not use what it got).
        """
        while True:
            chunk = await self._chunks.get()
            if self._broken is not None:
                raise ClipStreamBroken(self._broken)
            if chunk is None:
                return
            self._buffered -= len(chunk)
            yield chunk
