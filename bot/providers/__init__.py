"""Video providers: the interface the worker uses, and its implementations."""

from bot.providers.base import (
    ErrorKind,
    ProviderError,
    ProviderVideo,
    ReferenceImage,
    RenderSpec,
    VideoProvider,
    VideoStatus,
)

__all__ = [
    "ErrorKind",
    "ProviderError",
    "ProviderVideo",
    "ReferenceImage",
    "RenderSpec",
    "VideoProvider",
    "VideoStatus",
]
