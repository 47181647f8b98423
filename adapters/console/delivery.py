"""Delivery for the terminal: job cards become a progress bar, clips become file paths."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from adapters.console.safe import terminal_text
from bot.delivery import CardView
from bot.jobs import Job


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path``, owner-only whatever the umask (a clip's marker is the requester's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)  # a marker left by an older version


class ConsoleDelivery:
    """Shows what the bot would post, on a terminal.

    Args:
        out: where the bot's posts go (stdout by default).
        progress_console: where the live progress bar goes (stderr, so ``--json`` output stays clean);
            the bar is only drawn on a real terminal (redirected, it would only write blank lines).
        quiet: print nothing (used by ``reelbot serve``, which drives terminal jobs left queued).
        viewer: the person at this terminal (``Requester.key``). The worker may run anybody's queued
            terminal job, but cards, clips and notices of other people's jobs are not shown here
            (their owners see them with ``/video jobs``); None shows every job.

    Every post goes through ``terminal_text``: what people typed never drives the terminal.
    """

    platform = "console"
    min_update_interval = 0.25

    def __init__(
        self,
        *,
        out: Console | None = None,
        progress_console: Console | None = None,
        quiet: bool = False,
        viewer: str | None = None,
    ) -> None:
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.viewer = viewer
        self.posts: list[str] = []
        progress_console = progress_console or Console(stderr=True)
        self._live = not quiet and progress_console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=progress_console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = False

    def _say(self, text: str) -> None:
        text = terminal_text(text)
        self.posts.append(text)
        if not self.quiet:
            self.out.print(text, markup=False)

    def _shown(self, job: Job) -> bool:
        return self.viewer is None or job.user_key == self.viewer

    async def post_card(self, job: Job, card: CardView) -> str:
        if not self._shown(job):
            return f"card:{job.id}"
        self._say(
            f"{card.title}: {card.prompt!r} · {card.settings} · {card.cost} · for {card.requester} · {card.status}"
        )
        return f"card:{job.id}"

    async def update_card(self, job: Job, card: CardView) -> None:
        if not self._live or not self._shown(job):
            return
        if job.state.is_final or card.state in ("undelivered",):
            self.stop_progress(job.id)
            return
        if job.id not in self._tasks:
            if not self._tasks:
                self._progress.start()
                self._started = True
            self._tasks[job.id] = self._progress.add_task(f"job {job.id}", total=100)
        description = terminal_text(f"job {job.id}: {card.status}")
        self._progress.update(self._tasks[job.id], completed=card.progress, description=description)

    def stop_progress(self, job_id: str) -> None:
        task = self._tasks.pop(job_id, None)
        if task is not None:
            self._progress.remove_task(task)
        if not self._tasks and self._started:
            self._progress.stop()  # stopping a bar never started would still print a blank line
            self._started = False

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
            _write_private(marker, ref)
        if self._shown(job):
            self._say(f"{caption}\n📎 {clip}")
        return ref

    async def notify(self, job: Job, text: str) -> None:
        self.stop_progress(job.id)
        if self._shown(job):
            self._say(text)

    async def delete_message(self, job: Job, ref: str) -> None:
        if self._shown(job):
            self._say(f"(deleted {ref})")

    async def direct_message(
        self, workspace_id: str, user_id: str, text: str, actions: tuple[tuple[str, str], ...] = ()
    ) -> str | None:
        buttons = "  ".join(f"[{label}]" for _, label in actions)
        self._say(f"(direct message to @{user_id}) {text} {buttons}".rstrip())
        return None
