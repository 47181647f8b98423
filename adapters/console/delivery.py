"""Delivery for the terminal: job cards become a progress bar, clips become file paths."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bot.delivery import CardView
from bot.jobs import Job


class ConsoleDelivery:
    """Shows what the bot would post, on a terminal.

    Args:
        out: where the bot's posts go (stdout by default).
        progress_console: where the live progress bar goes (stderr, so ``--json`` output stays clean).
        quiet: print nothing (used by ``reelbot serve``, which drives terminal jobs left queued).
    """

    platform = "console"
    min_update_interval = 0.25

    def __init__(
        self, *, out: Console | None = None, progress_console: Console | None = None, quiet: bool = False
    ) -> None:
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.posts: list[str] = []
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=progress_console or Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def _say(self, text: str) -> None:
        self.posts.append(text)
        if not self.quiet:
            self.out.print(text, markup=False)

    async def post_card(self, job: Job, card: CardView) -> str:
        self._say(
            f"{card.title}: {card.prompt!r} · {card.settings} · {card.cost} · for {card.requester} · {card.status}"
        )
        return f"card:{job.id}"

    async def update_card(self, job: Job, card: CardView) -> None:
        if self.quiet:
            return
        if job.state.is_final or card.state in ("undelivered",):
            self.stop_progress(job.id)
            return
        if job.id not in self._tasks:
            if not self._tasks:
                self._progress.start()
            self._tasks[job.id] = self._progress.add_task(f"job {job.id}", total=100)
        self._progress.update(self._tasks[job.id], completed=card.progress, description=f"job {job.id}: {card.status}")

    def stop_progress(self, job_id: str) -> None:
        task = self._tasks.pop(job_id, None)
        if task is not None:
            self._progress.remove_task(task)
        if not self._tasks:
            self._progress.stop()

    def _marker(self, job: Job) -> Path | None:
        return Path(f"{job.clip_path}.delivered") if job.clip_path else None

    async def find_clip(self, job: Job) -> str | None:
        marker = self._marker(job)
        return marker.read_text() if marker is not None and marker.exists() else None

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        self.stop_progress(job.id)
        ref = f"file:{clip}"
        marker = self._marker(job)
        if marker is not None:
            marker.write_text(ref)
        self._say(f"{caption}\n📎 {clip}")
        return ref

    async def notify(self, job: Job, text: str) -> None:
        self.stop_progress(job.id)
        self._say(text)

    async def delete_message(self, job: Job, ref: str) -> None:
        self._say(f"(deleted {ref})")

    async def direct_message(
        self, workspace_id: str, user_id: str, text: str, actions: tuple[tuple[str, str], ...] = ()
    ) -> str | None:
        buttons = "  ".join(f"[{label}]" for _, label in actions)
        self._say(f"(direct message to @{user_id}) {text} {buttons}".rstrip())
        return None
