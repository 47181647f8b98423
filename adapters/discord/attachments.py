"""Fetching the picture attached to ``/video create``, refusing what we can refuse without downloading.

Checks happen in this order, and each refusal is one sentence for the person who asked:

1. the declared content type (or, when Discord sent none, the file extension) must be JPEG, PNG
   or WEBP: anything else is refused before a byte is fetched;
2. the declared size must be at most ``max_bytes``;
3. the URL must be ``https`` on Discord's CDN (``cdn.discordapp.com``, ``media.discordapp.net``) or
   on an origin the operator configured (the ``DISCORD_API_URL`` host, for proxies and tests);
4. the download is streamed without following redirects and stops as soon as it passes
   ``max_bytes`` (a lying size), and the bot token is never sent with it.

The core then sniffs the bytes (``bot.media.fit_reference``), so a PNG-named PDF is refused too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from bot.jobs import InputFile

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_EXTENSION_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
_CHUNK = 64 * 1024


class AttachmentRefused(ValueError):
    """The attachment can't be used; ``str(error)`` is the answer for the person."""


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """What Discord told us about an attachment, before anything is downloaded."""

    filename: str
    content_type: str | None
    size: int
    url: str


def _megabytes(n: int) -> str:
    value = n / (1024 * 1024)
    return f"{value:.1f}".removesuffix(".0") + " MB"


def _short(name: str) -> str:
    name = (name or "the attachment").strip()
    return name if len(name) <= 60 else name[:57] + "..."


def declared_type(info: AttachmentInfo) -> str | None:
    """The declared content type without parameters, or a guess from the extension when none was sent."""
    if info.content_type:
        return info.content_type.split(";", 1)[0].strip().lower()
    lowered = (info.filename or "").lower()
    for extension, content_type in _EXTENSION_TYPES.items():
        if lowered.endswith(extension):
            return content_type
    return None


def origin_of(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of a URL, lowercased."""
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.netloc or "").lower()


class AttachmentFetcher:
    """Checks and downloads attachments. Owns no session: pass the adapter's aiohttp session.

    Args:
        extra_origins: ``(scheme, host[:port])`` pairs trusted besides Discord's CDN, e.g. the
            origin of a configured ``DISCORD_API_URL`` proxy (and the fake Discord in tests).
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        extra_origins: Iterable[tuple[str, str]] = (),
        timeout_s: float = 30.0,
        allowed_types: dict[str, str] | None = None,
        what: str = "a JPEG, PNG or WEBP image",
        noun: str = "a picture",
    ) -> None:
        self.max_bytes = max_bytes
        self.extra_origins = frozenset(extra_origins)
        self.timeout_s = timeout_s
        self.allowed_types = allowed_types or IMAGE_TYPES
        self.what = what
        self.noun = noun

    def check(self, info: AttachmentInfo) -> str:
        """Refuses what can be refused before downloading; returns the content type to record."""
        name = _short(info.filename)
        content_type = declared_type(info)
        if content_type not in self.allowed_types:
            shown = f" ({content_type})" if content_type else ""
            raise AttachmentRefused(
                f"{name}{shown} is not {self.noun} I can use; attach {self.what}. Nothing was charged."
            )
        if info.size > self.max_bytes:
            raise AttachmentRefused(
                f"{name} is {_megabytes(info.size)}; attach a picture of at most {_megabytes(self.max_bytes)}. "
                "Nothing was charged."
            )
        if not self.trusted(info.url):
            raise AttachmentRefused(
                f"{name} is not stored on Discord's CDN, so I won't fetch it; upload the picture to Discord. "
                "Nothing was charged."
            )
        return "image/jpeg" if content_type == "image/jpg" else content_type

    def trusted(self, url: str) -> bool:
        scheme, netloc = origin_of(url)
        if (scheme, netloc) in self.extra_origins:
            return True
        host = urlsplit(url).hostname or ""
        port = urlsplit(url).port
        return scheme == "https" and host.lower() in CDN_HOSTS and port in (None, 443)

    async def fetch(self, session: aiohttp.ClientSession, info: AttachmentInfo) -> InputFile:
        """Checks, then downloads with a hard size cap. Raises ``AttachmentRefused``."""
        content_type = self.check(info)
        name = _short(info.filename)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with session.get(info.url, allow_redirects=False, timeout=timeout) as response:
                if response.status != 200:
                    raise AttachmentRefused(
                        f"Discord's CDN would not give me {name} (HTTP {response.status}); try attaching it again. "
                        "Nothing was charged."
                    )
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise AttachmentRefused(
                            f"{name} is larger than {_megabytes(self.max_bytes)}; attach a smaller picture. "
                            "Nothing was charged."
                        )
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AttachmentRefused(
                f"I could not download {name} from Discord ({type(exc).__name__}); try again. Nothing was charged."
            ) from None
        return InputFile(filename=info.filename or "image", content_type=content_type, data=b"".join(chunks))
