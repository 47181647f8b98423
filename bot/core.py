"""The bot core: turns a neutral ``ChatRequest`` into an answer, a job, or both.

Adapters call ``ReelBot.handle`` (and ``press`` for buttons) and show the ``Reply``; the worker
(``bot.worker``) drives admitted jobs to the end. Nothing here knows which platform it serves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot import texts
from bot.commands import (
    AdminBudgetCommand,
    AdminUsageCommand,
    BudgetCommand,
    CameoCommand,
    CancelCommand,
    CommandError,
    CommandRules,
    HelpCommand,
    JobsCommand,
    RetryCommand,
    VideoCommand,
    parse,
)
from bot.config import Settings
from bot.delivery import Delivery, DeliveryError
from bot.jobs import ChatRequest, InputFile, Job, JobOptions, JobState, Requester
from bot.media import MediaError, fit_reference
from bot.money import UnknownPriceError, clip_cost, format_usd, usd_to_micros
from bot.periods import period_key, period_reset
from bot.providers.base import ReferenceImage, VideoProvider
from bot.providers.registry import ProviderSet
from bot.store import Store, StoreError, new_job_id

log = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
_MENTION = re.compile(r"^<@!?([A-Za-z0-9_.\-]+)(?:\|[^>]*)?>$")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True, slots=True)
class CorePolicy:
    """The parts of configuration the core uses, built once from ``Settings``."""

    data_dir: Path
    rules: CommandRules = field(default_factory=CommandRules)
    default_budget_micros: int = 10_000_000
    budget_period: str = "month"
    admin_ids: frozenset[str] = frozenset()
    consent_timeout_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CorePolicy:
        return cls(
            data_dir=settings.data_dir,
            rules=CommandRules(allow_long_clips=settings.allow_long_clips, allow_1080p=settings.allow_1080p),
            default_budget_micros=usd_to_micros(settings.user_budget_usd),
            budget_period=settings.budget_period,
            admin_ids=frozenset(settings.admin_ids),
            consent_timeout_s=settings.consent_timeout_s,
        )

    @property
    def references_dir(self) -> Path:
        return self.data_dir / "references"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the adapter shows the person who asked.

    Attributes:
        private: show only to the requester (Slack ephemeral, Discord ephemeral).
        ok: false for refusals and errors (the terminal adapter exits non-zero).
        job: the job this reply is about, when there is one.
        actions: buttons to show with the reply, as ``(action_id, label)``; a press comes back
            through ``ReelBot.press_action``. In the terminal they are typed as commands instead.
    """

    text: str
    ok: bool = True
    private: bool = True
    job: Job | None = None
    actions: tuple[tuple[str, str], ...] = ()


def mention(platform: str, user_id: str) -> str:
    return f"<@{user_id}>" if platform in ("slack", "discord") else f"@{user_id}"


def resolve_user(token: str, request: ChatRequest) -> str:
    """A platform user id from ``@name``, ``<@U123>``, ``<@U123|name>`` or ``<@!123>``."""
    if token in request.mentions:
        return request.mentions[token]
    match = _MENTION.match(token)
    if match:
        return match.group(1)
    return token.lstrip("@")


class ReelBot:
    """The render core's front door."""

    def __init__(
        self,
        *,
        store: Store,
        provider: VideoProvider | None = None,
        providers: ProviderSet | None = None,
        policy: CorePolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if providers is None:
            if provider is None:
                raise TypeError("ReelBot needs a provider or providers")
            providers = ProviderSet.single(provider)
        self.store = store
        #: Every configured provider; ``provider`` is the default one.
        self.providers = providers
        self.provider = providers.get(None)
        self.policy = policy
        self.clock = clock
        self.deliveries: dict[str, Delivery] = {}
        self._wake: Callable[[], None] = lambda: None
        self.cameos = None  # set by bot.consent when likeness consent is wired in

    # --- wiring ----------------------------------------------------------------------------

    def register(self, delivery: Delivery) -> None:
        self.deliveries[delivery.platform] = delivery

    def on_new_work(self, callback: Callable[[], None]) -> None:
        """The worker's wake-up call, invoked whenever a job becomes runnable."""
        self._wake = callback

    def wake(self) -> None:
        self._wake()

    def provider_for(self, job: Job) -> VideoProvider:
        """The provider serving ``job`` (stored on the job, so a restart asks the same one)."""
        return self.providers.get(job.provider)

    def is_admin(self, requester: Requester) -> bool:
        return requester.is_admin or requester.user_id in self.policy.admin_ids

    # --- budgets ---------------------------------------------------------------------------

    def period(self) -> str:
        return period_key(self.policy.budget_period, self.clock())

    def _default_subject(self, platform: str, workspace_id: str) -> str:
        return f"default:{platform}:{workspace_id}"

    async def usage_for(self, platform: str, workspace_id: str, user_id: str):
        return await self.store.usage(
            f"{platform}:{workspace_id}:{user_id}",
            self.period(),
            default_subject=self._default_subject(platform, workspace_id),
            fallback_limit=self.policy.default_budget_micros,
        )

    # --- requests --------------------------------------------------------------------------

    async def handle(self, request: ChatRequest) -> Reply:
        """Answers one command. Never raises for anything a person can type."""
        try:
            command = parse(request.text, self.policy.rules)
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        try:
            return await self._dispatch(command, request)
        except CommandError as exc:
            return Reply(str(exc), ok=False)

    async def _dispatch(self, command, request: ChatRequest) -> Reply:
        requester = request.requester
        match command:
            case HelpCommand():
                return Reply(texts.help_text(self.policy.rules))
            case BudgetCommand():
                usage = await self.usage_for(requester.platform, requester.workspace_id, requester.user_id)
                reset = period_reset(self.policy.budget_period, self.clock())
                return Reply(texts.budget_text(usage, self.policy.budget_period, reset))
            case JobsCommand():
                jobs = await self.store.jobs_for_user(requester.platform, requester.workspace_id, requester.user_id)
                return Reply(texts.jobs_text(jobs))
            case CancelCommand(job_id=job_id):
                return await self.cancel(requester, job_id)
            case RetryCommand(job_id=job_id):
                return await self.retry_delivery(requester, job_id)
            case AdminBudgetCommand():
                return await self._admin_budget(command, request)
            case AdminUsageCommand():
                return await self._admin_usage(requester)
            case CameoCommand():
                if self.cameos is None:
                    return Reply("Cameos are not enabled on this bot.", ok=False)
                return await self.cameos.handle(command, request)
            case VideoCommand():
                return await self.request_video(command, request)
        raise AssertionError(f"unhandled command {command!r}")

    async def request_video(
        self,
        command: VideoCommand,
        request: ChatRequest,
        *,
        remix_of: str | None = None,
        reference: ReferenceImage | None = None,
    ) -> Reply:
        """Creates, prices, admits and announces a clip job (idempotent per request key)."""
        existing = await self.store.get_job_by_request(request.request_key)
        if existing is not None:
            return Reply(f"Already on it: job {existing.id} is {texts.status_text(existing).lower()}.", job=existing)
        try:
            cost = clip_cost(command.model, command.size, command.seconds)
        except UnknownPriceError:
            return Reply(f"No price is known for {command.model} at {command.size}, so I can't make it.", ok=False)

        if reference is None:
            images = list(request.attachments)
            if len(images) > 1:
                return Reply("Attach one image at most; it becomes the clip's first frame.", ok=False)
            if images:
                try:
                    reference = await asyncio.to_thread(self._fit, images[0], command.size)
                except MediaError as exc:
                    return Reply(str(exc), ok=False)

        cameo_check = None
        if command.cameo is not None or reference is not None:
            if self.cameos is not None:
                cameo_check = await self.cameos.check_request(command, request, reference)
                if not cameo_check.allowed:
                    return Reply(cameo_check.message, ok=False)
                reference = cameo_check.reference or reference
            elif command.cameo is not None:
                return Reply("Cameos are not enabled on this bot.", ok=False)

        now = self.clock()
        requester = request.requester
        job = Job(
            id=new_job_id(),
            request_key=request.request_key,
            platform=requester.platform,
            workspace_id=requester.workspace_id,
            user_id=requester.user_id,
            user_name=requester.display_name,
            channel_id=request.channel_id,
            thread_id=request.thread_id,
            prompt=command.prompt,
            options=JobOptions(
                command.model,
                command.size,
                command.seconds,
                cameo_check.owner_key if cameo_check is not None and cameo_check.owner_key else None,
            ),
            state=JobState.RECEIVED,
            cost_micros=cost,
            created_at=now,
            updated_at=now,
            provider=self.provider.name,
            remix_of=remix_of,
        )
        job, created = await self.store.insert_job(job)
        if not created:
            return Reply(f"Already on it: job {job.id} is {texts.status_text(job).lower()}.", job=job)
        if reference is not None:
            path = await asyncio.to_thread(self._save_reference, job.id, reference)
            job = await self.store.update_job(job.id, reference_path=str(path))
        if cameo_check is not None and cameo_check.pending:
            return await self.cameos.hold_for_consent(job, cameo_check)
        return await self.admit_and_announce(job)

    def _fit(self, image: InputFile, size: str) -> ReferenceImage:
        return fit_reference(
            image.data,
            declared_type=image.content_type,
            filename=image.filename,
            size=size,
            max_bytes=MAX_ATTACHMENT_BYTES,
        )

    def _save_reference(self, job_id: str, reference: ReferenceImage) -> Path:
        directory = self.policy.references_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        suffix = _EXTENSIONS.get(reference.content_type, "png")
        name = f"{job_id}.likeness.{suffix}" if reference.is_likeness else f"{job_id}.{suffix}"
        path = directory / name
        path.write_bytes(reference.data)
        return path

    async def admit_and_announce(self, job: Job) -> Reply:
        """Reserves the cost, posts the job card and wakes the worker; or refuses for budget."""
        admission = await self.store.admit(
            job.id,
            period=self.period(),
            default_subject=self._default_subject(job.platform, job.workspace_id),
            fallback_limit=self.policy.default_budget_micros,
            queued_state=JobState.QUEUED,
        )
        job = await self.store.get_job(job.id) or job
        if not admission.admitted:
            reset = period_reset(self.policy.budget_period, self.clock())
            text = texts.budget_refusal(job.cost_micros, admission.usage, self.policy.budget_period, reset)
            await self.store.audit(job.user_key, "refused_budget", job.id, format_usd(job.cost_micros))
            return Reply(text, ok=False, job=job)
        position = await self.store.queue_position(job.id)
        delivery = self.deliveries.get(job.platform)
        if delivery is not None and job.card_ref is None:
            try:
                card_ref = await self._post_card(delivery, job, position)
            except DeliveryError as exc:
                cancelled = await self.store.finish_job(
                    job.id, JobState.CANCELLED, error=exc.user_message, expect=[JobState.QUEUED]
                )
                job = cancelled or job
                if exc.retryable:
                    return Reply(
                        "The chat platform is too busy to take the job card right now. Nothing was "
                        "charged; send the command again in a minute.",
                        ok=False,
                        job=job,
                    )
                return Reply(f"{exc.user_message} Nothing was charged.", ok=False, job=job)
            job = await self.store.update_job(job.id, card_ref=card_ref)
        self.wake()
        text = texts.queued_text(job, position)
        if admission.warn:
            text += " " + texts.warning_text(admission.usage, self.policy.budget_period)
        return Reply(text, job=job)

    async def _post_card(self, delivery: Delivery, job: Job, position: int | None, tries: int = 2) -> str:
        """Posts the job card, trying a passing failure (a rate limit) again a couple of times."""
        for attempt in range(tries):
            try:
                return await delivery.post_card(job, texts.card_view(job, position))
            except DeliveryError as exc:
                if not exc.retryable or attempt == tries - 1:
                    raise
                await asyncio.sleep(1.0 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- job actions (commands and buttons) -------------------------------------------------

    async def _own_job(self, requester: Requester, job_id: str, verb: str) -> Job | Reply:
        job = await self.store.get_job(job_id.strip().lower())
        if job is None or job.platform != requester.platform or job.workspace_id != requester.workspace_id:
            return Reply(f"There is no job {job_id[:40]} here. Your jobs: /video jobs.", ok=False)
        if job.user_id != requester.user_id and not self.is_admin(requester):
            return Reply(f"Only the person who asked for job {job.id} (or an admin) can {verb} it.", ok=False)
        return job

    async def cancel(self, requester: Requester, job_id: str) -> Reply:
        found = await self._own_job(requester, job_id, "cancel")
        if isinstance(found, Reply):
            return found
        job = found
        if job.state.is_final:
            return Reply(f"Job {job.id} is already {job.state.value}.", ok=False, job=job)
        waiting = (JobState.RECEIVED, JobState.PENDING_CONSENT, JobState.QUEUED, JobState.UNDELIVERED)
        finished = await self.store.finish_job(
            job.id, JobState.CANCELLED, error=f"cancelled by {requester.display_name}", expect=waiting
        )
        if finished is not None:
            await self.refresh_card(finished)
            return Reply(f"Job {job.id} cancelled. Nothing was charged.", job=finished)
        job = await self.store.update_job(job.id, cancel_requested=1)
        self.wake()
        return Reply(f"Cancelling job {job.id}; you will not be charged for it.", job=job)

    async def retry_delivery(self, requester: Requester, job_id: str) -> Reply:
        found = await self._own_job(requester, job_id, "retry")
        if isinstance(found, Reply):
            return found
        if found.state is not JobState.UNDELIVERED:
            return Reply(f"Job {found.id} is {found.state.value}; only an undelivered clip can be retried.", ok=False)
        try:
            job = await self.store.update_job(found.id, state=JobState.DELIVERING, expect=[JobState.UNDELIVERED])
        except StoreError:
            return Reply(f"Job {found.id} is already being delivered.", ok=False)
        self.wake()
        return Reply(f"Delivering job {job.id} again.", job=job)

    async def reroll(self, requester: Requester, job_id: str, request_key: str) -> Reply:
        """Renders the same prompt and settings again, as a new job (and a new charge)."""
        job = await self.store.get_job(job_id)
        if job is None or (job.platform, job.workspace_id) != (requester.platform, requester.workspace_id):
            return Reply(f"There is no job {job_id[:40]} here.", ok=False)
        command = VideoCommand(
            job.prompt, job.options.model, job.options.size, job.options.seconds, cameo=self._cameo_handle(job)
        )
        reference = self._load_reference(job)
        request = ChatRequest(
            requester=requester,
            request_key=request_key,
            channel_id=job.channel_id,
            text=job.prompt,
            thread_id=job.thread_id or job.card_ref,
        )
        return await self.request_video(command, request, reference=reference)

    async def remix(self, requester: Requester, job_id: str, prompt: str, request_key: str) -> Reply:
        """Asks the provider to change a delivered clip according to a new prompt."""
        job = await self.store.get_job(job_id)
        if job is None or (job.platform, job.workspace_id) != (requester.platform, requester.workspace_id):
            return Reply(f"There is no job {job_id[:40]} here.", ok=False)
        if job.state is not JobState.DELIVERED or not job.provider_video_id:
            return Reply(f"Only a delivered clip can be remixed; job {job.id} is {job.state.value}.", ok=False)
        try:
            command = parse(prompt, self.policy.rules)
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        if not isinstance(command, VideoCommand):
            return Reply("A remix needs a prompt that says what to change.", ok=False)
        command = VideoCommand(
            command.prompt, job.options.model, job.options.size, job.options.seconds, cameo=self._cameo_handle(job)
        )
        request = ChatRequest(
            requester=requester,
            request_key=request_key,
            channel_id=job.channel_id,
            text=prompt,
            thread_id=job.thread_id or job.card_ref,
        )
        return await self.request_video(command, request, remix_of=job.provider_video_id)

    def _cameo_handle(self, job: Job) -> str | None:
        if job.options.cameo is None:
            return None
        return "@" + job.options.cameo.rsplit(":", 1)[-1]

    def _load_reference(self, job: Job) -> ReferenceImage | None:
        if not job.reference_path or job.options.cameo:
            return None
        path = Path(job.reference_path)
        if not path.exists():
            return None
        content_type = {v: k for k, v in _EXTENSIONS.items()}.get(path.suffix.lstrip("."), "image/png")
        return ReferenceImage(path.read_bytes(), content_type, path.name)

    async def press_action(self, requester: Requester, action_id: str) -> Reply:
        """A button from ``Reply.actions`` or a direct message was pressed (e.g. ``cameo_approve:REQ``)."""
        if action_id.startswith("cameo_") and self.cameos is not None:
            return await self.cameos.press(requester, action_id)
        return Reply("That button is no longer available.", ok=False)

    async def refresh_card(self, job: Job) -> None:
        delivery = self.deliveries.get(job.platform)
        if delivery is None or job.card_ref is None:
            return
        position = await self.store.queue_position(job.id) if job.state is JobState.QUEUED else None
        try:
            await delivery.update_card(job, texts.card_view(job, position))
        except DeliveryError as exc:
            log.warning("card update for job %s failed: %s", job.id, exc.user_message)

    # --- admin -----------------------------------------------------------------------------

    async def _admin_budget(self, command: AdminBudgetCommand, request: ChatRequest) -> Reply:
        requester = request.requester
        if not self.is_admin(requester):
            return Reply("Only workspace admins can set budgets.", ok=False)
        micros = usd_to_micros(command.amount_usd)
        if command.target.lower() == "default":
            subject = self._default_subject(requester.platform, requester.workspace_id)
            await self.store.set_limit(subject, micros, set_by=requester.key)
            return Reply(f"The default budget here is now {format_usd(micros)} per {self.policy.budget_period}.")
        user_id = resolve_user(command.target, request)
        if not user_id:
            return Reply("Name the user, e.g. /video admin budget @alice 50.", ok=False)
        subject = f"{requester.platform}:{requester.workspace_id}:{user_id}"
        await self.store.set_limit(subject, micros, set_by=requester.key)
        who = mention(requester.platform, user_id)
        return Reply(f"{who}'s budget is now {format_usd(micros)} per {self.policy.budget_period}.")

    async def _admin_usage(self, requester: Requester) -> Reply:
        if not self.is_admin(requester):
            return Reply("Only workspace admins can see everyone's usage.", ok=False)
        prefix = f"{requester.platform}:{requester.workspace_id}:"
        rows = await self.store.usage_report(prefix, self.period())
        if not rows:
            return Reply(f"Nobody has used any budget yet this {self.policy.budget_period}.")
        lines = [f"Usage this {self.policy.budget_period}:"]
        for user_key, spent, reserved in rows:
            user_id = user_key.rsplit(":", 1)[-1]
            lines.append(
                f"• {mention(requester.platform, user_id)}: spent {format_usd(spent)}, reserved {format_usd(reserved)}"
            )
        return Reply("\n".join(lines))
