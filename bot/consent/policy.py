"""Who may use a cameo for which prompt: the audience, the allow list, forbidden words, verification."""

from __future__ import annotations

from dataclasses import dataclass

from bot.consent.identity import AdminVerify, is_verified
from bot.consent.words import uses_any
from bot.core import mention
from bot.store import Cameo, CameoStore

AUDIENCES = {
    "only-me": "only_me",
    "approved": "approved",
    "workspace": "workspace",
    "everyone": "everyone",
    "server": "workspace",
    "only_me": "only_me",
}
AUDIENCE_WORDS = {
    "only_me": "only you",
    "approved": "people you approve",
    "workspace": "your workspace",
    "everyone": "everyone",
}
ASK = "ask"  # the owner must approve this use


@dataclass(frozen=True, slots=True)
class Use:
    """One use of a cameo: who asks, where, with which prompt, for which job (None before it exists)."""

    requester_key: str
    platform: str
    workspace_id: str
    prompt: str
    job_id: str | None = None


async def refusal(store: CameoStore, cameo: Cameo, use: Use, *, verify: AdminVerify) -> str | None:
    """None when the use is allowed, ``ASK`` when the owner must approve, else the refusal sentence."""
    who = mention(cameo.platform, cameo.user_id)
    if cameo.status == "unconfirmed":
        return f"{who} is registering their cameo again; it can't be used until they confirm it. Nothing was charged."
    if cameo.status != "active" or not cameo.likeness_path:
        return f"{who}'s cameo has been revoked. Nothing was charged."
    if not is_verified(cameo, verify):
        return (
            f"{who}'s cameo is waiting for a workspace admin to verify that it shows {who}; "
            "it can't be used until then. Nothing was charged."
        )
    if uses_any(use.prompt, await store.forbidden_words(cameo.owner_key)):
        return f"{who} does not allow their cameo to be used with a word in this prompt. Nothing was charged."
    if use.requester_key == cameo.owner_key or cameo.audience == "everyone":
        return None
    if cameo.audience == "workspace":
        if use.platform == cameo.platform and use.workspace_id == cameo.workspace_id:
            return None
        return f"{who}'s cameo is only for their own workspace. Nothing was charged."
    if cameo.audience == "approved":
        if await store.is_allowed(cameo.owner_key, use.requester_key):
            return None
        if use.job_id is not None:
            consent = await store.request_for_job(use.job_id)
            if consent is not None and consent.status == "approved":
                return None
        return ASK
    return f"Only {who} can use their cameo. Nothing was charged."
