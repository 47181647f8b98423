"""The job state machine: the table, the one call that writes ``state``, and (state x event) driven for real.

Every case runs the real worker and store on the embedded renderer, with the step in question held
open (a create, a render, a download or an upload waiting on a gate), applies one event (cancel,
revoke, consent narrowed, a provider failure, a delivery failure, a crash in the step), lets the job
run to its end and checks four things: the final state, the ledger (one reserve, at most one close,
reserve = settle + release), whether the clip is visible on the platform, and the exact words said
to the person, which must match what happened.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.core import CATCH_ALL, Reply
from bot.delivery import CardView, DeliveryError
from bot.jobs import (
    ACTIVE_STATES,
    CANCEL_LATER_STATES,
    CANCEL_NOW_STATES,
    FINAL_STATES,
    MOVES,
    OPEN_STATES,
    ChatRequest,
    Job,
    JobOptions,
    JobState,
    Requester,
    all_moves,
)
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec, VideoStatus
from bot.providers.local import LocalRenderer
from tests.conditions import until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
S = JobState
ALICE = Requester("console", "w1", "alice", "@alice")
COST = 400_000


# --- the table ---------------------------------------------------------------------------------------------


def test_every_open_state_can_end_and_every_state_is_reachable() -> None:
    assert set(MOVES) == set(JobState)
    assert FINAL_STATES.isdisjoint(OPEN_STATES) and FINAL_STATES | OPEN_STATES == set(JobState)
    for state in OPEN_STATES:
        assert {S.FAILED, S.CANCELLED, S.REFUSED} <= MOVES[state], state
    for state in FINAL_STATES:
        assert MOVES[state] == frozenset(), state
    reachable, frontier = {S.RECEIVED}, [S.RECEIVED]
    while frontier:
        for target in MOVES[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(JobState)
    assert CANCEL_NOW_STATES | CANCEL_LATER_STATES == OPEN_STATES  # a cancel works in every open state
    assert CANCEL_LATER_STATES == ACTIVE_STATES


# ``state = ...`` inside the SET clause of an UPDATE of jobs (not in its WHERE clause).
_STATE_WRITE = re.compile(r"\bUPDATE\s+jobs\s+SET\b((?:(?!\bWHERE\b).)*)", re.IGNORECASE | re.DOTALL)


def _python_files() -> list[Path]:
    return sorted([*(ROOT / "bot").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])


def test_no_code_path_writes_state_outside_the_transition() -> None:
    """SQL that sets ``state`` lives only in ``move_in_tx``; nobody passes ``state=`` to ``update_job``."""
    offenders: list[str] = []
    for path in _python_files():
        source = path.read_text()
        tree = ast.parse(source)
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "move_in_tx" and path.name == "jobs.py":
                allowed |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.lineno not in allowed:
                text = node.value
                sets = _STATE_WRITE.search(text)
                if sets and re.search(r"(?<![\w.])state\s*=", sets.group(1), re.IGNORECASE):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} SQL writes state")
                if re.match(r"\s*state\s*=\s*\?", text):  # a SET clause assembled from parts
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} SQL fragment writes state")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "update_job" and any(k.arg == "state" for k in node.keywords):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} update_job(state=...)")
    assert offenders == []
    # The scanner finds what it looks for: the one allowed writer is there.
    jobs_source = (ROOT / "bot" / "store" / "jobs.py").read_text()
    assert '"state = ?"' in jobs_source


# Calls that move a job: the JobState among their arguments is the target. ``stop_job`` and
# ``request_stop`` end a job from any open state; ``_fail`` is ``_end(..., FAILED, ...)``.
_MOVERS = {"transition", "move_in_tx", "finish_job", "_end", "stop_job", "request_stop", "_fail"}


def _moves_named_in_source() -> set[tuple[JobState, JobState]]:
    """(from, to) pairs the code asks for, read from the calls in ``bot/`` and ``adapters/``."""
    found: set[tuple[JobState, JobState]] = set()
    names = {s.name: s for s in JobState}
    sets = {"CANCEL_NOW_STATES": CANCEL_NOW_STATES, "ADMITTING_STATES": frozenset({S.RECEIVED, S.PENDING_CONSENT})}
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called not in _MOVERS:
                continue
            targets = [a for a in node.args if isinstance(a, ast.Attribute) and a.attr in names]
            if called == "_fail":
                target = S.FAILED
            elif targets:
                target = names[targets[-1].attr]
            else:
                continue
            expect = next((k.value for k in node.keywords if k.arg == "expect"), None)
            if isinstance(expect, ast.List):
                sources = {names[e.attr] for e in expect.elts if isinstance(e, ast.Attribute) and e.attr in names}
            elif isinstance(expect, ast.Name) and expect.id in sets:
                sources = set(sets[expect.id])
            else:  # no expect (or one computed at run time): from wherever the job is
                sources = set(OPEN_STATES)
            found |= {(s, target) for s in sources if target in MOVES[s]}
    return found


def test_every_move_in_the_table_is_used() -> None:
    used = _moves_named_in_source()
    # Admission moves to its ``queued_state`` argument (``bot/store/money.py``), named by the caller.
    used |= {(S.RECEIVED, S.QUEUED), (S.PENDING_CONSENT, S.QUEUED)}
    # The consent side holds a job for consent (``transition(job.id, PENDING_CONSENT, also=...)``).
    used.add((S.RECEIVED, S.PENDING_CONSENT))
    assert all_moves() - used == set()
    # ...and the scan is not blind: it sees the worker's forward moves.
    assert {(S.SUBMITTING, S.RENDERING), (S.DELIVERING, S.DELIVERED), (S.UNDELIVERED, S.DELIVERING)} <= used


# --- the harness: real worker, real store, the embedded renderer, a terminal delivery held mid-upload -------


class Gate:
    """A step held open: ``entered`` is set when the step reaches it, ``opened`` lets it go on."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.opened.set()

    def close(self) -> None:
        self.opened.clear()

    async def pass_through(self) -> None:
        self.entered.set()
        await self.opened.wait()


class HeldRenderer(LocalRenderer):
    """The embedded renderer, whose create, render and download can be held open or made to fail or crash."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gates = {step: Gate() for step in ("create", "render", "download")}
        self.fail: set[str] = set()
        self.crash: set[str] = set()
        self.deleted: list[str] = []

    def _trouble(self, step: str) -> None:
        if step in self.crash:
            raise RuntimeError(f"a bug in {step} (test)")
        if step in self.fail:
            raise ProviderError(ErrorKind.SERVER, f"{step} failed (test)")

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        await self.gates["create"].pass_through()
        self._trouble("create")
        return await super().create(spec)

    async def retrieve(self, video_id: str) -> ProviderVideo:
        video = await super().retrieve(video_id)
        gate = self.gates["render"]
        gate.entered.set()
        if "render" in self.fail:
            return replace(video, status=VideoStatus.FAILED, error=ProviderError(ErrorKind.SERVER, "render (test)"))
        if not gate.opened.is_set() and video.status is VideoStatus.COMPLETED:
            return replace(video, status=VideoStatus.IN_PROGRESS, progress=50)
        return video

    async def download(self, video_id: str, dest: Path) -> int:
        await self.gates["download"].pass_through()
        self._trouble("download")
        return await super().download(video_id, dest)

    async def delete(self, video_id: str) -> None:
        self.deleted.append(video_id)
        await super().delete(video_id)


class HeldDelivery(ConsoleDelivery):
    """The terminal delivery, with an upload that can be held open, refused or crash; it keeps what it showed."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.upload_gate = Gate()
        self.refuse_uploads = 0
        self.crash_uploads = False
        self.clips: dict[str, str] = {}  # job id -> the ref of its clip, while it is visible
        self.notices: list[str] = []
        self.cards: list[tuple[str, str]] = []  # (job id, status) of each card edit
        self.upload_calls = 0

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        self.upload_calls += 1
        await self.upload_gate.pass_through()
        if self.crash_uploads:
            raise RuntimeError("the platform library broke (test)")
        if self.refuse_uploads > 0:
            self.refuse_uploads -= 1
            raise DeliveryError("The upload was refused (test).", retryable=False)
        ref = await super().post_clip(job, clip, caption)
        self.clips[job.id] = ref
        return ref

    async def delete_message(self, job: Job, ref: str) -> None:
        await super().delete_message(job, ref)
        if self.clips.get(job.id) == ref:
            del self.clips[job.id]

    async def find_clip(self, job: Job) -> str | None:
        return self.clips.get(job.id)

    async def notify(self, job: Job, text: str) -> None:
        self.notices.append(text)
        await super().notify(job, text)

    async def update_card(self, job: Job, card: CardView) -> None:
        self.cards.append((job.id, card.state))
        await super().update_card(job, card)


class NarrowingCameos:
    """Our own consent seam (``Cameos.recheck``), answering as the owner's latest settings would."""

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.rechecks = 0

    async def recheck(self, job: Job) -> str | None:
        self.rechecks += 1
        return self.refusal

    async def expire_pending(self) -> int:
        return 0

    async def record_use(self, job: Job) -> None:
        return None


@dataclass
class Harness:
    app: App
    renderer: HeldRenderer
    delivery: HeldDelivery
    cameos: NarrowingCameos

    @property
    def store(self):
        return self.app.store


@pytest.fixture
async def harness(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Harness]:
    settings = make_settings(REELBOT_MAX_ATTEMPTS=2)
    renderer = HeldRenderer(work_dir=settings.data_dir / "renders", fps=8)
    app = await build_app(settings, provider=renderer)
    delivery = HeldDelivery()
    app.bot.register(delivery)
    cameos = NarrowingCameos()
    app.bot.cameos = cameos  # type: ignore[assignment]
    app.worker.tick_seconds = 0.05
    app.worker.max_attempts = 2
    app.worker.crash_backoff_s = 0.01
    app.worker._sleep = lambda _s: asyncio.sleep(0)
    await app.worker.start()
    try:
        yield Harness(app, renderer, delivery, cameos)
    finally:
        await app.close()


def ask(text: str, key: str) -> ChatRequest:
    return ChatRequest(requester=ALICE, request_key=key, channel_id="terminal", text=text)


async def state_of(h: Harness, job_id: str) -> JobState:
    job = await h.store.get_job(job_id)
    assert job is not None
    return job.state


async def reach(h: Harness, state: JobState, key: str) -> Job:
    """Makes a job and holds it in ``state``."""
    if state in (S.RECEIVED, S.PENDING_CONSENT):
        now = time.time()
        job, _ = await h.store.insert_job(
            Job(
                id="",
                request_key=key,
                platform="console",
                workspace_id="w1",
                user_id="alice",
                user_name="@alice",
                channel_id="terminal",
                thread_id=None,
                prompt="a held job",
                options=JobOptions("sora-2", "1280x720", 4),
                state=S.RECEIVED,
                cost_micros=COST,
                created_at=now,
                updated_at=now,
            )
        )
        if state is S.PENDING_CONSENT:
            job = await h.store.transition(job.id, S.PENDING_CONSENT)
        return job
    gates = {
        S.SUBMITTING: h.renderer.gates["create"],
        S.RENDERING: h.renderer.gates["render"],
        S.DOWNLOADING: h.renderer.gates["download"],
        S.DELIVERING: h.delivery.upload_gate,
    }
    if state is S.QUEUED:
        h.app.worker.max_in_flight = 0
    elif state in gates:
        gates[state].close()
    elif state is S.UNDELIVERED:
        h.delivery.refuse_uploads = 1
    reply = await h.app.bot.handle(ask("a held job --seconds 4", key))
    assert reply.ok and reply.job is not None, reply.text
    job_id = reply.job.id
    if state in gates:
        await until(f"{state} held", gates[state].entered.is_set)
    elif state in (S.UNDELIVERED, S.DELIVERED):
        await h.app.worker.wait_for(job_id, timeout=30)
    assert await state_of(h, job_id) is state
    job = await h.store.get_job(job_id)
    assert job is not None
    return job


def release_everything(h: Harness) -> None:
    h.app.worker.max_in_flight = 4
    for gate in (*h.renderer.gates.values(), h.delivery.upload_gate):
        gate.opened.set()
    h.app.worker.wake()


async def settle(h: Harness, job_id: str) -> Job:
    """Lets the job run to its end (or to undelivered) and waits until no card edit is pending."""
    release_everything(h)
    await h.app.worker.run_until_idle(timeout=60)
    job = await h.store.get_job(job_id)
    assert job is not None
    await until("the last card edit", lambda: not h.app.bot.cards.pending(job_id))
    return job


# --- the events ----------------------------------------------------------------------------------------------


async def cancel(h: Harness, job: Job) -> Reply:
    return await _stop_while_held(h, job, lambda: h.app.bot.cancel(ALICE, job.id))


async def revoke(h: Harness, job: Job) -> Reply:
    """What the consent side's revocation does: ``stop_job`` with ``refused``, then says the outcome."""

    async def call() -> Reply:
        current = await h.store.get_job(job.id)
        outcome = await h.app.bot.stop_job(current, S.REFUSED, "The cameo it used was revoked.")
        return Reply(outcome.text, ok=outcome.stopped or outcome.pending, job=outcome.job)

    return await _stop_while_held(h, job, call)


async def _stop_while_held(h: Harness, job: Job, call: Callable[[], object]) -> Reply:
    """Starts the stop, and lets the held step go on only once the stop is on record (as a real race would)."""
    task = asyncio.ensure_future(call())
    if job.state in CANCEL_LATER_STATES:
        await until("the stop on record", lambda: _flag(h, job.id) if not task.done() else True)
        release_everything(h)
    return await asyncio.wait_for(task, 30)


async def _flag(h: Harness, job_id: str) -> bool:
    current = await h.store.get_job(job_id)
    return current is not None and (current.cancel_requested or current.state.is_final)


async def narrow(h: Harness, job: Job) -> None:
    h.cameos.refusal = "@bob no longer allows you to use their cameo."
    await h.store._db.execute("UPDATE jobs SET cameo = 'console:w1:bob' WHERE id = ?", (job.id,))
    if job.state is S.UNDELIVERED:
        await h.app.bot.retry_delivery(ALICE, job.id)


async def provider_failure(h: Harness, job: Job) -> None:
    step = {S.SUBMITTING: "create", S.RENDERING: "render", S.DOWNLOADING: "download"}[job.state]
    h.renderer.fail.add(step)


async def crash(h: Harness, job: Job) -> None:
    if job.state is S.DELIVERING:
        h.delivery.crash_uploads = True
    else:
        h.renderer.crash.add({S.SUBMITTING: "create", S.DOWNLOADING: "download"}[job.state])


# --- expectations ----------------------------------------------------------------------------------------------

CANCELLED = "Job {id} cancelled. Nothing was charged."
REVOKED = "Job {id} was stopped: The cameo it used was revoked. Nothing was charged."
NARROWED = "Job {id} was stopped: @bob no longer allows you to use their cameo. Nothing was charged."
POSTED = "Job {id} was already posted, so it was charged $0.40."
FAILED = "Job {id} failed: The video service had an internal error. You were not charged."
UNDELIVERED = (
    "Your clip for job {id} is ready but I could not post it: {why} Use `/video retry {id}` to try again "
    "(you will be charged once), or `/video cancel {id}` (not charged). I keep the clip for 7 days."
)
REFUSED_UPLOAD = "The upload was refused (test)."
CRASHED = "Job {id} failed: reelbot tried 2 times and could not finish {doing}. You were not charged."


@dataclass(frozen=True)
class Expect:
    final: JobState
    posted: bool
    reply: str | None = None  # what the event's caller answered (cancel, revoke)
    notices: tuple[str, ...] = ()  # what the requester was told in the job's thread after the event


def _cancel_expect(state: JobState) -> Expect:
    if state is S.DELIVERED:
        return Expect(S.DELIVERED, True, reply=POSTED)
    return Expect(S.CANCELLED, False, reply=CANCELLED)


def _revoke_expect(state: JobState) -> Expect:
    if state is S.DELIVERED:
        return Expect(S.DELIVERED, True, reply=POSTED)
    return Expect(S.REFUSED, False, reply=REVOKED)


ALL_STATES = [S.RECEIVED, S.PENDING_CONSENT, S.QUEUED, S.SUBMITTING, S.RENDERING, S.DOWNLOADING, S.DELIVERING]
ALL_STATES += [S.UNDELIVERED, S.DELIVERED]

CASES: dict[tuple[str, JobState], Expect] = {}
for _state in ALL_STATES:
    CASES[("cancel", _state)] = _cancel_expect(_state)
    CASES[("revoke", _state)] = _revoke_expect(_state)
for _state in (S.QUEUED, S.SUBMITTING, S.RENDERING, S.DOWNLOADING, S.UNDELIVERED):
    # Checked again before submit, before download and before posting: the next check refuses it.
    CASES[("narrowed", _state)] = Expect(S.REFUSED, False, notices=(NARROWED,))
# Narrowed while the upload is under way: the last check had passed; the clip is posted (and paid).
CASES[("narrowed", S.DELIVERING)] = Expect(S.DELIVERED, True)
for _state in (S.SUBMITTING, S.RENDERING, S.DOWNLOADING):
    CASES[("provider_failure", _state)] = Expect(S.FAILED, False, notices=(FAILED,))
CASES[("delivery_failure", S.DELIVERING)] = Expect(
    S.UNDELIVERED, False, notices=(UNDELIVERED.replace("{why}", REFUSED_UPLOAD),)
)
CASES[("crash", S.SUBMITTING)] = Expect(S.FAILED, False, notices=(CRASHED.replace("{doing}", "starting the render"),))
CASES[("crash", S.DOWNLOADING)] = Expect(S.FAILED, False, notices=(CRASHED.replace("{doing}", "downloading the clip"),))
CASES[("crash", S.DELIVERING)] = Expect(
    S.UNDELIVERED, False, notices=(UNDELIVERED.replace("{why}", "Posting the clip failed 2 times."),)
)

EVENTS = {
    "cancel": cancel,
    "revoke": revoke,
    "narrowed": narrow,
    "provider_failure": provider_failure,
    "crash": crash,
}


@pytest.mark.parametrize(("event", "state"), list(CASES), ids=[f"{e}-{s.value}" for e, s in CASES])
async def test_state_by_event(harness: Harness, event: str, state: JobState) -> None:
    h = harness
    expect = CASES[(event, state)]
    key = f"k-{event}-{state.value}"
    job = await reach(h, state, key)
    notices_before = len(h.delivery.notices)
    reply: Reply | None = None
    if event == "delivery_failure":
        h.delivery.refuse_uploads = 1
    else:
        result = await EVENTS[event](h, job)
        reply = result if isinstance(result, Reply) else None
    done = await settle(h, job.id)

    assert done.state is expect.final, (done.state, done.error)
    # The ledger: one reserve, at most one close, and what closed it matches the state.
    ledger = await h.store.ledger_for(job.id)
    reserved = sum(a for k, a in ledger if k == "reserve")
    closes = [(k, a) for k, a in ledger if k != "reserve"]
    assert len(closes) <= 1 and len([k for k, _ in ledger if k == "reserve"]) <= 1
    if done.state is S.DELIVERED:
        assert closes == [("settle", COST)] and reserved == COST
    elif done.state is S.UNDELIVERED:
        assert closes == [] and reserved == COST  # kept reserved until retried, cancelled or expired
    elif reserved:
        assert closes == [("release", COST)]
    else:
        assert closes == []  # never admitted: nothing reserved, nothing to release
    totals = await h.store.ledger_totals()
    open_reserve = COST if done.state is S.UNDELIVERED else 0
    assert totals.reserved == totals.settled + totals.released + open_reserve
    # Posted or not, as the state says; nothing left behind at the provider for a stopped job.
    assert (job.id in h.delivery.clips) is expect.posted
    if not expect.posted and done.state is not S.UNDELIVERED:
        assert not (done.clip_path and Path(done.clip_path).exists())
    # The words: the reply of the event's caller, then what the thread was told afterwards.
    if expect.reply is not None:
        assert reply is not None and reply.text == expect.reply.format(id=job.id)
    assert tuple(h.delivery.notices[notices_before:]) == tuple(n.format(id=job.id) for n in expect.notices)
    # The card ends showing the final state.
    if done.card_ref is not None:
        assert h.delivery.cards and h.delivery.cards[-1] == (job.id, done.state.value)
    assert await h.store.check_ledger() == []


# --- further promises ---------------------------------------------------------------------------------------------


async def test_a_crash_loop_in_delivery_is_bounded_and_logged_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    h.delivery.crash_uploads = True
    with caplog.at_level(logging.INFO, logger="bot.worker"):
        reply = await h.app.bot.handle(ask("a clip that cannot be posted --seconds 4", "k-loop"))
        done = await settle(h, reply.job.id)
    assert done.state is S.UNDELIVERED
    assert h.delivery.upload_calls == 2  # REELBOT_MAX_ATTEMPTS, not thousands
    giving_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert len(giving_up) == 1 and giving_up[0].levelno == logging.ERROR
    # Cancel works on the undelivered job and releases it.
    cancelled = await h.app.bot.cancel(ALICE, done.id)
    assert cancelled.text == CANCELLED.format(id=done.id)
    assert await h.store.ledger_for(done.id) == [("reserve", COST), ("release", COST)]


async def test_undelivered_expires_failed_and_released_with_a_note(harness: Harness) -> None:
    h = harness
    h.delivery.refuse_uploads = 1
    reply = await h.app.bot.handle(ask("a clip nobody can post --seconds 4", "k-ttl"))
    stuck = await settle(h, reply.job.id)
    assert stuck.state is S.UNDELIVERED
    h.app.worker.undelivered_ttl_s = 0.01
    await until("the expiry", lambda: _is(h, stuck.id, S.FAILED))
    done = await h.store.get_job(stuck.id)
    assert "could not be posted within" in done.error
    assert h.delivery.notices[-1] == (
        f"Job {stuck.id} expired: The clip could not be posted within 1 minutes, so it was dropped. "
        "Nothing was charged."
    )
    assert await h.store.ledger_for(stuck.id) == [("reserve", COST), ("release", COST)]
    assert not Path(stuck.clip_path).exists()


async def _is(h: Harness, job_id: str, state: JobState) -> bool:
    return await state_of(h, job_id) is state


async def test_a_card_that_cannot_be_posted_is_cancelled_before_the_person_is_told(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness

    async def broken_card(job: Job, card: CardView) -> str:
        raise KeyError("a platform library's surprise (test)")

    monkeypatch.setattr(h.delivery, "post_card", broken_card)
    reply = await h.app.bot.handle(ask("a clip whose card breaks --seconds 4", "k-card"))
    assert not reply.ok
    assert reply.text == f"I could not post the job card. Job {reply.job.id} was cancelled; nothing was charged."
    await h.app.worker.run_until_idle(timeout=30)
    job = await h.store.get_job(reply.job.id)
    assert job.state is S.CANCELLED and h.renderer.gates["create"].entered.is_set() is False
    assert await h.store.ledger_for(job.id) == [("reserve", COST), ("release", COST)]


async def test_press_is_the_one_entry_and_its_catch_all_promises_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    h.app.worker.max_in_flight = 0
    reply = await h.app.bot.handle(ask("a pressed clip --seconds 4", "k-press"))
    pressed = await h.app.bot.press(ALICE, "cancel", reply.job.id, "press-1")
    assert pressed.text == CANCELLED.format(id=reply.job.id)
    gone = await h.app.bot.press(ALICE, "nonsense", "x", "press-2")
    assert not gone.ok and gone.text == "That button is no longer available."

    async def broken(*_args, **_kwargs) -> Reply:
        raise RuntimeError("a bug (test)")

    monkeypatch.setattr(h.app.bot, "retry_delivery", broken)
    caught = await h.app.bot.press(ALICE, "retry", reply.job.id, "press-3")
    assert (
        not caught.ok and caught.text == CATCH_ALL == "Something went wrong; check `/video jobs` before trying again."
    )


async def test_abandoned_part_files_are_removed_at_start(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.clips_dir.mkdir(parents=True, exist_ok=True)
    left = settings.clips_dir / ".abcdefgh.mp4.0123456789ab.part"
    left.write_bytes(b"half a clip")
    kept = settings.clips_dir / "abcdefgh.mp4"
    kept.write_bytes(b"a finished clip")
    app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders"))
    try:
        app.bot.register(ConsoleDelivery(quiet=True))
        await app.worker.start()
        assert not left.exists() and kept.exists()
    finally:
        await app.close()


async def test_the_ledger_is_checked_at_start_and_differences_logged(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders"))
    app.bot.register(ConsoleDelivery(quiet=True))
    try:
        reply = await app.bot.handle(ask("a clip --seconds 4", "k-books"))
        assert reply.ok
        await app.store._db.execute("UPDATE budget_usage SET reserved_micros = 7")
        with caplog.at_level(logging.ERROR, logger="bot.store.money"):
            await app.worker.start()
        assert [m.what for m in app.worker.ledger_mismatches] == ["reserved"]
        assert any("ledger mismatch: console:w1:alice" in r.getMessage() for r in caplog.records)
    finally:
        await app.close()
