"""Discord avatars, so that a cameo registration can be checked against the person's own picture.

The user is looked up with the bot (``GET /users/{id}`` through discord.py, which knows the
avatar hash); the picture is ``{cdn}/avatars/{id}/{hash}.png?size=512`` (an animated avatar's
``a_`` hash gives its first frame as PNG). ``cdn`` is Discord's CDN, or, when ``DISCORD_API_URL``
points elsewhere (a proxy, the fake Discord in tests), that URL's origin.

The download goes through ``AttachmentFetcher``, so it gets the same rules as attachments: only
Discord's CDN or the configured origin, no redirects followed, no bot token sent, a size cap
enforced while streaming. Users without an avatar (Discord's default pictures show no face), an
unknown user, or any failure give ``None``, logged as one warning, and the registration falls back
to an admin's verification.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import discord

from adapters.discord.attachments import AttachmentFetcher, AttachmentInfo, AttachmentRefused
from bot.jobs import Requester
from bot.media import sniff_image_type

log = logging.getLogger(__name__)

CDN_URL = "https://cdn.discordapp.com"
DEFAULT_API_URL = "https://discord.com/api/v10"
#: Discord serves a 512 px avatar PNG in well under 1 MB.
AVATAR_MAX_BYTES = 2 * 1024 * 1024
AVATAR_SIZE = 512


def cdn_for(api_url: str) -> str:
    """Discord's CDN for Discord's API; the API's own origin for a proxy or a fake."""
    if api_url.rstrip("/") == DEFAULT_API_URL:
        return CDN_URL
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


class DiscordProfilePhotos:
    """The ``ProfilePhotos`` source for Discord (see ``bot.consent.identity``).

    Args:
        client: the adapter's discord.py client (logged in once the adapter started).
        cdn_url: where avatars are served (``cdn_for(api_url)``).
        extra_origins: origins trusted besides Discord's CDN (the adapter's, for a configured API URL).
        max_bytes: the largest avatar fetched.
    """

    def __init__(
        self,
        *,
        client: discord.Client,
        cdn_url: str = CDN_URL,
        extra_origins: frozenset[tuple[str, str]] = frozenset(),
        max_bytes: int = AVATAR_MAX_BYTES,
        timeout_s: float = 20.0,
    ) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.cdn_url = cdn_url.rstrip("/")
        self.fetcher = AttachmentFetcher(
            max_bytes=max_bytes,
            extra_origins=extra_origins,
            timeout_s=timeout_s,
            allowed_types={"image/png": "PNG"},
        )

    def avatar_url(self, user_id: int, avatar_hash: str) -> str:
        return f"{self.cdn_url}/avatars/{user_id}/{avatar_hash}.png?size={AVATAR_SIZE}"

    async def profile_photo(self, requester: Requester) -> bytes | None:
        """The person's avatar, or None (no avatar, unknown user, any failure)."""
        if requester.platform != "discord" or not requester.user_id.isdigit():
            return None
        user_id = int(requester.user_id)
        try:
            # discord.py retries Discord's 5xx answers with growing pauses: bound the whole look-up.
            user = await asyncio.wait_for(self._client.fetch_user(user_id), timeout=self.timeout_s)
        except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not look up Discord user %s for their avatar (%s)", user_id, type(exc).__name__)
            return None
        if user.avatar is None:
            return None  # Discord's default avatars are drawings, not a face
        info = AttachmentInfo(
            filename="avatar.png", content_type="image/png", size=0, url=self.avatar_url(user_id, user.avatar.key)
        )
        try:
            async with aiohttp.ClientSession(trust_env=False) as session:
                picture = await self.fetcher.fetch(session, info)
        except AttachmentRefused as exc:
            log.warning("the avatar of Discord user %s was not fetched: %s", user_id, exc)
            return None
        except Exception as exc:  # never a traceback for the person registering
            log.warning("the avatar of Discord user %s could not be fetched (%s)", user_id, type(exc).__name__)
            return None
        if sniff_image_type(picture.data) is None:
            log.warning("the avatar of Discord user %s is not a picture", user_id)
            return None
        return picture.data
