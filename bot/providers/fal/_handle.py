"""The opaque video id: everything a restarted process needs to find a fal request again.

fal cannot list requests, and its status/result/cancel URLs drop the endpoint's sub-path (trap 1),
so the id carries them: ``fal:<request_id>:<base64url JSON>`` with the response path (relative to
the queue root), the status and cancel paths when they are not the response path plus
``/status``/``/cancel``, the submit time and the expected render time (for the progress estimate).
The request id stays readable so logs and webhook matching can use it (``request_id_of``).

Paths are stored relative to the configured queue root and always resolved against it, so the key
only ever goes to that origin, whatever a stored id or a submit answer says.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from bot.providers.base import ErrorKind, ProviderError

PREFIX = "fal:"
_NAMESPACES = ("workflows", "comfy")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._~\-/]+$")


@dataclass(frozen=True, slots=True)
class FalHandle:
    """One submitted request.

    Attributes:
        request_id: fal's queue id.
        response_path: the result path, relative to the queue root (``fal-ai/veo3.1/requests/<id>``).
        status_path / cancel_path: the status and cancel paths (usually derived from the response path).
        submitted_at: unix seconds of the submit.
        typical_s: the expected render time, for the progress estimate.
    """

    request_id: str
    response_path: str
    status_path: str
    cancel_path: str
    submitted_at: float
    typical_s: float

    def encode(self) -> str:
        data: dict[str, object] = {"r": self.response_path, "t": round(self.submitted_at, 3), "e": self.typical_s}
        if self.status_path != f"{self.response_path}/status":
            data["s"] = self.status_path
        if self.cancel_path != f"{self.response_path}/cancel":
            data["c"] = self.cancel_path
        packed = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{PREFIX}{self.request_id}:{packed}"

    @classmethod
    def decode(cls, video_id: str) -> FalHandle:
        """Reads an id made by ``encode``.

        Raises:
            ProviderError: NOT_FOUND for anything else (not a fal id, damaged, or a path that
                leaves the queue root).
        """
        if not video_id.startswith(PREFIX):
            raise _not_ours(video_id)
        request_id, sep, packed = video_id[len(PREFIX) :].partition(":")
        if not sep or not request_id:
            raise _not_ours(video_id)
        try:
            data = json.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
            response = str(data["r"])
            handle = cls(
                request_id=request_id,
                response_path=response,
                status_path=str(data.get("s", f"{response}/status")),
                cancel_path=str(data.get("c", f"{response}/cancel")),
                submitted_at=float(data["t"]),
                typical_s=float(data["e"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _not_ours(video_id) from None
        for path in (handle.response_path, handle.status_path, handle.cancel_path):
            if not safe_path(path):
                raise _not_ours(video_id)
        return handle


def _not_ours(video_id: str) -> ProviderError:
    return ProviderError(ErrorKind.NOT_FOUND, f"not a fal video id: {video_id[:60]!r}")


def safe_path(path: str) -> bool:
    """A relative path without ``..``, a scheme or a query: it cannot point off the queue root."""
    return bool(_SAFE_PATH.match(path)) and not path.startswith("/") and ".." not in path.split("/")


def app_path(model_id: str) -> str:
    """``owner/app`` (with a ``workflows/``/``comfy/`` namespace in front), without the sub-path.

    This is how fal's own client rebuilds the status/result/cancel URLs (``AppId.from_endpoint_id``).
    """
    parts = [part for part in model_id.strip("/").split("/") if part]
    if parts and parts[0] in _NAMESPACES:
        return "/".join(parts[:3])
    return "/".join(parts[:2])


def request_id_of(video_id: str) -> str:
    """fal's request id inside a video id (webhooks name requests by it)."""
    return FalHandle.decode(video_id).request_id
