"""Asking a cameo's owner: the hold, the direct message, approve or deny, and expiry.

The hold and its request are one transaction (``CameoStore.hold``): a job is never in
``pending_consent`` without a request that can be answered or expire. Request ids are 64 random
bits, tried again on the (practically impossible) collision. Every pending job ends: its request
expires after ``REELBOT_CONSENT_TIMEOUT_S``, and a job left waiting without a pending request (a
crash between an approval and the admission, or a database from before the one-transaction hold)
is admitted when the owner approved and refused otherwise.
"""

from __future__ import annotations

import contextlib
import secrets

from bot import texts
from bot.consent.base import CameosBase
from bot.consent.policy import ASK, Use, refusal
from bot.core import Reply, mention
from bot.delivery import DeliveryError
from bot.jobs import Job, JobState, Requester
from bot.store import Cameo, ConsentRequest


def new_request_id() -> str:
    return secrets.token_hex(8)


class ConsentRequests(CameosBase):
    async def _hold(self, job: Job, owner: Cameo) -> Reply:
        """Holds the job (no money reserved) and asks the cameo's owner by direct message."""
        job, consent = await self.store.hold(
            job.id,
            owner_key=owner.owner_key,
            requester_key=job.user_key,
            timeout_s=self.timeout_s,
            new_id=new_request_id,
        )
        asker = mention(job.platform, job.user_id)
        text = (
            f"{asker} asks to use your cameo in a clip: “{texts.short_prompt(job.prompt, 200)}” "
            f"({texts.settings_line(job)}). Request {consent.id}."
        )
        if owner.platform == "console":
            text += f" Answer with /video cameo approve {consent.id} [--always] or /video cameo deny {consent.id}."
        delivery = self.bot.deliveries.get(owner.platform)
        if delivery is not None:
            with contextlib.suppress(DeliveryError):
                await delivery.direct_message(
                    owner.workspace_id,
                    owner.user_id,
                    text,
                    (
                        (f"cameo_approve:{consent.id}", "Approve once"),
                        (f"cameo_always:{consent.id}", "Always allow"),
                        (f"cameo_deny:{consent.id}", "Deny"),
                    ),
                )
        minutes = max(1, round(self.timeout_s / 60))
        return Reply(
            f"Job {job.id} waits for {mention(owner.platform, owner.user_id)}'s consent to use their cameo; "
            f"I asked them. Nothing is reserved until they approve, and the request expires in "
            f"{minutes} minutes.",
            job=job,
        )

    async def resume(self, job: Job) -> Reply:
        """Takes on a job a crash left in ``received`` (before its admission, or before its hold).

        The worker's recovery calls this rather than admitting the job outright: a clip whose
        cameo owner must be asked is held for consent (and the owner asked), one whose use is no
        longer allowed is refused (nothing was reserved), and only an allowed one is admitted.
        """
        if job.options.cameo is None:
            return await self.bot.admit_and_announce(job)
        cameo = await self.store.get(job.options.cameo)
        if cameo is None:
            verdict: str | None = "The cameo this clip uses no longer exists. Nothing was charged."
        else:
            use = Use(job.user_key, job.platform, job.workspace_id, job.prompt, job.id)
            verdict = await refusal(self.store, cameo, use, verify=self.admin_verify)
        if verdict == ASK and cameo is not None:
            return await self._hold(job, cameo)
        if verdict is not None:
            ended = await self.bot.store.finish_job(job.id, JobState.REFUSED, error=verdict, expect=[JobState.RECEIVED])
            if ended is not None:
                await self._tell(ended, f"Job {job.id} was not made: {verdict}")
            return Reply(verdict, ok=False, job=ended or job)
        return await self.bot.admit_and_announce(job)

    async def _decide(self, requester: Requester, request_id: str, verb: str, *, always: bool) -> Reply:
        consent = await self.store.get_request(request_id.strip())
        if consent is None:
            return Reply(f"There is no consent request {texts.short_prompt(request_id, 40)}.", ok=False)
        if consent.owner_key != requester.key:
            return Reply("Only the cameo's owner can answer this request.", ok=False)
        if consent.status != "pending":
            return Reply(f"Request {consent.id} was already {consent.status}.", ok=False)
        if consent.expires_at < self.bot.clock():
            await self._expire(consent)
            return Reply(f"Request {consent.id} had expired; the clip was not made.", ok=False)
        status = "denied" if verb == "deny" else "approved"
        decided = await self.store.decide(consent.id, status, actor_key=requester.key)
        if decided is None:
            return Reply(f"Request {consent.id} was already answered.", ok=False)
        asker = mention(requester.platform, consent.requester_key.rsplit(":", 1)[-1])
        job = await self.bot.store.get_job(consent.job_id)
        if status == "denied":
            if job is not None:
                finished = await self.bot.store.finish_job(
                    job.id, JobState.REFUSED, error="the cameo's owner declined", expect=[JobState.PENDING_CONSENT]
                )
                if finished is not None:
                    await self._tell(
                        finished,
                        f"{mention(requester.platform, requester.user_id)} declined the use of their "
                        f"cameo, so job {job.id} was not made. Nothing was charged.",
                    )
            return Reply(f"Denied. {asker} was told; nothing was made.")
        if always:
            await self.store.set_allowed(consent.owner_key, consent.requester_key, True, actor_key=requester.key)
        if job is None or job.state is not JobState.PENDING_CONSENT:
            return Reply("Approved, but the clip had already been withdrawn.")
        reply = await self.bot.admit_and_announce(job)
        await self._tell(
            reply.job or job,
            f"{mention(requester.platform, requester.user_id)} approved their cameo for job {job.id}. {reply.text}",
        )
        extra = f" {asker} may use it from now on." if always else ""
        return Reply(f"Approved job {job.id}.{extra}")

    async def _expire(self, consent: ConsentRequest) -> None:
        if await self.store.decide(consent.id, "expired", actor_key="reelbot") is None:
            return
        await self._refuse_waiting(consent.job_id, "the cameo owner did not answer in time")

    async def _refuse_waiting(self, job_id: str, reason: str) -> None:
        job = await self.bot.store.finish_job(job_id, JobState.REFUSED, error=reason, expect=[JobState.PENDING_CONSENT])
        if job is not None:
            await self._tell(job, f"Job {job.id} expired: {reason}. Nothing was charged.")

    async def expire_pending(self) -> int:
        """Ends every hold that can no longer be answered; returns how many jobs it decided."""
        now = self.bot.clock()
        expired = await self.store.pending(expired_before=now)
        for consent in expired:
            await self._expire(consent)
        stale = await self.store.stale_holds(created_before=now - self.timeout_s)
        for job, status in stale:
            if status == "approved":
                await self.bot.admit_and_announce(job)
            else:
                await self._refuse_waiting(job.id, "the cameo owner did not answer in time")
        return len(expired) + len(stale)
