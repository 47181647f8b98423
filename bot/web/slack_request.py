"""Slack's HTTP-mode requests, checked before anything parses them (platform-testing.md section 1.2).

``check_signature`` verifies ``v0=hex(HMAC_SHA256(secret, "v0:{ts}:" + raw body))`` on the raw bytes
(slack_sdk's ``SignatureVerifier`` decodes the body as UTF-8 first and raises on a non-numeric
timestamp, so it cannot be the one check that runs first). ``decode_body`` then turns the signed
bytes into the text Bolt will parse, after parsing it exactly as Bolt's ``parse_body`` does and
refusing what would make Bolt, a listener or a log line fail: invalid UTF-8, ``payload=x``, bad JSON,
something other than an object, nesting deeper than ``MAX_DEPTH``, a lone surrogate.

A refusal is a ``SlackRequestRefused`` with the HTTP status (401: not from Slack; 400: from Slack
but unusable) and a short fixed reason that never quotes the request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from urllib.parse import parse_qsl

TOLERANCE_S = 300
MAX_DEPTH = 32
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


class SlackRequestRefused(Exception):
    """``status`` (401 or 400) and a short reason fit for a response and a log line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_signature(
    *, secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: float = TOLERANCE_S
) -> None:
    """Raises ``SlackRequestRefused`` unless ``body`` was signed with ``secret`` within ``tolerance_s`` of ``now``.

    A correctly signed request whose timestamp is not a number is malformed (400), not forged (401).
    """
    timestamp = headers.get("X-Slack-Request-Timestamp")
    signature = headers.get("X-Slack-Signature")
    if not secret or not timestamp or not signature:
        raise SlackRequestRefused(401, "invalid request")
    try:
        stamp = timestamp.encode("utf-8")
        expected = "v0=" + hmac.new(secret.encode("utf-8"), b"v0:" + stamp + b":" + body, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(expected.encode(), signature.encode("utf-8"))
    except UnicodeEncodeError:
        valid = False
    if not valid:
        raise SlackRequestRefused(401, "invalid request")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise SlackRequestRefused(400, "the request timestamp is not a number")
    if abs(now - int(timestamp)) > tolerance_s:
        raise SlackRequestRefused(401, "invalid request")


def _bolt_parse(text: str, content_type: str | None) -> object:
    """What ``slack_bolt.request.internals.parse_body`` makes of ``text`` (same rules, same order)."""
    if not text:
        return {}
    if content_type == "application/json" or text.startswith("{"):
        return json.loads(text)
    if "payload" in text:
        payload = dict(parse_qsl(text, keep_blank_values=True)).get("payload")
        return json.loads(payload) if payload is not None else {}
    return dict(parse_qsl(text, keep_blank_values=True))


def _too_deep(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def decode_body(body: bytes, content_type: str | None) -> str:
    """The signed body as the text to hand Bolt; raises ``SlackRequestRefused(400)`` when it is unusable.

    ``content_type`` is the raw header. Slack sends UTF-8; a body declared in another (or a bogus)
    charset is refused rather than handed to a decoder.
    """
    kind, _, params = (content_type or "").partition(";")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8_CHARSETS:
            raise SlackRequestRefused(400, "the body's charset is not UTF-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SlackRequestRefused(400, "the body is not UTF-8") from None
    try:
        parsed = _bolt_parse(text, kind or None)
    except RecursionError:
        raise SlackRequestRefused(400, "the body is nested too deeply") from None
    except ValueError:
        raise SlackRequestRefused(400, "the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise SlackRequestRefused(400, "the body is not an object")
    if _too_deep(parsed, MAX_DEPTH):
        raise SlackRequestRefused(400, "the body is nested too deeply")
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SlackRequestRefused(400, "the body holds text that is not valid Unicode") from None
    return text


__all__ = ["MAX_DEPTH", "SlackRequestRefused", "check_signature", "decode_body"]
