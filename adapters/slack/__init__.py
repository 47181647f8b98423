"""The Slack adapter: slash command, mentions with pictures, a message shortcut, forms and buttons."""

from adapters.slack.adapter import SlackAdapter
from adapters.slack.delivery import SlackDelivery

__all__ = ["SlackAdapter", "SlackDelivery"]
