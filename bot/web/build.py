"""``build_web``: the ``WebServer`` ``reelbot serve`` runs, with the provider webhooks mounted from settings."""

from __future__ import annotations

from bot.config import Settings
from bot.web.fal_signature import FalWebhookVerifier
from bot.web.server import WebServer
from bot.web.webhooks import OnWebhook, Webhooks


def build_web(
    settings: Settings, *, on_webhook: OnWebhook, host: str = "0.0.0.0", port: int | None = None
) -> WebServer:
    """A ``WebServer`` on ``REELBOT_HTTP_PORT`` (``port`` overrides it) with ``/healthz`` and, for each
    configured provider, its webhook route. Mount Slack on it with ``SlackAdapter.from_settings(...,
    server=web)``, then ``await web.start()``; ``await web.stop()`` also closes the webhooks' resources."""
    server = WebServer(host=host, port=settings.http_port if port is None else port)
    fal = None
    if settings.fal_key is not None:
        fal = FalWebhookVerifier(jwks_url=settings.fal_jwks_url, user_id=settings.fal_user_id)
    secret = settings.openrouter_webhook_secret
    webhooks = Webhooks(
        on_webhook=on_webhook,
        fal=fal,
        openrouter=settings.openrouter_api_key is not None,
        openrouter_secret=secret.get_secret_value() if secret is not None else None,
    )
    server.add_routes(webhooks.routes())
    server.on_stop(webhooks.aclose)
    return server


__all__ = ["build_web"]
