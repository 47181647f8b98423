"""A finished render's clip on its way to the thread: its download and, where the platform allows, its upload.

Why a module of its own: the worker's steps (download, check, deliver) stay one per state, while the
bytes move as early and as much in parallel as the rules allow:

- the download starts as soon as a render is seen finished (consent checked again first), while the
  job's row is still being moved to ``downloading``;
- where the platform takes a clip's bytes before it shows them (``StagesClips``: Slack's upload, then
  complete), the upload reads the download as it arrives (``ClipStream``);
- only ``post`` shows the clip, after the file on disk was probed, consent checked again and the job
  moved to ``delivering``: it completes the staged upload, or uploads the checked file when staging
  failed (a broken stream, a refused upload) or the platform cannot stage.

Everything started for a job that then stops is dropped: the download is cancelled (its part file goes
with it) and a staged upload is never completed, so the platform never shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from bot import texts
from bot.clip_stream import ClipStream
from bot.delivery import Delivery, DeliveryError, StagesClips
from bot.jobs import Job
from bot.providers.base import VideoProvider

log = logging.getLogger(__name__)

__all__ = ["ClipHandoff"]


class ClipHandoff:
    """The downloads and staged uploads of the jobs a worker drives, by job id.

    Args:
        clips_dir: where finished clips are kept (``<job id>.mp4``).
        provider_for: the provider serving a job.
        delivery_for: the platform delivery of a job, or None.
    """

    def __init__(
        self,
        *,
        clips_dir: Path,
        provider_for: Callable[[Job], VideoProvider],
        delivery_for: Callable[[Job], Delivery | None],
    ) -> None:
        self._clips_dir = clips_dir
        self._provider_for = provider_for
        self._delivery_for = delivery_for
        self._downloads: dict[str, asyncio.Task[int]] = {}
        self._staged: dict[str, asyncio.Task[str]] = {}

    def clip_file(self, job_id: str) -> Path:
        return self._clips_dir / f"{job_id}.mp4"

    def download(self, job: Job) -> asyncio.Task[int]:
        """The job's download (its byte count), started now unless it already runs."""
        running = self._downloads.get(job.id)
        if running is not None:
            return running
        assert job.provider_video_id is not None
        provider, video_id, dest = self._provider_for(job), job.provider_video_id, self.clip_file(job.id)
        stream = self._stage(job)

        async def fetch() -> int:
            try:
                if stream is None:
                    return await provider.download(video_id, dest)
                return await provider.download(video_id, dest, stream=stream)
            finally:
                if stream is not None:
                    stream.abort("the download ended without feeding it")  # a no-op once it was finished

        task = self._downloads[job.id] = asyncio.create_task(fetch(), name=f"reelbot-download-{job.id}")
        return task

    def downloaded(self, job_id: str) -> None:
        """The download's outcome was taken; a staged upload, if any, waits for ``post``."""
        self._downloads.pop(job_id, None)

    def unstage(self, job_id: str) -> None:
        """Drops bytes staged for a clip that will not be shown through them (the platform discards them)."""
        staging = self._staged.pop(job_id, None)
        if staging is not None and not staging.done():
            staging.cancel()

    def forget(self, job_id: str) -> None:
        """Drops everything started for the job, without waiting (its task is ending)."""
        self.unstage(job_id)
        download = self._downloads.pop(job_id, None)
        if download is not None:
            download.cancel()

    async def drop(self, job_id: str) -> None:
        """Drops everything started for the job and waits until the download is gone (its part file with it)."""
        self.unstage(job_id)
        task = self._downloads.pop(job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def post(self, delivery: Delivery, job: Job, clip: Path) -> str:
        """Shows the checked clip: completes the upload staged during the checks, or uploads the file now.

        Raises:
            DeliveryError: as ``Delivery.post_clip``.
        """
        caption = texts.caption(job)
        staging = self._staged.pop(job.id, None)
        if staging is not None and isinstance(delivery, StagesClips):
            await asyncio.wait({staging})  # its failure, even a cancellation, is not this task's
            failure = None if staging.cancelled() else staging.exception()
            if not staging.cancelled() and failure is None:
                return await delivery.share_clip(job, staging.result(), caption)
            # Staging only saves time: whatever stopped it, the checked file is uploaded whole.
            if failure is not None and not isinstance(failure, DeliveryError):
                log.warning("job %s: staging the clip failed unexpectedly", job.id, exc_info=failure)
            else:
                log.debug("job %s: staging the clip did not finish (%s); uploading it whole", job.id, failure)
        return await delivery.post_clip(job, clip, caption)

    def _stage(self, job: Job) -> ClipStream | None:
        """Starts sending the clip's bytes, unshown, as they download, where the platform allows it."""
        delivery = self._delivery_for(job)
        if not isinstance(delivery, StagesClips):
            return None
        self.unstage(job.id)
        stream = ClipStream()
        staging = asyncio.create_task(delivery.stage_clip(job, stream), name=f"reelbot-stage-{job.id}")
        # An upload that stopped early (refused, cancelled) must not leave the download buffering for it.
        staging.add_done_callback(lambda _: stream.abort("the upload stopped reading"))
        self._staged[job.id] = staging
        return stream
