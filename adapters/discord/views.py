"""Persistent buttons and the Remix modal.

Every button is a ``discord.ui.DynamicItem`` whose ``custom_id`` carries what it acts on, so a
button pressed after a restart (or on a card posted weeks ago) still works: the templates are
registered with ``Client.add_dynamic_items`` when the adapter starts, and nothing is kept in memory
per message.

* ``reelbot:<action>:<job id>`` for the job card buttons (cancel, reroll, remix, retry);
* ``reelbot:cameo:<workspace>:<action>[:<arg>]`` for buttons the core asks for (``Reply.actions``
  and ``Delivery.direct_message``); the workspace rides along because a press in a DM has no guild.

The Remix modal's custom id is ``reelbot:remix-modal:<job id>``; its submission is routed by the
adapter's ``on_interaction`` listener rather than discord.py's in-memory modal store, so a modal
opened before a restart can still be submitted after it.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import discord

JOB_BUTTON = r"reelbot:(?P<action>cancel|reroll|remix|retry):(?P<job>[a-z0-9]{1,40})"
ACTION_BUTTON = r"reelbot:cameo:(?P<ws>[0-9]{1,20}|dm):(?P<action>[a-z_]{1,32})(?::(?P<arg>[A-Za-z0-9_.\-]{1,40}))?"
REMIX_MODAL = re.compile(r"reelbot:remix-modal:(?P<job>[a-z0-9]{1,40})")
PROMPT_FIELD = "prompt"
MAX_CUSTOM_ID = 100

_JOB_BUTTON_STYLE: dict[str, tuple[str, discord.ButtonStyle, str]] = {
    "cancel": ("Cancel", discord.ButtonStyle.danger, "✖️"),
    "reroll": ("Re-roll", discord.ButtonStyle.secondary, "🎲"),
    "remix": ("Remix", discord.ButtonStyle.primary, "✏️"),
    "retry": ("Retry delivery", discord.ButtonStyle.success, "🔁"),
}


class ButtonHandler(Protocol):
    """What the buttons call; the adapter implements it (reached as ``interaction.client.reelbot``)."""

    async def on_job_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...

    async def on_action_button(self, interaction: discord.Interaction, workspace_id: str, action_id: str) -> None: ...


def _handler(interaction: discord.Interaction) -> ButtonHandler:
    return interaction.client.reelbot  # type: ignore[attr-defined]


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=JOB_BUTTON):
    """Cancel / Re-roll / Remix / Retry on a job card."""

    def __init__(self, action: str, job_id: str) -> None:
        label, style, emoji = _JOB_BUTTON_STYLE[action]
        button = discord.ui.Button(label=label, style=style, emoji=emoji, custom_id=f"reelbot:{action}:{job_id}")
        super().__init__(button)
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _handler(interaction).on_job_button(interaction, self.action, self.job_id)


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=ACTION_BUTTON):
    """A button the core offered as ``(action_id, label)``, e.g. ``cameo_approve:REQ``."""

    def __init__(self, workspace_id: str, action_id: str, label: str = "OK") -> None:
        action, _, arg = action_id.partition(":")
        custom_id = f"reelbot:cameo:{workspace_id}:{action}" + (f":{arg}" if arg else "")
        style = discord.ButtonStyle.danger if "deny" in action or "delete" in action else discord.ButtonStyle.primary
        super().__init__(discord.ui.Button(label=label[:80] or "OK", style=style, custom_id=custom_id))
        self.workspace_id = workspace_id
        self.action_id = action_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionButton:
        action_id = match["action"] + (f":{match['arg']}" if match["arg"] else "")
        label = getattr(item, "label", None) or "OK"
        return cls(match["ws"], action_id, label)

    async def callback(self, interaction: discord.Interaction) -> None:
        await _handler(interaction).on_action_button(interaction, self.workspace_id, self.action_id)


def card_buttons(job_id: str, actions: tuple[str, ...]) -> discord.ui.View:
    """The persistent view for a job card (an empty view clears the buttons)."""
    view = discord.ui.View(timeout=None)
    for action in actions:
        if action in _JOB_BUTTON_STYLE:
            view.add_item(JobButton(action, job_id))
    return view


def action_buttons(workspace_id: str, actions: tuple[tuple[str, str], ...]) -> discord.ui.View | None:
    """Buttons for ``Reply.actions`` / direct messages; actions that can't be encoded are left out."""
    view = discord.ui.View(timeout=None)
    for action_id, label in actions[:25]:
        try:
            button = ActionButton(workspace_id, action_id, label)
        except ValueError:  # does not match the template (unexpected characters or too long)
            continue
        # DynamicItem only prefix-checks its template; dispatch needs a full match.
        if len(button.custom_id) <= MAX_CUSTOM_ID and ActionButton.__discord_ui_compiled_template__.fullmatch(
            button.custom_id
        ):
            view.add_item(button)
    return view if view.children else None


class RemixModal(discord.ui.Modal):
    """Asks what to change. Submissions are handled by the adapter (see the module docstring)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(title=f"Remix job {job_id}"[:45], custom_id=f"reelbot:remix-modal:{job_id}", timeout=None)
        self.prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="What should change?",
            custom_id=PROMPT_FIELD,
            style=discord.TextStyle.paragraph,
            placeholder="e.g. make it night time, with snow falling",
            min_length=1,
            max_length=4000,
        )
        self.add_item(self.prompt)


def modal_value(data: Any, field: str = PROMPT_FIELD) -> str | None:
    """The submitted value of a modal text input, wherever it sits (action rows or labels)."""
    if isinstance(data, dict):
        if data.get("custom_id") == field and "value" in data:
            return str(data["value"])
        for key in ("components", "component"):
            found = modal_value(data.get(key), field)
            if found is not None:
                return found
    elif isinstance(data, list):
        for item in data:
            found = modal_value(item, field)
            if found is not None:
                return found
    return None
