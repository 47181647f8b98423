"""The terminal adapter: one command through the core exactly as a chat platform would send it."""

from adapters.console.delivery import ConsoleDelivery

__all__ = ["ConsoleDelivery"]
