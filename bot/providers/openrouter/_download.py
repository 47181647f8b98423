"""Streaming a finished clip to disk, capped, through an owner-only ``.part`` file.

The body goes to ``.<name>.<random>.part`` next to the destination (created 0600), and is renamed
over the destination only once it is complete and under the cap, so a crash or an oversized
answer never leaves a truncated clip under the final name.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import IO

import httpx

from bot.providers.base import ErrorKind, ProviderError

CHUNK = 1 << 20  # bytes per write; bounds the memory a download holds
_NOT_VIDEO = ("application/json", "text/", "image/", "application/problem")


class PartFile:
    """The temporary file a download is written to; blocking calls run in a thread."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        self._fh: IO[bytes] | None = None

    def open(self) -> None:
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)

    def commit(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self.path, self.dest)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


def _media_type(headers: httpx.Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def stream_to_file(response: httpx.Response, dest: Path, *, max_bytes: int) -> int:
    """Writes a 2xx streamed ``response`` to ``dest`` and returns its size.

    Raises:
        ProviderError: BAD_RESPONSE when the body is not a video (JSON, HTML, an image, no MP4
            ``ftyp`` box), is empty, or is over ``max_bytes`` (the last is not retryable).
    """
    media = _media_type(response.headers)
    if media.startswith(_NOT_VIDEO) or media.endswith(("+json", "html")):
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"the download is {media}, not a video", retryable=True)
    part = PartFile(dest)
    try:
        await asyncio.to_thread(part.open)
        size = 0
        async for chunk in response.aiter_bytes(CHUNK):
            if size == 0 and not (len(chunk) >= 8 and chunk[4:8] == b"ftyp"):
                raise ProviderError(
                    ErrorKind.BAD_RESPONSE, f"the download does not start like an MP4: {chunk[:16]!r}", retryable=True
                )
            size += len(chunk)
            if size > max_bytes:
                raise ProviderError(
                    ErrorKind.BAD_RESPONSE, f"the download is over the {max_bytes}-byte cap; it was stopped"
                )
            await asyncio.to_thread(part.write, chunk)
        if size == 0:
            raise ProviderError(ErrorKind.BAD_RESPONSE, "the download is empty", retryable=True)
        await asyncio.to_thread(part.commit)
        return size
    except BaseException:
        part.discard()  # synchronous on purpose: it must run even when the task is being cancelled
        raise
