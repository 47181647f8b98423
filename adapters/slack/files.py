"""Fetching the pictures people attach in Slack, safely.

The bot token is only ever sent to Slack's own file host (``files.slack.com``) or to the host of
the configured Web API (``SLACK_API_URL``: an enterprise proxy, or the fake Slack in tests).
Files are refused before any request when Slack says they are too big or not pictures, the size
cap is enforced again while streaming (a file object can lie), redirects are followed only to
those same hosts, and the bytes are checked by their magic numbers: when the app lacks the
``files:read`` scope Slack answers ``200 OK`` with an HTML sign-in page instead of the file.
"""

from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import MAX_ATTACHMENT_BYTES
from bot.jobs import InputFile
from bot.media import sniff_image_type

log = logging.getLogger(__name__)

SLACK_FILE_HOSTS = frozenset({"files.slack.com"})
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 3
_NOT_PICTURES = ("video/", "audio/", "text/", "application/pdf", "application/zip", "application/vnd")


class SlackFileRefused(Exception):
    """A file we will not use; ``user_message`` says why, in one sentence for the person."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB".replace(".0 MB", " MB")


def _name(file: dict) -> str:
    name = str(file.get("name") or file.get("title") or "The file").strip()
    return name if len(name) <= 60 else name[:57] + "..."


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--"))


class SlackFiles:
    """Downloads Slack files with the bot token, only from Slack's hosts, up to ``max_bytes``.

    Args:
        token: the bot token (``xoxb-``), sent as a bearer header and never logged.
        api_url: the Web API base; its host is also trusted for files (enterprise proxies, tests).
        client: used for ``files.info`` when an event carries a file id without its URLs.
        max_bytes: the largest picture accepted.
    """

    def __init__(
        self,
        *,
        token: str,
        api_url: str,
        client: AsyncWebClient | None = None,
        max_bytes: int = MAX_ATTACHMENT_BYTES,
        timeout: float = 30.0,
    ) -> None:
        self._token = token
        self._client = client
        self.max_bytes = max_bytes
        self.timeout = timeout
        api = urlsplit(api_url)
        self._api_origin = (api.scheme.lower(), (api.netloc or "").lower())
        self.allowed_hosts = SLACK_FILE_HOSTS | {(api.hostname or "").lower()}
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the token
        return f"SlackFiles(hosts={sorted(self.allowed_hosts)}, max_bytes={self.max_bytes})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_for_use(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env: an enterprise HTTPS_PROXY applies here as it does to slack_sdk; NO_PROXY is honoured.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=True, auto_decompress=False
            )
        return self._session

    def trusted(self, url: str) -> bool:
        """Whether the bot token may be sent to ``url``: Slack's file host over https, or the API host."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.username is not None or parts.password is not None or not parts.hostname:
            return False
        host = parts.hostname.lower()
        scheme = parts.scheme.lower()
        if host in SLACK_FILE_HOSTS:
            return scheme == "https" and parts.port in (None, 443)
        # The configured Web API host: same scheme and port as SLACK_API_URL.
        return (scheme, parts.netloc.lower()) == self._api_origin

    def precheck(self, file: dict, *, allow_video: bool = False) -> None:
        """Refuses, before any download, what Slack already tells us we cannot use."""
        name = _name(file)
        mode = file.get("mode")
        if mode in ("tombstone", "hidden_by_limit") or file.get("is_hidden_by_limit"):
            raise SlackFileRefused(f"{name} is no longer available in Slack; please attach it again.")
        if mode == "external" or file.get("is_external"):
            raise SlackFileRefused(f"{name} is a link to another service; please upload the picture to Slack itself.")
        mimetype = str(file.get("mimetype") or "").lower()
        if mimetype.startswith(_NOT_PICTURES) and not (allow_video and mimetype.startswith("video/")):
            raise SlackFileRefused(f"{name} is not a picture ({mimetype}); attach a JPEG, PNG or WEBP image.")
        size = file.get("size")
        if isinstance(size, int | float) and size > self.max_bytes:
            raise SlackFileRefused(
                f"{name} is {_megabytes(int(size))}; pictures may be at most {_megabytes(self.max_bytes)}."
            )

    async def _complete(self, file: dict) -> dict:
        """Events sometimes carry only ``{"id": ..., "file_access": "check_file_info"}``."""
        if file.get("url_private_download") or file.get("url_private"):
            return file
        if not file.get("id") or self._client is None:
            raise SlackFileRefused(f"{_name(file)} did not come with a link I can download.")
        return await self.info(str(file["id"]))

    async def info(self, file_id: str) -> dict:
        if self._client is None:
            raise SlackFileRefused("I can't look that file up.")
        try:
            response = await self._client.files_info(file=file_id)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else "unknown"
            log.warning("files.info for %s failed: %s", file_id, error)
            if error == "missing_scope":
                raise SlackFileRefused(
                    "I'm not allowed to read files here (the app lacks files:read); ask an admin to reinstall it."
                ) from None
            raise SlackFileRefused("I couldn't find that file in Slack any more; please attach it again.") from None
        return dict(response.get("file") or {})

    async def download(self, file: dict, *, allow_video: bool = False) -> InputFile:
        """The file's bytes as an ``InputFile``.

        Raises:
            SlackFileRefused: too big, not a picture, on a host we don't trust, or not served.
        """
        self.precheck(file, allow_video=allow_video)
        file = await self._complete(file)
        self.precheck(file, allow_video=allow_video)
        name = _name(file)
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        if not self.trusted(url):
            host = urlsplit(url).hostname if url else None
            log.warning("refused to download file %s from untrusted host %s", file.get("id"), host)
            raise SlackFileRefused(f"{name} is not stored on Slack's own file servers, so I won't fetch it.")
        try:
            data, content_type = await self._fetch(url, name)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("download of file %s failed: %s", file.get("id"), type(exc).__name__)
            raise SlackFileRefused(f"I couldn't download {name} from Slack; please try again.") from None
        if not data:
            raise SlackFileRefused(f"{name} is empty.")
        if sniff_image_type(data) is None and _looks_like_html(data[:512]):
            log.warning("Slack served a web page instead of file %s (missing files:read scope?)", file.get("id"))
            raise SlackFileRefused(
                f"Slack sent me a sign-in page instead of {name}: the app probably lacks the files:read "
                "permission. Ask a workspace admin to reinstall reelbot from its manifest."
            )
        # Anything else that is not a JPEG/PNG/WEBP is refused by the core with a precise message.
        declared = str(file.get("mimetype") or content_type or "application/octet-stream")
        return InputFile(filename=str(file.get("name") or "image"), content_type=declared, data=data)

    async def _fetch(self, url: str, name: str) -> tuple[bytes, str | None]:
        session = self._session_for_use()
        headers = {"Authorization": f"Bearer {self._token}"}
        for _ in range(_MAX_REDIRECTS + 1):
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    target = urljoin(url, response.headers.get("Location", ""))
                    if not self.trusted(target):
                        log.warning("refused a redirect to untrusted host %s", urlsplit(target).hostname)
                        raise SlackFileRefused(f"Slack redirected {name} to another server, so I won't fetch it.")
                    url = target
                    continue
                if response.status != 200:
                    log.warning("file download answered HTTP %s", response.status)
                    raise SlackFileRefused(f"Slack would not give me {name} (HTTP {response.status}).")
                length = response.content_length
                if length is not None and length > self.max_bytes:
                    raise SlackFileRefused(
                        f"{name} is {_megabytes(length)}; pictures may be at most {_megabytes(self.max_bytes)}."
                    )
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise SlackFileRefused(
                            f"{name} is larger than {_megabytes(self.max_bytes)}, the most a picture may be."
                        )
                    chunks.append(chunk)
                return b"".join(chunks), response.content_type
        raise SlackFileRefused(f"Slack redirected {name} too many times.")
