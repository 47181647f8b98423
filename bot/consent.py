"""Likeness consent: cameos that only their owner can lend, with approval, revocation and history.

A person registers their own likeness (an image, or a 2 to 4 s video) under their platform
identity and confirms what that means. Others use it with ``--cameo @owner`` only as the owner's
audience allows; "people I approve" sends the owner a direct message and holds the job, with no
money reserved, until they answer or the request expires. Revoking removes the asset, cancels the
cameo's unfinished jobs and lists the posted clips so they can be deleted. Every step is written
to an append-only audit that the owner can read with ``/video cameo history``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bot import texts
from bot.commands import CameoCommand, VideoCommand
from bot.core import ReelBot, Reply, mention, resolve_user
from bot.delivery import DeliveryError
from bot.faces import has_face
from bot.jobs import ACTIVE_STATES, ChatRequest, InputFile, Job, JobState, Requester
from bot.media import MediaError, fit_reference
from bot.providers.base import ProviderError, ReferenceImage
from bot.store import Cameo, CameoStore, ConsentRequest, StoreError

log = logging.getLogger(__name__)

AUDIENCES = {
    "only-me": "only_me",
    "approved": "approved",
    "workspace": "workspace",
    "everyone": "everyone",
    "server": "workspace",
    "only_me": "only_me",
}
AUDIENCE_WORDS = {
    "only_me": "only you",
    "approved": "people you approve",
    "workspace": "your workspace",
    "everyone": "everyone",
}
MAX_ASSET_BYTES = 25 * 1024 * 1024
WAITING_STATES = (JobState.RECEIVED, JobState.PENDING_CONSENT, JobState.QUEUED, JobState.UNDELIVERED)

CONSENT_TEXT = (
    "A cameo lets reelbot put your likeness (your face, from the image or video you attach) into AI-generated "
    "clips. Only you decide who may use it: only you (the default), people you approve one by one, your "
    "workspace, or everyone. You can forbid words it must never be used with, see every clip that used it "
    "(/video cameo history), and revoke it at any time: revoking deletes the stored likeness, refuses every "
    "later use and cancels clips not yet made."
)


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


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _video_frame(data: bytes) -> tuple[bytes, float]:
    """The middle frame of a short video as PNG bytes, and the video's duration in seconds."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = next((s for s in container.streams if s.type == "video"), None)
            if stream is None:
                raise MediaError("That video has no picture track.")
            duration = float(container.duration / 1_000_000) if container.duration else 0.0
            frames = [frame for frame in container.decode(stream)]
    except (av.FFmpegError, StopIteration, ValueError) as exc:
        raise MediaError("That video could not be read; attach an MP4, MOV or WEBM of 2 to 4 seconds.") from exc
    if not frames:
        raise MediaError("That video has no frames.")
    if not duration:
        duration = float(frames[-1].time or 0.0)
    image = frames[len(frames) // 2].to_image()
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue(), duration


class Cameos:
    """The consent service the core and worker call. Enable it with ``enable_cameos``."""

    def __init__(self, *, bot: ReelBot, data_dir: Path) -> None:
        self.bot = bot
        self.store = CameoStore(bot.store)
        self.assets_dir = data_dir / "cameos"
        self.timeout_s = bot.policy.consent_timeout_s

    # --- commands ----------------------------------------------------------------------------

    async def handle(self, command: CameoCommand, request: ChatRequest) -> Reply:
        requester = request.requester
        owner_key = requester.key
        match command.action:
            case "register":
                return await self._register(request)
            case "confirm":
                return await self._confirm(requester)
            case "status":
                return await self._status(requester)
            case "history":
                return await self._history(requester)
            case "revoke":
                return await self._revoke(requester)
            case "audience":
                return await self._audience(requester, command.args)
            case "allow" | "disallow":
                return await self._allow(request, command.args, command.action == "allow")
            case "forbid" | "unforbid":
                return await self._forbid(requester, command.args, command.action == "forbid")
            case "approve" | "deny":
                if len(command.args) != 1:
                    return Reply(
                        f"Which request? /video cameo {command.action} REQUEST (see /video cameo status).", ok=False
                    )
                return await self._decide(requester, command.args[0], command.action, always=command.always)
        return Reply(f"Unknown cameo command for {owner_key}.", ok=False)

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
        try:
            asset_kind, likeness = await asyncio.to_thread(self._likeness_from, files[0])
        except MediaError as exc:
            return Reply(str(exc), ok=False)
        data = files[0].data
        digest = _hash(data)
        self.assets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        suffix = "mp4" if asset_kind == "video" else "img"
        asset_path = self.assets_dir / f"{digest}.{suffix}"
        likeness_path = self.assets_dir / f"{digest}.likeness.png"
        await asyncio.to_thread(asset_path.write_bytes, data)
        await asyncio.to_thread(likeness_path.write_bytes, likeness)
        for path in (asset_path, likeness_path):
            path.chmod(0o600)
        previous = await self.store.get(requester.key)
        cameo = Cameo(
            owner_key=requester.key,
            platform=requester.platform,
            workspace_id=requester.workspace_id,
            user_id=requester.user_id,
            display_name=requester.display_name,
            status="unconfirmed",
            audience=previous.audience if previous and previous.status != "revoked" else "only_me",
            asset_path=str(asset_path),
            asset_hash=digest,
            asset_kind=asset_kind,
            likeness_path=str(likeness_path),
        )
        await self.store.save(cameo, actor_key=requester.key, action="register_started", detail=digest[:16])
        confirm = "/video cameo confirm" if requester.platform == "console" else "the button below"
        return Reply(
            f"{CONSENT_TEXT}\nTo give your consent, confirm with {confirm}.",
            actions=(("cameo_confirm", "I consent: confirm my cameo"),),
        )

    def _likeness_from(self, file: InputFile) -> tuple[str, bytes]:
        if len(file.data) > MAX_ASSET_BYTES:
            raise MediaError(f"That file is over {MAX_ASSET_BYTES // (1024 * 1024)} MB; attach a smaller one.")
        head = file.data[:16]
        is_video = file.content_type.startswith("video/") or head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3"
        if is_video:
            frame, duration = _video_frame(file.data)
            if not 2.0 - 0.25 <= duration <= 4.0 + 0.25:
                raise MediaError(f"A cameo video must be 2 to 4 seconds long (that one is {duration:.1f} s).")
            return "video", frame
        fitted = fit_reference(
            file.data,
            declared_type=file.content_type,
            filename=file.filename,
            size="1024x1024",
            max_bytes=MAX_ASSET_BYTES,
        )
        return "image", fitted.data

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
        await self.store.save(replace(cameo, status="active"), actor_key=requester.key, action="registered")
        handle = mention(requester.platform, requester.user_id)
        return Reply(
            f"Your cameo is active. Others use it with --cameo {handle}, and right now only you may "
            f"(change it with /video cameo audience only-me|approved|workspace|everyone)."
        )

    async def _status(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply(
                "You have no cameo. Register one with /video cameo register (attach an image or a 2-4 s "
                "video of yourself)."
            )
        lines = [f"Your cameo is {cameo.status}; audience: {AUDIENCE_WORDS[cameo.audience]}."]
        allowed = await self.store.allowed_users(cameo.owner_key)
        if allowed:
            lines.append("Approved: " + ", ".join(mention(cameo.platform, k.rsplit(":", 1)[-1]) for k in allowed))
        words = await self.store.forbidden_words(cameo.owner_key)
        if words:
            lines.append("Never with: " + ", ".join(words))
        actions: list[tuple[str, str]] = []
        for pending in await self.store.pending(cameo.owner_key):
            job = await self.bot.store.get_job(pending.job_id)
            asker = mention(cameo.platform, pending.requester_key.rsplit(":", 1)[-1])
            prompt = texts.short_prompt(job.prompt, 60) if job else "?"
            lines.append(
                f"Waiting for you: request {pending.id} from {asker}: “{prompt}” "
                f"(/video cameo approve {pending.id} [--always] or /video cameo deny {pending.id})"
            )
            actions += [
                (f"cameo_approve:{pending.id}", "Approve once"),
                (f"cameo_always:{pending.id}", "Always allow"),
                (f"cameo_deny:{pending.id}", "Deny"),
            ]
        return Reply("\n".join(lines), actions=tuple(actions))

    async def _history(self, requester: Requester) -> Reply:
        events = await self.store.history(requester.key)
        if not events:
            return Reply("Your cameo has no history yet.")
        lines = ["Your cameo's history (newest first):"]
        for event in events:
            when = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M")
            who = mention(requester.platform, event.actor_key.rsplit(":", 1)[-1])
            if event.action == "used_in_job":
                lines.append(f"• {when} used in job {event.job_id} asked by {who} {event.detail}")
            else:
                job = f" job {event.job_id}" if event.job_id else ""
                detail = f" ({event.detail})" if event.detail else ""
                lines.append(f"• {when} {event.action.replace('_', ' ')}{job} by {who}{detail}")
        return Reply("\n".join(lines[:60]))

    async def _audience(self, requester: Requester, args: tuple[str, ...]) -> Reply:
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        if len(args) != 1 or args[0].lower() not in AUDIENCES:
            return Reply("Audience is one of: only-me, approved, workspace, everyone.", ok=False)
        audience = AUDIENCES[args[0].lower()]
        await self.store.save(
            replace(found, audience=audience), actor_key=requester.key, action="audience_changed", detail=audience
        )
        return Reply(f"Your cameo may now be used by {AUDIENCE_WORDS[audience]}.")

    async def _allow(self, request: ChatRequest, args: tuple[str, ...], allow: bool) -> Reply:
        requester = request.requester
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        if not args:
            return Reply(f"Whom? /video cameo {'allow' if allow else 'disallow'} @name.", ok=False)
        names = []
        for token in args:
            user_id = resolve_user(token, request)
            user_key = f"{requester.platform}:{requester.workspace_id}:{user_id}"
            await self.store.set_allowed(found.owner_key, user_key, allow, actor_key=requester.key)
            names.append(mention(requester.platform, user_id))
        if allow:
            note = (
                ""
                if found.audience == "approved"
                else (f" (your audience is {AUDIENCE_WORDS[found.audience]}; approvals count when it is 'approved')")
            )
            return Reply(f"{', '.join(names)} may use your cameo{note}.")
        return Reply(f"{', '.join(names)} may no longer use your cameo without asking.")

    async def _forbid(self, requester: Requester, args: tuple[str, ...], forbid: bool) -> Reply:
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        words = sorted({w.lower().strip(",.;:") for w in args if w.strip(",.;:")})
        if not words:
            return Reply("Which words? /video cameo forbid WORD...", ok=False)
        await self.store.set_forbidden(found.owner_key, words, forbid, actor_key=requester.key)
        if forbid:
            return Reply(f"Your cameo will never be used with: {', '.join(words)}.")
        return Reply(f"Removed from your forbidden words: {', '.join(words)}.")

    # --- using a cameo -------------------------------------------------------------------------

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
        refusal = await self._refusal(
            cameo, requester.key, requester.platform, requester.workspace_id, command.prompt, job_id=None
        )
        if refusal == "ask":
            likeness = await self._likeness(cameo, command.size)
            return CameoCheck(True, pending=True, owner_key=cameo.owner_key, reference=likeness, owner=cameo)
        if refusal:
            return CameoCheck(False, refusal)
        likeness = await self._likeness(cameo, command.size)
        return CameoCheck(True, owner_key=cameo.owner_key, reference=likeness, owner=cameo)

    async def _refusal(
        self, cameo: Cameo, requester_key: str, platform: str, workspace_id: str, prompt: str, *, job_id: str | None
    ) -> str | None:
        """None when the use is allowed, "ask" when the owner must approve, else the refusal sentence."""
        who = mention(cameo.platform, cameo.user_id)
        if cameo.status != "active":
            return f"{who}'s cameo has been revoked. Nothing was charged."
        words = await self.store.forbidden_words(cameo.owner_key)
        lowered = prompt.lower()
        if any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", lowered) for word in words):
            return f"{who} does not allow their cameo to be used with a word in this prompt. Nothing was charged."
        if requester_key == cameo.owner_key or cameo.audience == "everyone":
            return None
        if cameo.audience == "workspace":
            if platform == cameo.platform and workspace_id == cameo.workspace_id:
                return None
            return f"{who}'s cameo is only for their own workspace. Nothing was charged."
        if cameo.audience == "approved":
            if await self.store.is_allowed(cameo.owner_key, requester_key):
                return None
            if job_id is not None:
                consent = await self.store.request_for_job(job_id)
                if consent is not None and consent.status == "approved":
                    return None
            return "ask"
        return f"Only {who} can use their cameo. Nothing was charged."

    async def _likeness(self, cameo: Cameo, size: str) -> ReferenceImage:
        assert cameo.likeness_path is not None
        data = await asyncio.to_thread(Path(cameo.likeness_path).read_bytes)
        fitted = await asyncio.to_thread(
            fit_reference, data, declared_type="image/png", filename="cameo.png", size=size, is_likeness=True
        )
        return fitted

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
        if own is not None and own.status == "active" and raw and _hash(raw) == own.asset_hash:
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

    async def hold_for_consent(self, job: Job, check: CameoCheck) -> Reply:
        """Holds the job (no money reserved) and asks the cameo's owner by direct message."""
        assert check.owner is not None
        job = await self.bot.store.update_job(job.id, state=JobState.PENDING_CONSENT, expect=[JobState.RECEIVED])
        now = self.bot.clock()
        consent = ConsentRequest(
            id=secrets.token_hex(4),
            owner_key=check.owner.owner_key,
            requester_key=job.user_key,
            job_id=job.id,
            status="pending",
            created_at=now,
            expires_at=now + self.timeout_s,
        )
        await self.store.add_request(consent)
        owner = check.owner
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

    async def press(self, requester: Requester, action_id: str) -> Reply:
        """A consent button: ``cameo_confirm``, ``cameo_approve:REQ``, ``cameo_always:REQ``, ``cameo_deny:REQ``,
        ``cameo_delete_posts``."""
        action, _, arg = action_id.partition(":")
        if action == "cameo_confirm":
            return await self._confirm(requester)
        if action in ("cameo_approve", "cameo_always", "cameo_deny"):
            verb = "deny" if action == "cameo_deny" else "approve"
            return await self._decide(requester, arg, verb, always=action == "cameo_always")
        if action == "cameo_delete_posts":
            return await self._delete_posts(requester)
        return Reply("That button is no longer available.", ok=False)

    async def _decide(self, requester: Requester, request_id: str, verb: str, *, always: bool) -> Reply:
        consent = await self.store.get_request(request_id.strip())
        if consent is None:
            return Reply(f"There is no consent request {request_id[:40]}.", ok=False)
        if consent.owner_key != requester.key:
            return Reply("Only the cameo's owner can answer this request.", ok=False)
        if consent.status != "pending":
            return Reply(f"Request {consent.id} was already {consent.status}.", ok=False)
        if consent.expires_at < self.bot.clock():
            await self._expire(consent)
            return Reply(f"Request {consent.id} had expired; the clip was not made.", ok=False)
        job = await self.bot.store.get_job(consent.job_id)
        status = "denied" if verb == "deny" else "approved"
        decided = await self.store.decide(consent.id, status, actor_key=requester.key)
        if decided is None:
            return Reply(f"Request {consent.id} was already answered.", ok=False)
        asker = mention(requester.platform, consent.requester_key.rsplit(":", 1)[-1])
        if status == "denied":
            if job is not None:
                job = (
                    await self.bot.store.finish_job(
                        job.id, JobState.REFUSED, error="the cameo's owner declined", expect=[JobState.PENDING_CONSENT]
                    )
                    or job
                )
                await self._tell(
                    job,
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

    async def _tell(self, job: Job, text: str) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is not None:
            with contextlib.suppress(DeliveryError):
                await delivery.notify(job, text)

    async def _expire(self, consent: ConsentRequest) -> None:
        if await self.store.decide(consent.id, "expired", actor_key="reelbot") is None:
            return
        job = await self.bot.store.finish_job(
            consent.job_id,
            JobState.REFUSED,
            error="the cameo owner did not answer in time",
            expect=[JobState.PENDING_CONSENT],
        )
        if job is not None:
            await self._tell(
                job, f"Job {job.id} expired: the cameo's owner did not answer in time. Nothing was charged."
            )

    async def expire_pending(self) -> int:
        """Refuses every job whose consent request has expired; returns how many."""
        expired = await self.store.pending(expired_before=self.bot.clock())
        for consent in expired:
            await self._expire(consent)
        return len(expired)

    async def recheck_before_submit(self, job: Job) -> str | None:
        """Checks consent again right before money is spent at the provider; a refusal sentence or None."""
        if job.options.cameo is None:
            return None
        cameo = await self.store.get(job.options.cameo)
        if cameo is None:
            return "The cameo this clip uses no longer exists."
        refusal = await self._refusal(cameo, job.user_key, job.platform, job.workspace_id, job.prompt, job_id=job.id)
        if refusal == "ask":
            return f"{mention(cameo.platform, cameo.user_id)} no longer allows you to use their cameo."
        return refusal

    async def record_use(self, job: Job) -> None:
        """Audits a delivered clip that used a cameo: who asked, where, which post."""
        if job.options.cameo is None:
            return
        where = f"in {job.platform} channel {job.channel_id}"
        await self.store.log(
            job.options.cameo, job.user_key, "used_in_job", job_id=job.id, detail=f"{where} (post {job.delivered_ref})"
        )

    # --- revocation ----------------------------------------------------------------------------

    async def _revoke(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply("You have no cameo to revoke.", ok=False)
        for path in (cameo.asset_path, cameo.likeness_path):
            if path:
                with contextlib.suppress(OSError):
                    Path(path).unlink()
        await self.store.save(
            replace(cameo, status="revoked", asset_path=None, likeness_path=None),
            actor_key=requester.key,
            action="revoked",
        )
        cancelled = 0
        for consent in await self.store.pending(cameo.owner_key):
            await self.store.decide(consent.id, "withdrawn", actor_key=requester.key)
        for job in await self.store.jobs_using(cameo.owner_key, [*WAITING_STATES, *ACTIVE_STATES]):
            cancelled += 1
            finished = await self.bot.store.finish_job(
                job.id, JobState.CANCELLED, error="the cameo was revoked", expect=WAITING_STATES
            )
            if finished is None:
                with contextlib.suppress(StoreError):
                    await self.bot.store.update_job(job.id, cancel_requested=1)
                self.bot.wake()
            else:
                await self.bot.refresh_card(finished)
                await self._remove_reference(finished)
            await self._tell(
                job, f"Job {job.id} was cancelled because the cameo it used was revoked. Nothing was charged."
            )
        delivered = await self.store.jobs_using(cameo.owner_key, [JobState.DELIVERED])
        for job in await self.store.jobs_using(cameo.owner_key, list(JobState)):
            # Copies of the likeness live on as job references and at the provider: remove them too.
            await self._remove_reference(job)
            if job.provider_video_id and job.state.is_final:
                with contextlib.suppress(ProviderError):
                    await self.bot.provider.delete(job.provider_video_id)
        posted = [job for job in delivered if job.delivered_ref]
        lines = [f"Your cameo is revoked and its files are deleted; {cancelled} unfinished job(s) cancelled."]
        actions: tuple[tuple[str, str], ...] = ()
        if posted:
            lines.append("Clips already posted with it:")
            lines += [f"• job {job.id} by {mention(job.platform, job.user_id)} in {job.channel_id}" for job in posted]
            lines.append("Delete those posts with the button below.")
            actions = (("cameo_delete_posts", f"Delete {len(posted)} post(s)"),)
        return Reply("\n".join(lines), actions=actions)

    async def _remove_reference(self, job: Job) -> None:
        if job.reference_path and ".likeness." in job.reference_path:
            with contextlib.suppress(OSError):
                Path(job.reference_path).unlink()

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


def enable_cameos(bot: ReelBot, *, data_dir: Path) -> Cameos:
    """Wires likeness consent into the core (checked at request time and again before submission)."""
    cameos = Cameos(bot=bot, data_dir=data_dir)
    bot.cameos = cameos
    return cameos
