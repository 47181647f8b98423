"""Revoking a cameo: refuse every later use, stop unposted clips honestly, delete every copy of the likeness.

The order matters. The cameo is marked revoked first, in one committed write, so every check from
then on (the worker's before submit, before download and before posting) refuses it. Then each job
that uses it is stopped with ``ReelBot.stop_job``: one nobody is working on ends refused at once
(released, nothing charged); one a worker drives can no longer be posted or charged, and the
worker abandons it. What the owner and each requester are told is what ``stop_job`` reports:
"nothing was charged" only for a job that has ended unposted, "being stopped" for one the worker
has not finished stopping yet (the worker tells the requester when it has), and "already posted"
for one that was delivered first.

Copies deleted: every file of every registration of the owner, the references and clip files of
every job that used the cameo and was not delivered (partial downloads too), the references of
delivered jobs, and the renders at the provider. A delivered clip's file goes with its post, when
the owner presses "Delete posts".
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

from bot.consent.base import CameosBase, log
from bot.core import Reply, mention
from bot.delivery import DeliveryError
from bot.jobs import FINAL_STATES, Job, JobState, Requester
from bot.providers.base import ProviderError

REASON = "the cameo it used was revoked"


class Revocation(CameosBase):
    async def _revoke(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply("You have no cameo to revoke.", ok=False)
        await self.store.save(
            replace(
                cameo,
                status="revoked",
                asset_path=None,
                likeness_path=None,
                embedding=None,
                verified_by=None,
                verified_at=None,
            ),
            actor_key=requester.key,
            action="revoked",
        )
        paths = await self.store.files(cameo.owner_key)
        gone = await asyncio.to_thread(self.files.delete, paths, cameo.owner_key)
        await self.store.forget_files(cameo.owner_key, gone)
        for consent in await self.store.pending(cameo.owner_key):
            await self.store.decide(consent.id, "withdrawn", actor_key=requester.key)

        open_states = [s for s in JobState if s not in FINAL_STATES]
        using = await self.store.jobs_using(cameo.owner_key, open_states)
        outcomes = await asyncio.gather(*(self.bot.stop_job(job, JobState.REFUSED, REASON) for job in using))
        stopped = [o.job for o in outcomes if o.stopped]
        stopping = [o.job for o in outcomes if o.pending]
        for job in stopped:
            await self._tell(
                job, f"Job {job.id} was stopped because the cameo it used was revoked. Nothing was charged."
            )
        for job in stopping:  # the worker tells them when it has stopped
            await self._tell(
                job,
                f"Job {job.id} is being stopped because the cameo it used was revoked: it can no longer be "
                "posted. I'll tell you once it has stopped.",
            )

        for job in await self.store.jobs_using(cameo.owner_key, list(JobState)):
            await self._remove_copies(job)
        posted = [j for j in await self.store.jobs_using(cameo.owner_key, [JobState.DELIVERED]) if j.delivered_ref]
        lines = [f"Your cameo is revoked and its files are deleted; {len(stopped)} unposted clip(s) stopped."]
        if stopping:
            lines.append(
                f"{len(stopping)} clip(s) being made with it are being stopped: they can no longer be posted, "
                "and their requesters are told when each has stopped."
            )
        actions: tuple[tuple[str, str], ...] = ()
        if posted:
            lines.append("Clips already posted with it:")
            lines += [f"• job {job.id} by {mention(job.platform, job.user_id)} in {job.channel_id}" for job in posted]
            lines.append("Delete those posts with the button below.")
            actions = (("cameo_delete_posts", f"Delete {len(posted)} post(s)"),)
        return Reply("\n".join(lines), actions=actions)

    async def _remove_copies(self, job: Job) -> None:
        """Deletes the job's copies of the likeness: its files (but a delivered clip's) and the render."""
        if job.state is JobState.DELIVERED:
            if job.reference_path:
                with contextlib.suppress(OSError):
                    Path(job.reference_path).unlink(missing_ok=True)
        else:
            await asyncio.to_thread(self.job_files_delete, job)
        if job.provider_video_id and (job.state.is_final or job.state is JobState.UNDELIVERED):
            with contextlib.suppress(ProviderError):
                await self.bot.provider_for(job).delete(job.provider_video_id)

    async def _delete_posts(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None:
            return Reply("You have no cameo.", ok=False)
        deleted = 0
        for job in await self.store.jobs_using(cameo.owner_key, [JobState.DELIVERED]):
            delivery = self.bot.deliveries.get(job.platform)
            if delivery is None or not job.delivered_ref:
                continue
            try:
                await delivery.delete_message(job, job.delivered_ref)
            except DeliveryError as exc:
                log.warning("could not delete the post of job %s: %s", job.id, exc.user_message)
                continue
            deleted += 1
            if job.clip_path:
                with contextlib.suppress(OSError):
                    Path(job.clip_path).unlink()
            await self.store.log(cameo.owner_key, requester.key, "post_deleted", job_id=job.id)
        return Reply(f"Deleted {deleted} post(s) that used your cameo.")
