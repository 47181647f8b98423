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
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from bot import texts
from bot.catalog import Catalog, choose, shipped_catalog
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
    ModelsCommand,
    RetryCommand,
    VideoCommand,
    clean_text,
    parse,
    parse_video,
)
from bot.config import Settings
from bot.delivery import DEFAULT_CARD_INTERVAL_S, CardThrottle, Delivery, DeliveryError
from bot.jobs import CANCEL_NOW_STATES, ChatRequest, InputFile, Job, JobOptions, JobState, Requester
from bot.media import MediaError, fit_reference
from bot.money import format_usd, usd_to_micros
from bot.periods import period_key, period_reset
from bot.providers.base import ReferenceImage, VideoProvider
from bot.providers.registry import ProviderSet
from bot.store import IllegalTransition, Store, new_job_id

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


# The one answer to an action that failed unexpectedly: it promises nothing that may be untrue.
CATCH_ALL = "Something went wrong; check `/video jobs` before trying again."
# How long a cancel waits for the worker to confirm the job stopped before answering.
STOP_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``ReelBot.stop_job`` achieved, and the one true sentence about it (``text``).

    Attributes:
        job: the job as stored when the answer was made.
        requested: how the job was asked to end (cancelled or refused).
        pending: the worker is still stopping it; the store already refuses to post or charge it,
            and the requester is told when it has stopped.
    """

    job: Job
    requested: JobState
    reason: str = ""
    pending: bool = False

    @property
    def stopped(self) -> bool:
        """It ended as asked: nothing posted, nothing charged."""
        return self.job.state is self.requested

    @property
    def posted(self) -> bool:
        """The clip was posted before the stop: it was charged ``job.cost_micros``."""
        return self.job.state is JobState.DELIVERED

    @property
    def text(self) -> str:
        job = self.job
        if self.pending:
            return (
                f"Stopping job {job.id}: it can no longer be posted or charged. I'll confirm here once it has stopped."
            )
        if self.posted:
            return f"Job {job.id} was already posted, so it was charged {format_usd(job.cost_micros)}."
        if self.stopped and self.requested is JobState.CANCELLED:
            return f"Job {job.id} cancelled. Nothing was charged."
        if self.stopped:
            return f"Job {job.id} was stopped: {self.reason} Nothing was charged."
        if job.state.is_final:
            return f"Job {job.id} had already {_ENDED.get(job.state, job.state.value)}; nothing was charged."
        return f"Job {job.id} is {job.state.value}; it could not be stopped. Check `/video jobs`."


_ENDED = {JobState.FAILED: "failed", JobState.CANCELLED: "been cancelled", JobState.REFUSED: "been refused"}


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
        catalog: Catalog | None = None,
    ) -> None:
        if providers is None:
            if provider is None:
                raise TypeError("ReelBot needs a provider or providers")
            providers = ProviderSet.single(provider)
        self.store = store
        #: Every configured provider; ``provider`` is the default one.
        self.providers = providers
        self.provider = providers.get(None)
        self.clock = clock
        #: The models people can ask for; each job is priced from it and routed by it.
        self.catalog = catalog if catalog is not None else shipped_catalog()
        # Every ``parse(text, bot.policy.rules)`` (the core's and the adapters' early checks) also checks a clip
        # request against its model, so a form or a download is refused with the same sentence up front.
        self.policy = replace(policy, rules=replace(policy.rules, check=self._check_against_catalog))
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
            case HelpCommand(model=None):
                return Reply(texts.help_text(self.catalog, self.providers.names))
            case HelpCommand(model=name):
                return self._model_help(name)
            case ModelsCommand():
                return Reply(texts.models_text(self.catalog, self.providers.names))
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

    def _check_against_catalog(self, command: VideoCommand) -> None:
        choose(command, self.catalog, self.providers.names)

    def _model_help(self, name: str) -> Reply:
        names = self.providers.names
        model = self.catalog.get(name)
        if model is None:
            available = ", ".join(m.name for m in self.catalog.enabled(names)) or "none"
            return Reply(f"There is no model {name[:40]}. Models here: {available}. Usage: /video help MODEL", ok=False)
        routes = self.catalog.routes_for(model, names)
        text = texts.model_help_text(model, routes, local_stands_in=self.catalog.local_stands_in(names))
        return Reply(text)

    async def request_video(
        self,
        command: VideoCommand,
        request: ChatRequest,
        *,
        remix_of: str | None = None,
        reference: ReferenceImage | None = None,
        provider: str | None = None,
    ) -> Reply:
        """Creates, prices, admits and announces a clip job (idempotent per request key).

        The request is completed from its catalog model (``bot.catalog.choose``) and priced at
        seconds x the model's price for the resolution and sound; ``provider`` pins the job to one provider
        (a remix must go where the original is), else the model's first configured route serves it.
        """
        existing = await self.store.get_job_by_request(request.request_key)
        if existing is not None:
            return Reply(f"Already on it: job {existing.id} is {texts.status_text(existing).lower()}.", job=existing)
        starts_from_image = bool(request.attachments) or (reference is not None and not reference.is_likeness)
        try:
            choice = choose(command, self.catalog, self.providers.names, first_frame=starts_from_image)
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        command, cost = choice.command, choice.cost_micros
        if provider is None:
            routes = self.catalog.routes_for(choice.model, self.providers.names)
            provider = routes[0].provider if routes else self.provider.name

        if reference is None:
            images = list(request.attachments)
            if len(images) > 1:
                return Reply("Attach one image at most; it becomes the clip's first frame.", ok=False)
            if images:
                try:
                    reference = await asyncio.to_thread(self._fit, images[0], str(command.size))
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
                model=choice.model.name,
                size=str(command.size),
                seconds=int(command.seconds or 0),
                cameo=cameo_check.owner_key if cameo_check is not None and cameo_check.owner_key else None,
                aspect=str(command.aspect),
                resolution=str(command.resolution),
                audio=command.audio,
                seed=command.seed,
                negative=command.negative,
            ),
            state=JobState.RECEIVED,
            cost_micros=cost,
            created_at=now,
            updated_at=now,
            provider=provider,
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
            except Exception as exc:  # anything: the reply and the job's fate must agree
                return await self._card_not_posted(job, exc)
            job = await self.store.update_job(job.id, card_ref=card_ref)
        self.wake()
        text = texts.queued_text(job, position)
        if admission.warn:
            text += " " + texts.warning_text(admission.usage, self.policy.budget_period)
        return Reply(text, job=job)

    async def _card_not_posted(self, job: Job, exc: Exception) -> Reply:
        """The job card could not be posted: the job is stopped (released) before the person is told so."""
        if isinstance(exc, DeliveryError):
            busy = exc.retryable
            reason = exc.user_message
        else:
            log.error("posting the card of job %s failed", job.id, exc_info=exc)
            busy, reason = False, "I could not post the job card."
        outcome = await self.stop_job(job, JobState.CANCELLED, reason)
        if outcome.stopped:
            if busy:
                text = (
                    "The chat platform is too busy to take the job card right now. Nothing was "
                    "charged; send the command again in a minute."
                )
            elif isinstance(exc, DeliveryError):
                text = f"{reason} Nothing was charged."
            else:
                text = f"{reason} Job {job.id} was cancelled; nothing was charged."
        else:
            text = f"{reason} {outcome.text}"
        return Reply(text, ok=False, job=outcome.job)

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
        """Cancels a job in any state; the answer says only what is true when it is given."""
        found = await self._own_job(requester, job_id, "cancel")
        if isinstance(found, Reply):
            return found
        outcome = await self.stop_job(found, JobState.CANCELLED, f"cancelled by {requester.display_name}")
        return Reply(outcome.text, ok=outcome.stopped or outcome.pending, job=outcome.job)

    async def stop_job(self, job: Job, final_state: JobState, reason: str, *, wait_s: float = STOP_WAIT_S) -> Outcome:
        """Ends ``job`` as ``cancelled`` or ``refused`` in whatever state it is, honestly.

        A job nobody is working on (``CANCEL_NOW_STATES``) ends here, released. A job a worker
        drives is asked to stop (``Store.request_stop``): from then on the store refuses every
        move but an end, so it can no longer be posted or charged; the worker abandons what it is
        doing (deleting a clip the platform already took) and ends it. This waits up to
        ``wait_s`` for that; when the stop is confirmed in time the worker leaves the telling to
        the caller, otherwise it tells the requester itself once it has stopped. Revocation of a
        cameo uses this too.
        """
        if final_state not in (JobState.CANCELLED, JobState.REFUSED):
            raise ValueError(f"a job is stopped as cancelled or refused, not {final_state}")
        for _ in range(3):  # a job may move between the waiting and the active states while we look
            if job.state.is_final:
                return Outcome(job=job, requested=final_state, reason=reason)
            if job.state in CANCEL_NOW_STATES:
                try:
                    ended = await self.store.transition(job.id, final_state, expect=CANCEL_NOW_STATES, error=reason)
                except IllegalTransition as exc:
                    job = exc.job
                    continue
                if ended.clip_path:
                    Path(ended.clip_path).unlink(missing_ok=True)
                await self.refresh_card(ended)
                return Outcome(job=ended, requested=final_state, reason=reason)
            waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
            self._stop_waiters.setdefault(job.id, []).append(waiter)
            try:
                try:
                    job = await self.store.request_stop(job.id, final_state, reason)
                except IllegalTransition as exc:
                    job = exc.job
                    continue
                self.wake()
                await asyncio.wait({waiter}, timeout=wait_s)
                if waiter.done():
                    return Outcome(job=waiter.result(), requested=final_state, reason=reason)
                return Outcome(job=job, requested=final_state, reason=reason, pending=True)
            finally:
                waiters = self._stop_waiters.get(job.id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._stop_waiters.pop(job.id, None)
                waiter.cancel()
        return Outcome(job=job, requested=final_state, reason=reason, pending=not job.state.is_final)

    def job_ended(self, job: Job) -> bool:
        """The worker ended ``job`` (or posted it); True when a ``stop_job`` call is there to tell the person."""
        taken = False
        for waiter in self._stop_waiters.pop(job.id, []):
            if not waiter.done():
                waiter.set_result(job)
                taken = True
        return taken

    @cached_property
    def _stop_waiters(self) -> dict[str, list[asyncio.Future[Job]]]:
        return {}

    async def retry_delivery(self, requester: Requester, job_id: str) -> Reply:
        found = await self._own_job(requester, job_id, "retry")
        if isinstance(found, Reply):
            return found
        if found.state is not JobState.UNDELIVERED:
            return Reply(f"Job {found.id} is {found.state.value}; only an undelivered clip can be retried.", ok=False)
        try:
            job = await self.store.transition(found.id, JobState.DELIVERING, expect=[JobState.UNDELIVERED])
        except IllegalTransition as exc:
            current = exc.job
            if current.state is JobState.DELIVERING:
                return Reply(f"Job {found.id} is already being delivered.", ok=False)
            return Reply(f"Job {found.id} is {current.state.value}; only an undelivered clip can be retried.", ok=False)
        self.wake()
        return Reply(f"Delivering job {job.id} again.", job=job)

    async def reroll(self, requester: Requester, job_id: str, request_key: str) -> Reply:
        """Renders the same prompt and settings again, as a new job (and a new charge)."""
        job = await self.store.get_job(job_id)
        if job is None or (job.platform, job.workspace_id) != (requester.platform, requester.workspace_id):
            return Reply(f"There is no job {job_id[:40]} here.", ok=False)
        command = self._same_settings(job, job.prompt)
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
            # Always a prompt: "budget cuts" is what to change, not a subcommand; the settings stay the clip's.
            command = parse_video(clean_text(prompt))
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        command = self._same_settings(job, command.prompt)
        request = ChatRequest(
            requester=requester,
            request_key=request_key,
            channel_id=job.channel_id,
            text=prompt,
            thread_id=job.thread_id or job.card_ref,
        )
        return await self.request_video(command, request, remix_of=job.provider_video_id, provider=job.provider)

    def _same_settings(self, job: Job, prompt: str) -> VideoCommand:
        """A request for ``prompt`` with every option ``job`` was made with (re-checked against today's catalog)."""
        options = job.options
        return VideoCommand(
            prompt,
            model=options.model,
            size=options.size,
            seconds=options.seconds,
            cameo=self._cameo_handle(job),
            aspect=options.aspect or None,
            resolution=options.resolution or None,
            audio=options.audio,
            seed=options.seed,
            negative=options.negative,
        )

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

    async def press(
        self, requester: Requester, action: str, argument: str = "", request_key: str = "", *, text: str = ""
    ) -> Reply:
        """The one entry for every button and action, from every adapter.

        Args:
            action: ``cancel``, ``retry``, ``reroll``, ``remix`` (``text`` is the remix prompt), or a
                consent button (``cameo_confirm``, ``cameo_approve``, ``cameo_always``, ``cameo_deny``,
                ``cameo_delete_posts``).
            argument: the job id, or the consent request id.
            request_key: the platform's id of the press (a re-roll or remix pressed twice makes one job).

        Never raises: anything unexpected is logged and answered with ``CATCH_ALL``, which promises
        nothing (the job list says what really happened).
        """
        try:
            match action:
                case "cancel":
                    return await self.cancel(requester, argument)
                case "retry":
                    return await self.retry_delivery(requester, argument)
                case "reroll":
                    return await self.reroll(requester, argument, request_key)
                case "remix":
                    return await self.remix(requester, argument, text, request_key)
                case _ if action.startswith("cameo_"):
                    if self.cameos is None:
                        return Reply("Cameos are not available on this bot.", ok=False)
                    return await self.cameos.press(requester, f"{action}:{argument}" if argument else action)
            return Reply("That button is no longer available.", ok=False)
        except Exception:
            log.exception("the %s action for %s failed", action, argument[:40])
            return Reply(CATCH_ALL, ok=False)

    async def remix_target(self, requester: Requester, job_id: str) -> Job | Reply:
        """The job a remix form may be opened for (a delivered clip here), or the reply saying why not.

        Adapters call it before showing their platform's remix form; the remix itself comes back
        through ``press(requester, "remix", job_id, key, text=prompt)``.
        """
        try:
            job = await self.store.get_job(job_id.strip().lower())
        except Exception:
            log.exception("looking up job %s for a remix failed", job_id[:40])
            return Reply(CATCH_ALL, ok=False)
        if job is None or (job.platform, job.workspace_id) != (requester.platform, requester.workspace_id):
            return Reply(f"There is no job {job_id[:40]} here.", ok=False)
        if job.state is not JobState.DELIVERED or not job.provider_video_id:
            return Reply(f"Only a delivered clip can be remixed; job {job.id} is {job.state.value}.", ok=False)
        return job

    async def press_action(self, requester: Requester, action_id: str) -> Reply:
        """A button from ``Reply.actions`` (e.g. ``cameo_approve:REQ``): ``press`` with the id split."""
        action, _, argument = action_id.partition(":")
        return await self.press(requester, action, argument)

    async def refresh_card(self, job: Job) -> None:
        """Shows ``job`` on its card, paced by ``cards`` (one edit per interval, never dropping the latest)."""
        delivery = self.deliveries.get(job.platform)
        if delivery is None or job.card_ref is None:
            return
        await self.cards.update(job)

    async def flush_cards(self) -> None:
        """Shows every card edit still waiting for its window (at shutdown)."""
        await self.cards.flush()

    @cached_property
    def cards(self) -> CardThrottle:
        """The one card throttle, for every platform (a Delivery's ``min_update_interval``, 3 s by default)."""
        return CardThrottle(edit=self._edit_card, interval_for=self._card_interval)

    def _card_interval(self, job: Job) -> float:
        delivery = self.deliveries.get(job.platform)
        return float(getattr(delivery, "min_update_interval", DEFAULT_CARD_INTERVAL_S))

    async def _edit_card(self, job: Job) -> None:
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
