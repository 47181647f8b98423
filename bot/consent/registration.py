"""Registering a cameo: the likeness, the face that must be nobody else's, the consent, the admin's verification."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import replace
from pathlib import Path

from bot.consent.base import CameosBase, log
from bot.consent.identity import (
    MODEL,
    embedding_of,
    is_verified,
    owner_of_face,
    profile_match,
    verified_at_registration,
)
from bot.consent.media import NO_FACE, content_hash, likeness_from
from bot.core import Reply, mention
from bot.delivery import DeliveryError
from bot.jobs import ChatRequest, Requester
from bot.media import MediaError
from bot.store import Cameo

CONSENT_TEXT = (
    "A cameo lets reelbot put your likeness (your face, from the image or video you attach) into AI-generated "
    "clips. Only you decide who may use it: only you (the default), people you approve one by one, your "
    "workspace, or everyone. You can forbid words it must never be used with, see every clip that used it "
    "(/video cameo history), and revoke it at any time: revoking deletes the stored likeness, refuses every "
    "later use and stops clips not yet posted."
)
TAKEN = (
    "That face is already someone else's registered cameo. A cameo can only be registered by the person in "
    "it; if it is you, ask a workspace admin. Nothing was stored."
)
NOT_PROFILE = (
    "That face does not match your profile photo here. A cameo can only be registered by the person in it. "
    "Nothing was stored."
)
USER_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # a platform user id, as mentions give it


class Registration(CameosBase):
    async def _register(self, request: ChatRequest) -> Reply:
        requester = request.requester
        files = list(request.attachments)
        if len(files) == 1 and not files[0].data:
            return Reply(f"{files[0].filename} is empty.", ok=False)
        if len(files) != 1:
            return Reply(
                "Attach exactly one image (JPEG, PNG or WEBP) or one 2-4 s video of yourself to register a cameo.",
                ok=False,
            )
        data = files[0].data
        try:
            likeness = await asyncio.to_thread(likeness_from, files[0])
        except MediaError as exc:
            return Reply(str(exc), ok=False)
        embedding = await asyncio.to_thread(embedding_of, likeness.picture)
        if embedding is None:
            return Reply(NO_FACE.format(what="picture"), ok=False)
        taken = await self._face_owner(requester.key, embedding)
        if taken is not None:
            # The person whose face it is sees the attempt in their history.
            await self.store.log(taken, requester.key, "registration_refused", detail="the same face")
            return Reply(TAKEN, ok=False)
        matched = await profile_match(self.profile_photos, requester, embedding)
        if matched is False:
            return Reply(NOT_PROFILE, ok=False)
        previous = await self.store.get(requester.key)
        earlier = await self.store.files(requester.key)
        asset, picture = await asyncio.to_thread(self.files.write, requester.key, data, likeness)
        verified_by = verified_at_registration(self.admin_verify, matched)
        cameo = Cameo(
            owner_key=requester.key,
            platform=requester.platform,
            workspace_id=requester.workspace_id,
            user_id=requester.user_id,
            display_name=requester.display_name,
            status="unconfirmed",
            audience=previous.audience if previous and previous.status != "revoked" else "only_me",
            asset_path=str(asset),
            asset_hash=content_hash(data),
            asset_kind=likeness.kind,
            likeness_path=str(picture),
            embedding=embedding,
            embedding_model=MODEL,
            verified_by=verified_by,
            verified_at=self.bot.clock() if verified_by else None,
        )
        await self.store.save(
            cameo,
            actor_key=requester.key,
            action="register_started",
            detail=cameo.asset_hash[:16] if cameo.asset_hash else "",
            files=(str(asset), str(picture)),
        )
        if earlier:  # a new registration replaces the likeness: the earlier files go now
            gone = await asyncio.to_thread(self._delete_listed, earlier)
            await self.store.forget_files(requester.key, gone)
        confirm = "/video cameo confirm" if requester.platform == "console" else "the button below"
        return Reply(
            f"{CONSENT_TEXT}\nTo give your consent, confirm with {confirm}.",
            actions=(("cameo_confirm", "I consent: confirm my cameo"),),
        )

    async def _face_owner(self, owner_key: str, embedding: bytes) -> str | None:
        """Whose active cameo (other than ``owner_key``'s) shows this face, if anyone's."""
        return owner_of_face(embedding, await self.store.registered_faces(other_than=owner_key, model=MODEL))

    def _delete_listed(self, paths: list[str]) -> list[str]:
        gone = []
        for name in paths:
            try:
                Path(name).unlink(missing_ok=True)
            except OSError:
                continue
            gone.append(name)
        return gone

    async def _confirm(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply(
                "There is nothing to confirm: register first with /video cameo register (attach an image "
                "or a 2-4 s video).",
                ok=False,
            )
        if cameo.status == "active":
            return Reply("Your cameo is already active. /video cameo status shows who may use it.")
        # Someone else may have confirmed the same face since this upload.
        if cameo.embedding is not None:
            taken = owner_of_face(
                cameo.embedding, await self.store.registered_faces(other_than=requester.key, model=MODEL)
            )
            if taken is not None:
                await self._discard_registration(cameo, requester)
                await self.store.log(taken, requester.key, "registration_refused", detail="the same face")
                return Reply(TAKEN, ok=False)
        cameo = replace(cameo, status="active")
        await self.store.save(cameo, actor_key=requester.key, action="registered")
        handle = mention(requester.platform, requester.user_id)
        text = (
            f"Your cameo is active. Others use it with --cameo {handle}, and right now only you may "
            f"(change it with /video cameo audience only-me|approved|workspace|everyone)."
        )
        if is_verified(cameo, self.admin_verify):
            return Reply(text)
        await self._ask_admins(cameo)
        return Reply(
            f"{text} Before anyone can use it, you included, a workspace admin must verify that it shows you: "
            f"they answer with /video cameo verify {handle}."
        )

    async def _discard_registration(self, cameo: Cameo, requester: Requester) -> None:
        paths = await self.store.files(cameo.owner_key)
        gone = await asyncio.to_thread(self.files.delete, paths, cameo.owner_key)
        await self.store.forget_files(cameo.owner_key, gone)
        await self.store.save(
            replace(cameo, status="revoked", asset_path=None, likeness_path=None, embedding=None, verified_by=None),
            actor_key=requester.key,
            action="registration_refused",
        )

    async def _ask_admins(self, cameo: Cameo) -> None:
        """Sends each configured admin of the platform a button to verify the cameo."""
        delivery = self.bot.deliveries.get(cameo.platform)
        if delivery is None:
            return
        who = mention(cameo.platform, cameo.user_id)
        for admin_id in sorted(self.bot.policy.admin_ids):
            if admin_id == cameo.user_id:
                continue
            with contextlib.suppress(DeliveryError):
                await delivery.direct_message(
                    cameo.workspace_id,
                    admin_id,
                    f"{who} registered a cameo. Verify that the person in it is {who} (ask them, or compare "
                    f"with someone who knows them) before anyone can use it.",
                    ((f"cameo_verify:{cameo.user_id}", f"Verify {cameo.display_name[:40]}"),),
                )

    async def _verify(self, requester: Requester, user_id: str) -> Reply:
        if not self.bot.is_admin(requester):
            return Reply("Only workspace admins can verify a cameo.", ok=False)
        if not USER_ID.fullmatch(user_id):
            return Reply("Whose cameo? /video cameo verify @name.", ok=False)
        if user_id == requester.user_id:
            return Reply("Another admin must verify your own cameo.", ok=False)
        owner_key = f"{requester.platform}:{requester.workspace_id}:{user_id}"
        cameo = await self.store.get(owner_key)
        who = mention(requester.platform, user_id)
        if cameo is None or cameo.status != "active":
            return Reply(f"{who} has no confirmed cameo to verify.", ok=False)
        if cameo.verified_by and cameo.verified_by.startswith("admin:"):
            return Reply(f"{who}'s cameo is already verified.")
        now = self.bot.clock()
        await self.store.save(
            replace(cameo, verified_by=f"admin:{requester.key}", verified_at=now),
            actor_key=requester.key,
            action="verified",
        )
        delivery = self.bot.deliveries.get(cameo.platform)
        if delivery is not None:
            with contextlib.suppress(DeliveryError):
                await delivery.direct_message(
                    cameo.workspace_id, cameo.user_id, "A workspace admin verified your cameo; it can now be used.", ()
                )
        log.info("cameo %s verified by %s", owner_key, requester.key)
        return Reply(f"Verified: {who}'s cameo can now be used as they allow.")
