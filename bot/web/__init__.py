"""reelbot's HTTP side: one hardened server (``WebServer``) that Slack's HTTP mode, the provider
webhooks and ``/healthz`` all mount their routes on, and ``build_web`` to assemble it from settings."""

from bot.web.build import build_web
from bot.web.server import WebServer
from bot.web.webhooks import Webhooks, webhook_url

__all__ = ["WebServer", "Webhooks", "build_web", "webhook_url"]
