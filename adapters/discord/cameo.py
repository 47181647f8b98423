"""``/video cameo ...`` on Discord: likeness consent through the shared command language.

Each command builds the core's text (``cameo allow <@id>``) and goes through ``run_command``, so
the rules and messages are those of every adapter; the core's ``Reply.actions`` (confirm, approve,
deny, delete posts) come back as persistent buttons.

No ``from __future__ import annotations`` here: discord.py reads the callbacks' annotations.
"""

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from adapters.discord.attachments import IMAGE_TYPES, AttachmentFetcher

CAMEO_MAX_BYTES = 25 * 1024 * 1024
CAMEO_TYPES = {**IMAGE_TYPES, "video/mp4": "MP4", "video/quicktime": "MOV", "video/webm": "WEBM"}
if TYPE_CHECKING:
    from adapters.discord.adapter import DiscordAdapter

_WORD = re.compile(r"\w[\w'-]{0,39}")


def _words(text: str) -> str:
    """Only word characters survive, so no option value can become a flag or another command."""
    return " ".join(_WORD.findall(text)[:50])


def add_cameo_commands(adapter: "DiscordAdapter") -> None:
    """Adds ``/video cameo`` to the adapter's command tree (before ``start``, which syncs)."""
    fetcher = AttachmentFetcher(
        max_bytes=CAMEO_MAX_BYTES,
        extra_origins=adapter.fetcher.extra_origins,
        allowed_types=CAMEO_TYPES,
        what="an image (JPEG, PNG, WEBP) or a 2-4 s video (MP4, MOV, WEBM) of yourself",
        noun="a file",
    )
    cameo = app_commands.Group(name="cameo", description="Your likeness: who may use it in clips, and its history")

    @cameo.command(name="register", description="Register your likeness: an image or a 2-4 s video of yourself")
    async def register(interaction: discord.Interaction, file: discord.Attachment) -> None:
        await adapter.run_command(interaction, "cameo register", image=file, fetcher=fetcher)

    @cameo.command(name="confirm", description="Give your consent to the cameo you registered")
    async def confirm(interaction: discord.Interaction) -> None:
        await adapter.run_command(interaction, "cameo confirm")

    @cameo.command(name="status", description="Who may use your cameo, and requests waiting for you")
    async def status(interaction: discord.Interaction) -> None:
        await adapter.run_command(interaction, "cameo status")

    @cameo.command(name="history", description="Every clip that used your likeness, who asked and where")
    async def history(interaction: discord.Interaction) -> None:
        await adapter.run_command(interaction, "cameo history")

    @cameo.command(name="audience", description="Who may use your cameo")
    @app_commands.choices(
        who=[
            app_commands.Choice(name="only me", value="only-me"),
            app_commands.Choice(name="people I approve", value="approved"),
            app_commands.Choice(name="this server", value="workspace"),
            app_commands.Choice(name="everyone", value="everyone"),
        ]
    )
    async def audience(interaction: discord.Interaction, who: app_commands.Choice[str]) -> None:
        await adapter.run_command(interaction, f"cameo audience {who.value}")

    @cameo.command(name="allow", description="Let someone use your cameo without asking")
    async def allow(interaction: discord.Interaction, member: discord.User) -> None:
        await adapter.run_command(interaction, f"cameo allow <@{member.id}>")

    @cameo.command(name="disallow", description="Take back someone's permission")
    async def disallow(interaction: discord.Interaction, member: discord.User) -> None:
        await adapter.run_command(interaction, f"cameo disallow <@{member.id}>")

    @cameo.command(name="forbid", description="Words your likeness must never be used with")
    async def forbid(interaction: discord.Interaction, words: str) -> None:
        await adapter.run_command(interaction, f"cameo forbid {_words(words)}")

    @cameo.command(name="unforbid", description="Remove words from your forbidden list")
    async def unforbid(interaction: discord.Interaction, words: str) -> None:
        await adapter.run_command(interaction, f"cameo unforbid {_words(words)}")

    @cameo.command(name="approve", description="Approve a request to use your cameo")
    async def approve(interaction: discord.Interaction, request: str, always: bool = False) -> None:
        suffix = " --always" if always else ""
        await adapter.run_command(interaction, f"cameo approve {_words(request)}{suffix}")

    @cameo.command(name="deny", description="Deny a request to use your cameo")
    async def deny(interaction: discord.Interaction, request: str) -> None:
        await adapter.run_command(interaction, f"cameo deny {_words(request)}")

    @cameo.command(name="revoke", description="Delete your cameo, stop every use, and list the posts that used it")
    async def revoke(interaction: discord.Interaction) -> None:
        await adapter.run_command(interaction, "cameo revoke")

    adapter.add_subgroup(cameo)
