"""Streaming a finished clip from fal's public CDN to disk, capped, without the fal key.

Output URLs are public (trap 7): the request carries no ``Authorization`` at all, so the key can
never reach the CDN or wherever it redirects. The body goes to a ``.part`` file created 0600 next
to the destination and is renamed over it only when complete; anything else removes the part file.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import IO

import httpx

from bot.providers.base import ErrorKind, ProviderError

CHUNK = 1 << 20
_MAX_ERROR_BODY = 16 << 10
_NOT_VIDEO_TYPES = ("application/json", "text/", "image/", "application/problem")


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


class CdnStatus(Exception):
    """A non-2xx CDN answer, carried to the retry loop."""

    def __init__(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


def _too_big(size: int, cap: int) -> ProviderError:
    return ProviderError(ErrorKind.BAD_RESPONSE, f"the clip is over the {cap}-byte download cap ({size}+ bytes)")


async def stream_to_file(client: httpx.AsyncClient, url: str, dest: Path, *, max_bytes: int) -> int:
    """One download attempt; returns the byte count.

    Raises:
        CdnStatus: a non-2xx answer (the caller maps and maybe retries it).
        ProviderError: BAD_RESPONSE for a body over ``max_bytes`` or one that is not an MP4.
        httpx.HTTPError: transport failures.
    """
    part = PartFile(dest)
    try:
        headers = {"Accept": "video/mp4, application/octet-stream;q=0.9, */*;q=0.1"}
        async with client.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if not response.is_success:
                raise CdnStatus(response.status_code, response.headers, await _read_capped(response))
            media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type.startswith(_NOT_VIDEO_TYPES) or media_type.endswith(("+json", "html")):
                snippet = (await _read_capped(response))[:200].decode("utf-8", "replace")
                raise ProviderError(
                    ErrorKind.BAD_RESPONSE, f"the clip URL served {media_type}, not a video: {snippet!r}"
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(int(declared), max_bytes)
            size = 0
            await asyncio.to_thread(part.open)
            async for chunk in response.aiter_bytes(CHUNK):
                if size == 0 and not (len(chunk) >= 8 and chunk[4:8] == b"ftyp"):
                    raise ProviderError(ErrorKind.BAD_RESPONSE, f"the clip does not start like an MP4: {chunk[:16]!r}")
                size += len(chunk)
                if size > max_bytes:
                    raise _too_big(size, max_bytes)
                await asyncio.to_thread(part.write, chunk)
            if size == 0:
                raise ProviderError(ErrorKind.BAD_RESPONSE, "the clip is empty")
            await asyncio.to_thread(part.commit)
            return size
    except BaseException:
        part.discard()  # synchronous: it must run even when the task is being cancelled
        raise


async def _read_capped(response: httpx.Response) -> bytes:
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if len(buffer) >= _MAX_ERROR_BODY:
            break
    return bytes(buffer[:_MAX_ERROR_BODY])
