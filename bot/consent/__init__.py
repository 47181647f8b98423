"""Likeness consent: cameos that only their owner can lend, bound to the person in them.

A person registers their own likeness (an image, or a 2 to 4 s video, that shows a face) under
their platform identity and confirms what that means. A face that is already another person's
cameo is refused; a profile photo, where the platform gives one, must show the same face; and,
as configured, a workspace admin verifies the cameo before anyone can use it. Others use it with
``--cameo @owner`` only as the owner's audience allows; "people I approve" sends the owner a
direct message and holds the job, with no money reserved, until they answer or the request
expires. Consent is checked again before submit, before download and before posting. Revoking
deletes every copy of the likeness, stops every unposted clip and lists the posted ones so they
can be deleted. Every step is written to an append-only audit the owner reads with
``/video cameo history``.

The parts: ``words`` (forbidden-word matching), ``media`` (files), ``identity`` (faces and
verification), ``policy`` (who may use it), ``registration``, ``commands`` (and settings),
``requests`` (approval), ``use`` (the checks) and ``revocation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bot.consent.commands import CameoCommands
from bot.consent.identity import AdminVerify, ProfilePhotos
from bot.consent.registration import CONSENT_TEXT
from bot.consent.requests import ConsentRequests
from bot.consent.revocation import Revocation
from bot.consent.use import CameoCheck, CameoUse
from bot.core import ReelBot, Reply
from bot.jobs import Job, Requester


class Cameos(CameoCommands, ConsentRequests, CameoUse, Revocation):
    """The consent service the core and worker call. Enable it with ``enable_cameos``."""

    async def hold_for_consent(self, job: Job, check: CameoCheck) -> Reply:
        """Holds the job (no money reserved) and asks the cameo's owner by direct message."""
        assert check.owner is not None
        return await self._hold(job, check.owner)

    async def press(self, requester: Requester, action_id: str) -> Reply:
        """A consent button: ``cameo_confirm``, ``cameo_approve:REQ``, ``cameo_always:REQ``, ``cameo_deny:REQ``,
        ``cameo_verify:USER``, ``cameo_delete_posts``."""
        action, _, arg = action_id.partition(":")
        if action == "cameo_confirm":
            return await self._confirm(requester)
        if action in ("cameo_approve", "cameo_always", "cameo_deny"):
            verb = "deny" if action == "cameo_deny" else "approve"
            return await self._decide(requester, arg, verb, always=action == "cameo_always")
        if action == "cameo_verify":
            return await self._verify(requester, arg)
        if action == "cameo_delete_posts":
            return await self._delete_posts(requester)
        return Reply("That button is no longer available.", ok=False)


def enable_cameos(
    bot: ReelBot,
    *,
    data_dir: Path,
    admin_verify: AdminVerify = "unverified",
    profile_photos: Mapping[str, ProfilePhotos] | None = None,
    clips_dir: Path | None = None,
) -> Cameos:
    """Wires likeness consent into the core (checked at request time and again before submit, download, posting)."""
    cameos = Cameos(
        bot=bot, data_dir=data_dir, admin_verify=admin_verify, profile_photos=profile_photos, clips_dir=clips_dir
    )
    bot.cameos = cameos
    return cameos


__all__ = ["CONSENT_TEXT", "CameoCheck", "Cameos", "ProfilePhotos", "enable_cameos"]
