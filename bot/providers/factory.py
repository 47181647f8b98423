"""Builds the configured providers from settings: one per key that is set, else the local renderer."""

from __future__ import annotations

from urllib.parse import urlsplit

from bot.config import Settings
from bot.providers.base import VideoProvider
from bot.providers.registry import ProviderSet


def build_provider(settings: Settings, name: str) -> VideoProvider:
    """One provider by its name in reelbot (``fal``, ``openrouter``, ``openai``, ``local``)."""
    if name == "fal":
        from bot.providers.fal import FalProvider

        assert settings.fal_key is not None
        return FalProvider(api_key=settings.fal_key.get_secret_value(), queue_url=settings.fal_queue_url)
    if name == "openrouter":
        from bot.providers.openrouter import OpenRouterProvider

        assert settings.openrouter_api_key is not None
        public = urlsplit(settings.public_url or "")
        return OpenRouterProvider(
            api_key=settings.openrouter_api_key.get_secret_value(),
            base_url=settings.openrouter_base_url,
            app_url=settings.public_url,
            # OpenRouter calls back only to https; a plain-http loopback URL is a local test set-up.
            allow_http_callbacks=public.scheme == "http" and public.hostname in ("127.0.0.1", "localhost", "::1"),
        )
    if name == "openai":
        from bot.providers.openai_videos import OpenAIVideosProvider

        assert settings.openai_api_key is not None
        return OpenAIVideosProvider(
            api_key=settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url
        )
    if name == "local":
        from bot.providers.local import LocalRenderer

        return LocalRenderer(work_dir=settings.data_dir / "renders")
    raise ValueError(f"unknown provider {name!r}")


def build_providers(settings: Settings) -> ProviderSet:
    """Every provider whose key is set (``Settings.provider_names``), the first one the default."""
    names = settings.provider_names
    return ProviderSet({name: build_provider(settings, name) for name in names}, default=names[0])
