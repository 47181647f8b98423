"""Writing a streamed clip to disk, capped, through an owner-only ``.part`` file.

Every provider downloads the same way, so it is kept once here:

- the body goes to ``.<name>.<random>.part`` next to the destination, created 0600 with
  ``O_EXCL`` (a clip may show a real person's likeness: no other local user may read it, and an
  existing file, or a link planted under that name, is never written through);
- it is written in 256 KiB chunks, so memory stays bounded whatever the size, and stopped as soon as
  it passes the byte cap (a declared ``Content-Length`` over the cap is refused before any write);
- it is renamed over the destination only once complete, so a crash, a cancellation or an
  oversized answer never leaves a truncated clip under the final name; anything else removes the
  part file (synchronously, so it also runs while the task is being cancelled);
- it is not fsynced: a killed process loses nothing the kernel already has, and after a machine
  crash a clip is checked again before it is posted (the worker probes every clip it did not
  download itself), so a flush would only add its ~10-20 ms per 8 MB to every delivery;
- a body that is not a video (JSON, HTML, text, an image, an MP4 without its ``ftyp`` box, or
  nothing) is refused: an error page saved as ``clip.mp4`` would be posted to a chat as a clip.

The file calls are made on the event loop: a 256 KiB write into the page cache (nothing is fsynced)
takes about 0.1-0.2 ms, no more than a hop to a worker thread and back, and a download no longer
waits for a free thread behind probes and renders.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO

import httpx

from bot.clip_stream import ClipStream
from bot.providers._http import media_type, read_capped
from bot.providers.base import ErrorKind, ProviderError

__all__ = ["CHUNK", "PartFile", "looks_like_mp4", "write_video"]

#: Bytes per write: bounds the memory a download holds, and how far a platform upload reading along
#: (``ClipStream``) trails the download (it gets each piece once the piece is whole).
CHUNK = 256 << 10
_SNIPPET_READ = 16 << 10  # how much of a non-video body is read to quote it in the error
_NOT_VIDEO_TYPES = ("application/json", "text/", "image/", "application/problem")


class PartFile:
    """The temporary file a download is written to, next to its destination."""

    def __init__(self, *, dest: Path) -> None:
        self.dest = dest
        self.path = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        self._fh: IO[bytes] | None = None

    def open(self) -> None:
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)

    def commit(self) -> None:
        """Closes the file and renames it over the destination (atomic on one file system)."""
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        os.replace(self.path, self.dest)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


def looks_like_mp4(head: bytes) -> bool:
    """ISO-BMFF files start with a box whose type is at bytes 4-8; MP4 starts with ``ftyp``."""
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _too_big(size: int, cap: int) -> ProviderError:
    detail = f"the download is over the {cap}-byte cap ({size}+ bytes); it was stopped"
    return ProviderError(ErrorKind.BAD_RESPONSE, detail)


async def write_video(
    response: httpx.Response,
    dest: Path,
    *,
    max_bytes: int | None,
    bad_body_retryable: bool,
    stream: ClipStream | None = None,
) -> int:
    """Writes the body of a 2xx streamed ``response`` to ``dest``; returns its size in bytes.

    Args:
        response: an ``httpx`` response opened with ``stream()`` whose status was already checked.
        dest: the final path of the clip.
        max_bytes: the cap, or None for none.
        bad_body_retryable: whether a body that is not a video (or is empty) is worth fetching again
            (a relay serving a transient error page) or not (a CDN that serves the wrong object).
        stream: gets every chunk as it is written (a platform upload reading along); it is finished
            once the file is complete, and aborted on any failure.

    Raises:
        ProviderError: BAD_RESPONSE for a body that is not a video, is empty (``retryable`` as
            ``bad_body_retryable``) or is over ``max_bytes`` (never retryable: it will not shrink).
        httpx.HTTPError: transport failures while streaming (the part file is removed first).
    """
    try:
        size = await _write_video(
            response, dest, max_bytes=max_bytes, bad_body_retryable=bad_body_retryable, stream=stream
        )
    except BaseException as exc:
        if stream is not None:
            stream.abort(f"the download failed: {type(exc).__name__}")
        raise
    if stream is not None:
        stream.finish()
    return size


async def _write_video(
    response: httpx.Response, dest: Path, *, max_bytes: int | None, bad_body_retryable: bool, stream: ClipStream | None
) -> int:
    media = media_type(response.headers)
    if media.startswith(_NOT_VIDEO_TYPES) or media.endswith(("+json", "html")):
        snippet = (await read_capped(response, limit=_SNIPPET_READ))[:200].decode("utf-8", "replace")
        raise ProviderError(
            ErrorKind.BAD_RESPONSE, f"the download is {media}, not a video: {snippet!r}", retryable=bad_body_retryable
        )
    declared = response.headers.get("content-length", "")
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_big(int(declared), max_bytes)
    if stream is not None:
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        stream.begin(int(declared) if declared.isdigit() and not encoded else None)  # decoded bytes differ
    part = PartFile(dest=dest)
    try:
        part.open()
        size = 0
        async for chunk in response.aiter_bytes(CHUNK):
            if size == 0 and not looks_like_mp4(chunk):
                raise ProviderError(
                    ErrorKind.BAD_RESPONSE,
                    f"the download ({media or 'untyped'}) does not start like an MP4: {chunk[:16]!r}",
                    retryable=bad_body_retryable,
                )
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise _too_big(size, max_bytes)
            part.write(chunk)
            if stream is not None:
                stream.feed(chunk)
        if size == 0:
            raise ProviderError(ErrorKind.BAD_RESPONSE, "the download is empty", retryable=bad_body_retryable)
        part.commit()
        return size
    except BaseException:
        part.discard()  # synchronous on purpose: it must run even when the task is being cancelled
        raise
