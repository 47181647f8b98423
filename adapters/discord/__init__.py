"""The Discord adapter: ``/video`` application commands, threads, persistent buttons (discord.py)."""

from adapters.discord.adapter import DiscordAdapter, DiscordStartError
from adapters.discord.delivery import DiscordDelivery

__all__ = ["DiscordAdapter", "DiscordDelivery", "DiscordStartError"]
