"""Slack profile photos, so that a cameo registration can be checked against the person's own picture.

``users.info`` gives ``user.profile.image_512`` (and ``image_original`` for custom pictures). The
picture is fetched under the same rules as attached files (``adapters.slack.files``):

- the bot token goes only where ``SlackFiles.trusted`` allows it (``files.slack.com`` over https,
  or the configured Web API origin: an enterprise proxy, the fake Slack in tests);
- Slack's public avatar CDN (``*.slack-edge.com`` over https) is fetched without the token;
- any other host (Gravatar, for people who never uploaded a picture, or anything else) is not
  fetched at all;
- redirects are followed only to those same hosts, deciding about the token again for each hop;
- the size is capped by the declared length and again while streaming, and the bytes must be a
  JPEG, PNG or WEBP by their magic numbers (a sign-in page is not a picture).

Every failure means "no profile photo" (``None``), logged once as a warning without the token, so
the registration falls back to an admin's verification instead of failing.
"""

from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.files import SlackFiles
from bot.jobs import Requester
from bot.media import sniff_image_type

log = logging.getLogger(__name__)

#: Slack's public avatar hosts (``https://avatars.slack-edge.com/2024-01-01/123_abc_512.png``).
AVATAR_HOSTS = frozenset({"avatars.slack-edge.com", "ca.slack-edge.com", "a.slack-edge.com"})
#: A 512 px profile picture is well under 1 MB; ``image_original`` can be larger, never this large.
PROFILE_MAX_BYTES = 5 * 1024 * 1024
_FIELDS = ("image_512", "image_original")
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 3


class _NoPhoto(Exception):
    """Why there is no usable picture (for the log only)."""


class SlackProfilePhotos:
    """The ``ProfilePhotos`` source for Slack (see ``bot.consent.identity``).

    Args:
        client: the adapter's ``AsyncWebClient`` (``users.info`` needs the ``users:read`` scope).
        files: the adapter's ``SlackFiles``: its ``trusted`` decides where the bot token may go.
        token: the bot token, sent as a bearer header only to ``files.trusted`` URLs; never logged.
        max_bytes: the largest picture fetched.
    """

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        files: SlackFiles,
        token: str,
        max_bytes: int = PROFILE_MAX_BYTES,
        timeout: float = 20.0,
    ) -> None:
        self._client = client
        self._files = files
        self._token = token
        self.max_bytes = max_bytes
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"SlackProfilePhotos(max_bytes={self.max_bytes})"

    def allowed(self, url: str) -> bool:
        """Whether ``url`` may be fetched at all: a token-trusted URL or Slack's avatar CDN over https."""
        return self._files.trusted(url) or self._avatar_cdn(url)

    @staticmethod
    def _avatar_cdn(url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        if parts.username is not None or parts.password is not None:
            return False
        host = (parts.hostname or "").lower()
        return parts.scheme.lower() == "https" and host in AVATAR_HOSTS and port in (None, 443)

    async def profile_photo(self, requester: Requester) -> bytes | None:
        """The person's profile picture, or None (no custom picture, an untrusted host, any failure)."""
        if requester.platform != "slack":
            return None
        try:
            url = await self._picture_url(requester.user_id)
            if url is None:
                return None
            return await self._fetch(url)
        except _NoPhoto as exc:
            log.warning("no profile photo for %s: %s", requester.user_id, exc)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("profile photo of %s could not be fetched (%s)", requester.user_id, type(exc).__name__)
        except Exception as exc:  # users.info errors (SlackApiError, missing scope...): no photo, no traceback
            log.warning("profile photo of %s is unavailable (%s)", requester.user_id, type(exc).__name__)
        return None

    async def _picture_url(self, user_id: str) -> str | None:
        response = await self._client.users_info(user=user_id)
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        if not isinstance(profile, dict) or profile.get("is_custom_image") is False:
            return None  # Slack's generated default picture shows no face
        for field in _FIELDS:
            url = profile.get(field)
            if isinstance(url, str) and url:
                return url
        return None

    async def _fetch(self, url: str) -> bytes:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=True, auto_decompress=False
        ) as session:
            for _ in range(_MAX_REDIRECTS + 1):
                if not self.allowed(url):
                    raise _NoPhoto(f"the picture is on a host reelbot does not fetch from ({_host(url)})")
                headers = {"Authorization": f"Bearer {self._token}"} if self._files.trusted(url) else {}
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status != 200:
                        raise _NoPhoto(f"HTTP {response.status}")
                    return await self._read(response)
        raise _NoPhoto("too many redirects")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self.max_bytes:
            raise _NoPhoto(f"it is {length} bytes, over the {self.max_bytes}-byte cap")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > self.max_bytes:
                raise _NoPhoto(f"it is over the {self.max_bytes}-byte cap")
            chunks.append(chunk)
        data = b"".join(chunks)
        if sniff_image_type(data) is None:
            raise _NoPhoto("the answer is not a JPEG, PNG or WEBP picture")
        return data


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "no host"
    except ValueError:
        return "an invalid URL"
