"""Using a cameo: the check when a clip is asked for, and the checks again before submit, download and posting."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

from bot.commands import VideoCommand
from bot.consent.base import CameosBase
from bot.consent.identity import MODEL, embedding_of, is_verified, same_face
from bot.consent.media import content_hash
from bot.consent.policy import ASK, Use, refusal
from bot.core import mention, resolve_user
from bot.faces import has_face
from bot.jobs import ChatRequest, Job
from bot.media import fit_reference
from bot.providers.base import ProviderError, ReferenceImage
from bot.store import Cameo


@dataclass(frozen=True, slots=True)
class CameoCheck:
    """The verdict on a clip request's likeness use.

    Attributes:
        allowed: false means refuse with ``message``.
        pending: the owner must approve first (the job waits without reserving money).
        owner_key: the cameo whose likeness the clip uses.
        reference: the likeness image, fitted to the clip size, for the provider.
    """

    allowed: bool
    message: str = ""
    pending: bool = False
    owner_key: str | None = None
    reference: ReferenceImage | None = None
    owner: Cameo | None = None


class CameoUse(CameosBase):
    async def check_request(
        self, command: VideoCommand, request: ChatRequest, reference: ReferenceImage | None
    ) -> CameoCheck:
        """Decides whether a clip request may use the likeness it names or shows, before anything is spent."""
        requester = request.requester
        if command.cameo is None:
            return await self._screen_plain_reference(request, reference)
        if not self.bot.provider.accepts_likeness:
            return CameoCheck(
                False,
                f"Cameos can't be used with the {self.bot.provider.name} video service: its "
                "protocol rejects images of real people. Nothing was charged.",
            )
        user_id = resolve_user(command.cameo, request)
        cameo = await self.store.find(requester.platform, user_id, requester.workspace_id)
        who = mention(requester.platform, user_id)
        if cameo is None or cameo.status != "active" or not cameo.likeness_path:
            return CameoCheck(False, f"{who} has no active cameo. They can register one with /video cameo register.")
        use = Use(requester.key, requester.platform, requester.workspace_id, command.prompt)
        verdict = await refusal(self.store, cameo, use, verify=self.admin_verify)
        if verdict is not None and verdict != ASK:
            return CameoCheck(False, verdict)
        likeness = await self._likeness(cameo, command.size)
        return CameoCheck(True, pending=verdict == ASK, owner_key=cameo.owner_key, reference=likeness, owner=cameo)

    async def _likeness(self, cameo: Cameo, size: str) -> ReferenceImage:
        assert cameo.likeness_path is not None
        data = await asyncio.to_thread(Path(cameo.likeness_path).read_bytes)
        return await asyncio.to_thread(
            fit_reference, data, declared_type="image/png", filename="cameo.png", size=size, is_likeness=True
        )

    async def _screen_plain_reference(self, request: ChatRequest, reference: ReferenceImage | None) -> CameoCheck:
        if reference is None:
            return CameoCheck(True)
        # Screen what the person sent as well as the fitted crop: cover-cropping can cut a face in half.
        raw = next((a.data for a in request.attachments if a.data), b"")
        candidates = [data for data in (raw, reference.data) if data]
        if not any([await asyncio.to_thread(has_face, data) for data in candidates]):
            return CameoCheck(True, reference=reference)
        requester = request.requester
        own = await self.store.get(requester.key)
        if own is not None and own.status == "active" and raw and await self._is_own_face(own, raw):
            if not is_verified(own, self.admin_verify):
                return CameoCheck(
                    False,
                    "That image shows your face, and your cameo waits for a workspace admin to verify it. "
                    "Nothing was charged.",
                )
            if not self.bot.provider.accepts_likeness:
                return CameoCheck(
                    False,
                    f"That image shows a face, and the {self.bot.provider.name} video service "
                    "rejects images of real people. Nothing was charged.",
                )
            likeness = replace(reference, is_likeness=True)
            return CameoCheck(True, owner_key=own.owner_key, reference=likeness, owner=own)
        return CameoCheck(
            False,
            "That image shows a person's face. To put someone in a clip, use a cameo: they "
            "register it with /video cameo register, and you add --cameo @name. Nothing was "
            "charged.",
        )

    async def _is_own_face(self, own: Cameo, raw: bytes) -> bool:
        if own.asset_hash and content_hash(raw) == own.asset_hash:
            return True
        if own.embedding is None or own.embedding_model != MODEL:
            return False
        theirs = await asyncio.to_thread(embedding_of, raw)
        return theirs is not None and same_face(theirs, own.embedding)

    async def recheck(self, job: Job) -> str | None:
        """Checks consent again (before submit, before download, before posting): a refusal sentence or None.

        Audience, allow list, forbidden words, verification and revocation are read afresh. A
        refused job will not be delivered, so its copies of the likeness (reference, clip) are
        deleted here; the caller ends the job.
        """
        if job.options.cameo is None:
            return None
        cameo = await self.store.get(job.options.cameo)
        if cameo is None:
            verdict: str | None = "The cameo this clip uses no longer exists. Nothing was charged."
        else:
            use = Use(job.user_key, job.platform, job.workspace_id, job.prompt, job.id)
            verdict = await refusal(self.store, cameo, use, verify=self.admin_verify)
            if verdict == ASK:
                who = mention(cameo.platform, cameo.user_id)
                verdict = f"{who} no longer allows you to use their cameo. Nothing was charged."
        if verdict is not None:
            await asyncio.to_thread(self.job_files_delete, job)
            if job.provider_video_id:
                with contextlib.suppress(ProviderError):
                    await self.bot.provider_for(job).delete(job.provider_video_id)
        return verdict

    def job_files_delete(self, job: Job) -> None:
        """Deletes the job's reference and every clip file of it (partial downloads included)."""
        paths = [Path(p) for p in (job.reference_path, job.clip_path) if p]
        if self.clips_dir.is_dir():
            paths += [p for p in self.clips_dir.glob(f"{job.id}.*") if p.is_file()]
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    async def record_use(self, job: Job) -> None:
        """Audits a delivered clip that used a cameo: who asked, where, which post."""
        if job.options.cameo is None:
            return
        where = f"in {job.platform} channel {job.channel_id}"
        await self.store.log(
            job.options.cameo, job.user_key, "used_in_job", job_id=job.id, detail=f"{where} (post {job.delivered_ref})"
        )
