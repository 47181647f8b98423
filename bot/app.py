"""Assembles the core from configuration: store, provider, bot and worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.consent import enable_cameos
from bot.core import CorePolicy, ReelBot
from bot.providers.base import VideoProvider
from bot.store import Store
from bot.worker import Worker


def build_provider(settings: Settings) -> VideoProvider:
    """The provider named by configuration: the /v1/videos protocol, or the local renderer."""
    if settings.resolved_provider == "openai":
        from bot.providers.openai_videos import OpenAIVideosProvider

        assert settings.openai_api_key is not None
        return OpenAIVideosProvider(
            api_key=settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url
        )
    from bot.providers.local import LocalRenderer

    return LocalRenderer(work_dir=settings.data_dir / "renders")


@dataclass
class App:
    settings: Settings
    store: Store
    provider: VideoProvider
    bot: ReelBot
    worker: Worker

    async def close(self) -> None:
        await self.worker.stop()
        await self.provider.aclose()
        await self.store.close()


async def build_app(settings: Settings, *, provider: VideoProvider | None = None) -> App:
    """Opens the store and wires the core. Call ``await app.worker.start()`` once deliveries are registered."""
    data_dir: Path = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    store = await Store.open(settings.db_path)
    provider = provider or build_provider(settings)
    bot = ReelBot(store=store, provider=provider, policy=CorePolicy.from_settings(settings))
    enable_cameos(bot, data_dir=data_dir)
    worker = Worker(
        bot=bot,
        clips_dir=settings.clips_dir,
        max_in_flight=settings.max_jobs_in_flight,
        max_per_user=settings.max_jobs_per_user,
        render_deadline_s=settings.render_deadline_s,
    )
    return App(settings=settings, store=store, provider=provider, bot=bot, worker=worker)


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, for log redaction."""
    values = [
        settings.openai_api_key,
        settings.slack_bot_token,
        settings.slack_app_token,
        settings.slack_signing_secret,
        settings.discord_bot_token,
        settings.fal_key,
        settings.openrouter_api_key,
        settings.openrouter_webhook_secret,
    ]
    return [v.get_secret_value() for v in values if v is not None]
