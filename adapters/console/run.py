"""``reelbot console``: sends one command through the core and waits for any job it started."""

from __future__ import annotations

import contextlib
import mimetypes
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from adapters.console.delivery import ConsoleDelivery
from adapters.console.safe import json_line, terminal_text
from bot.app import build_app
from bot.config import Settings
from bot.core import MAX_ATTACHMENT_BYTES
from bot.jobs import RESUMABLE_STATES, ChatRequest, InputFile, JobState, Requester
from bot.money import usd_string

DEFAULT_WORKSPACE = "local"


@dataclass(frozen=True, slots=True)
class ConsoleArgs:
    as_user: str
    text: str
    workspace: str = DEFAULT_WORKSPACE
    attach: tuple[Path, ...] = ()
    json_out: bool = False
    no_wait: bool = False
    request_id: str | None = None
    timeout: float | None = None
    press: str | None = None


class AttachmentError(ValueError):
    pass


def read_attachment(path: Path) -> InputFile:
    """Reads a file to attach, refusing what a chat platform would refuse before downloading.

    Raises:
        AttachmentError: one sentence naming the file, for a missing, unreadable or too large one.
    """
    try:
        if path.is_dir():
            raise AttachmentError(f"{path} is a folder, not a file.")
        if not path.exists():
            raise AttachmentError(f"There is no file {path}.")
        if not path.is_file():
            raise AttachmentError(f"{path} is not a regular file (a device, socket or pipe).")
        if path.stat().st_size > MAX_ATTACHMENT_BYTES:
            raise AttachmentError(f"{path.name} is larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB.")
        with path.open("rb") as handle:
            data = handle.read(MAX_ATTACHMENT_BYTES + 1)
    except PermissionError:
        raise AttachmentError(f"I may not read {path} (permission denied).") from None
    except OSError as exc:
        raise AttachmentError(f"I could not read {path} ({exc.strerror or type(exc).__name__}).") from None
    if len(data) > MAX_ATTACHMENT_BYTES:  # it grew while we looked
        raise AttachmentError(f"{path.name} is larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB.")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return InputFile(filename=path.name, content_type=content_type, data=data)


def request_key(args: ConsoleArgs, user: str) -> str:
    """The platform request id, namespaced by workspace and person: the same ``--request-id`` from two
    people is two requests (it is one request only when the same person repeats it)."""
    own = args.request_id if args.request_id is not None else uuid.uuid4().hex
    return f"console:{args.workspace}:{user}:{own}"


def strip_command(text: str) -> str:
    stripped = text.strip()
    if stripped.lower().startswith("/video"):
        return stripped[len("/video") :].strip()
    return stripped


async def run_console(settings: Settings, args: ConsoleArgs, *, out: Console | None = None) -> int:
    """Runs one command; returns the process exit code (0 delivered or answered, 1 otherwise)."""
    out = out or Console(highlight=False, soft_wrap=True)
    try:
        attachments = tuple(read_attachment(p) for p in args.attach)
    except AttachmentError as exc:
        return _finish(out, args, ok=False, message=str(exc))
    user = args.as_user.lstrip("@")

    requester = Requester(platform="console", workspace_id=args.workspace, user_id=user, display_name=f"@{user}")
    app = await build_app(settings)
    delivery = ConsoleDelivery(out=out, viewer=requester.key)
    app.bot.register(delivery)
    try:
        await app.store.expire_dead_leases()
        # The worker runs any queued terminal job (they are anybody's to run), but this terminal waits
        # only for its own person's unfinished jobs, and only those are called resumed. Jobs another
        # terminal is driving right now hold a live lease and are not orphaned.
        unfinished = [
            job
            for job in await app.store.orphaned_jobs([*RESUMABLE_STATES, JobState.RECEIVED], ["console"])
            if job.user_key == requester.key
            and (job.state is not JobState.RECEIVED or app.bot.clock() - job.created_at > 30)
        ]
        if unfinished:
            _error_line(f"Resuming {len(unfinished)} unfinished job(s) of yours from an earlier run.")
        await app.worker.start()
        request = ChatRequest(
            requester=requester,
            request_key=request_key(args, user),
            channel_id="terminal",
            text=strip_command(args.text),
            attachments=attachments,
        )
        if args.press:
            action, _, argument = args.press.partition(":")
            reply = await app.bot.press(requester, action, argument, request.request_key)
        else:
            reply = await app.bot.handle(request)
        if reply.ok:
            out.print(terminal_text(reply.text), markup=False)
        # Buttons become commands in the terminal.
        for action_id, label in reply.actions:
            out.print(
                terminal_text(
                    f"  [{label}] → reelbot console --as {user} --workspace {args.workspace} --press {action_id}"
                ),
                markup=False,
            )
        job = reply.job
        if job is not None and not args.no_wait and not job.state.is_final:
            try:
                job = await app.worker.wait_for(job.id, timeout=args.timeout)
            except TimeoutError:
                job = await app.store.get_job(job.id) or job
                usage = await app.bot.usage_for("console", args.workspace, user)
                message = (
                    f"Stopped waiting after {args.timeout:g} s; job {job.id} is still {job.state.value} "
                    "and continues at the next start."
                )
                return _finish(
                    out,
                    args,
                    ok=False,
                    message=message,
                    job=job,
                    remaining=usage.remaining_micros,
                    reply=reply.text,
                )
        if not args.no_wait:
            for earlier in unfinished:
                if job is None or earlier.id != job.id:
                    with contextlib.suppress(TimeoutError):
                        await app.worker.wait_for(earlier.id, timeout=args.timeout)
        usage = await app.bot.usage_for("console", args.workspace, user)
        created_here = job is not None and job.request_key == request.request_key
        ok = reply.ok and (not created_here or args.no_wait or job.state is JobState.DELIVERED)
        error = None
        if not ok:
            error = reply.text if not reply.ok or job is None or not job.error else job.error
        return _finish(
            out,
            args,
            ok=ok,
            message=error,
            job=job,
            remaining=usage.remaining_micros,
            reply=reply.text,
        )
    finally:
        delivery.stop_progress("*")
        await app.close()


def _error_line(text: str) -> None:
    """One line on stderr, never wrapped (a script reads it whole), never driving the terminal."""
    sys.stderr.write(terminal_text(text) + "\n")
    sys.stderr.flush()


def _finish(
    out: Console,
    args: ConsoleArgs,
    *,
    ok: bool,
    message: str | None,
    job=None,
    remaining: int | None = None,
    reply: str | None = None,
) -> int:
    if not ok and message:
        _error_line(f"reelbot: {message.splitlines()[0]}")
    if args.json_out:
        payload = {
            "ok": ok,
            "job_id": job.id if job is not None else None,
            "state": job.state.value if job is not None else None,
            "model": job.options.model if job is not None else None,
            "provider": (job.provider or None) if job is not None else None,
            "cost_usd": usd_string(job.cost_micros) if job is not None else None,
            "clip_path": job.clip_path if job is not None and job.state is JobState.DELIVERED else None,
            "error": None if ok else message,
            "budget_remaining_usd": usd_string(remaining) if remaining is not None else None,
            "reply": reply,
        }
        sys.stdout.flush()
        out.file.write(json_line(payload) + "\n")
        out.file.flush()
    return 0 if ok else 1
