"""Fetching a finished clip from fal's public CDN, without the fal key.

Output URLs are public (trap 7): the request carries no ``Authorization`` at all, so the key can
never reach the CDN or wherever it redirects. Writing the body (the 0600 ``.part`` file, the cap,
the refusal of non-video bodies) is ``bot.providers._download``; a CDN that serves the wrong kind of
body will serve it again, so such bodies are not retryable here.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from bot.clip_stream import ClipStream
from bot.providers._download import write_video
from bot.providers._http import StatusFailure, read_capped

_MAX_ERROR_BODY = 16 << 10
_ACCEPT = "video/mp4, application/octet-stream;q=0.9, */*;q=0.1"


async def stream_to_file(
    client: httpx.AsyncClient, url: str, dest: Path, *, max_bytes: int, stream: ClipStream | None = None
) -> int:
    """One download attempt; returns the byte count.

    Raises:
        StatusFailure: a non-2xx answer (the caller maps and maybe retries it).
        ProviderError: BAD_RESPONSE for a body over ``max_bytes`` or one that is not an MP4.
        httpx.HTTPError: transport failures.
    """
    async with client.stream("GET", url, headers={"Accept": _ACCEPT}, follow_redirects=True) as response:
        if not response.is_success:
            body = await read_capped(response, limit=_MAX_ERROR_BODY)
            raise StatusFailure(status=response.status_code, headers=response.headers, body=body)
        return await write_video(response, dest, max_bytes=max_bytes, bad_body_retryable=False, stream=stream)
