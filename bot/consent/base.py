"""What every part of the consent service shares: its collaborators and a few small helpers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from bot.consent.identity import AdminVerify, ProfilePhotos
from bot.consent.media import AssetFiles
from bot.core import ReelBot, Reply
from bot.delivery import DeliveryError
from bot.jobs import Job, Requester
from bot.store import Cameo, CameoStore

log = logging.getLogger("bot.consent")


class CameosBase:
    """The consent service's state. ``Cameos`` adds commands, requests, use checks and revocation."""

    def __init__(
        self,
        *,
        bot: ReelBot,
        data_dir: Path,
        admin_verify: AdminVerify = "unverified",
        profile_photos: Mapping[str, ProfilePhotos] | None = None,
        clips_dir: Path | None = None,
    ) -> None:
        self.bot = bot
        self.store = CameoStore(bot.store)
        self.assets_dir = data_dir / "cameos"
        self.files = AssetFiles(root=self.assets_dir)
        self.clips_dir = clips_dir or data_dir / "clips"
        self.timeout_s = bot.policy.consent_timeout_s
        self.admin_verify: AdminVerify = admin_verify
        #: Profile-photo sources by platform; an adapter that can fetch them registers one here.
        self.profile_photos: dict[str, ProfilePhotos] = dict(profile_photos or {})

    def add_profile_photos(self, platform: str, source: ProfilePhotos) -> None:
        """Registers ``platform``'s profile-photo source (adapters are built after the core, so they call this)."""
        self.profile_photos[platform] = source

    # --- defined by the parts (``Cameos`` lists this class last, so theirs come first) ------------

    async def _revoke(self, requester: Requester) -> Reply:
        raise NotImplementedError

    async def _decide(self, requester: Requester, request_id: str, verb: str, *, always: bool) -> Reply:
        raise NotImplementedError

    def job_files_delete(self, job: Job) -> None:
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------------------

    async def _active(self, requester: Requester) -> Cameo | Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply(
                "You have no cameo. Register one: /video cameo register with an image or a 2-4 s video "
                "of yourself attached.",
                ok=False,
            )
        if cameo.status != "active":
            return Reply(
                "Your cameo is not confirmed yet: /video cameo confirm.",
                ok=False,
                actions=(("cameo_confirm", "I consent: confirm my cameo"),),
            )
        return cameo

    async def _tell(self, job: Job, text: str) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is not None:
            with contextlib.suppress(DeliveryError):
                await delivery.notify(job, text)
