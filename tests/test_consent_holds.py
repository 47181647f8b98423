"""Holding a job for consent: one transaction, collision-safe ids, and every hold ends (issue 11)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

import bot.consent.requests as consent_requests
from bot.app import App
from bot.config import Settings
from bot.jobs import JobState
from tests.test_consent import register, say, start

pytestmark = pytest.mark.timeout(120)

ORPHANED_HOLDS = (
    "SELECT j.id FROM jobs j WHERE j.state = 'pending_consent' AND NOT EXISTS "
    "(SELECT 1 FROM consent_requests c WHERE c.job_id = j.id AND c.status = 'pending')"
)


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    application = await start(make_settings(REELBOT_ADMIN_IDS="root"))
    await register(application, "alice")
    assert (await say(application, "alice", "cameo audience approved")).ok
    yield application
    await application.close()


async def orphaned(app: App) -> list[str]:
    return [r[0] for r in await app.store._read_all(ORPHANED_HOLDS)]


async def test_a_hold_without_its_request_cannot_happen(app: App) -> None:
    replies = await asyncio.gather(*(say(app, f"user{i}", f"clip {i} --cameo @alice") for i in range(12)))
    assert all(r.ok and r.job.state is JobState.PENDING_CONSENT for r in replies)
    assert await orphaned(app) == []
    assert len(await app.bot.cameos.store.pending("console:w1:alice")) == 12
    status = await say(app, "alice", "cameo status")  # bounded, however many wait
    assert "12 requests wait for you; the oldest 5:" in status.text and len(status.actions) == 15

    # The request row cannot be written: the move to pending_consent is rolled back with it.
    await app.store._db.execute(
        "CREATE TRIGGER no_requests BEFORE INSERT ON consent_requests BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(Exception, match="disk full"):
        await say(app, "bob", "one more --cameo @alice")
    (job,) = [j for j in await app.store.jobs_for_user("console", "w1", "bob") if j.prompt == "one more"]
    assert job.state is JobState.RECEIVED  # never pending without a request
    assert await orphaned(app) == []
    assert await app.store.ledger_for(job.id) == []


async def test_a_request_id_collision_is_retried_with_a_fresh_id(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    first = await say(app, "bob", "first --cameo @alice")
    (taken,) = await app.bot.cameos.store.pending("console:w1:alice")
    ids = itertools.chain([taken.id, taken.id], iter(consent_requests.new_request_id, None))
    monkeypatch.setattr(consent_requests, "new_request_id", lambda: next(ids))
    second = await say(app, "carol", "second --cameo @alice")
    assert second.ok and second.job.state is JobState.PENDING_CONSENT
    requests = {r.job_id: r for r in await app.bot.cameos.store.pending("console:w1:alice")}
    assert requests[first.job.id].id == taken.id
    assert requests[second.job.id].id != taken.id and len(requests[second.job.id].id) == 16
    assert await orphaned(app) == []


async def wait_until(predicate: Callable[[], object], *, within: float) -> None:
    deadline = time.monotonic() + within
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_every_hold_ends(make_settings: Callable[..., Settings]) -> None:
    app = await start(make_settings(REELBOT_CONSENT_TIMEOUT_S=1.0, REELBOT_ADMIN_IDS="root"))
    try:
        await register(app, "alice")
        await say(app, "alice", "cameo audience approved")
        store = app.bot.cameos.store
        unanswered = (await say(app, "bob", "unanswered --cameo @alice")).job
        withdrawn = (await say(app, "carol", "withdrawn --cameo @alice")).job
        approved = (await say(app, "dave", "approved --cameo @alice")).job
        # What a crash or an older version can leave: a request no longer pending while the job
        # still waits, and an approval whose admission never ran.
        await store.decide((await store.request_for_job(withdrawn.id)).id, "withdrawn", actor_key="test")
        await store.decide((await store.request_for_job(approved.id)).id, "approved", actor_key="console:w1:alice")

        async def settled() -> bool:
            states = [(await app.store.get_job(j.id)).state for j in (unanswered, withdrawn, approved)]
            return JobState.PENDING_CONSENT not in states

        await wait_until(settled, within=20)
        for job in (unanswered, withdrawn):
            ended = await app.store.get_job(job.id)
            assert ended.state is JobState.REFUSED and "did not answer in time" in ended.error
            assert await app.store.ledger_for(job.id) == []
        done = await app.worker.wait_for(approved.id, timeout=60)
        assert done.state is JobState.DELIVERED
        posts = app.bot.deliveries["console"].posts
        assert sum("expired: the cameo owner did not answer in time. Nothing was charged." in p for p in posts) == 2
    finally:
        await app.close()


async def test_a_job_a_crash_left_before_its_hold_is_held_not_admitted(app: App) -> None:
    """``Cameos.resume`` is what the worker's recovery of ``received`` jobs calls for cameo clips."""
    await app.store._db.execute(
        "CREATE TRIGGER no_requests BEFORE INSERT ON consent_requests BEGIN SELECT RAISE(ABORT, 'crash'); END"
    )
    for user in ("bob", "carol"):
        with pytest.raises(Exception, match="crash"):
            await say(app, user, f"{user} dancing --cameo @alice")
    await app.store._db.execute("DROP TRIGGER no_requests")
    (bob,) = await app.store.jobs_for_user("console", "w1", "bob")
    (carol,) = await app.store.jobs_for_user("console", "w1", "carol")
    assert bob.state is carol.state is JobState.RECEIVED

    held = await app.bot.cameos.resume(bob)
    assert held.ok and held.job.state is JobState.PENDING_CONSENT
    assert (await app.bot.cameos.store.request_for_job(bob.id)).status == "pending"
    assert any(
        "(direct message to @alice) @bob asks to use your cameo" in p for p in app.bot.deliveries["console"].posts
    )

    assert (await say(app, "alice", "cameo audience only-me")).ok  # carol may no longer use it at all
    refused = await app.bot.cameos.resume(carol)
    assert not refused.ok and "Only @alice can use their cameo" in refused.text
    assert (await app.store.get_job(carol.id)).state is JobState.REFUSED
    assert await app.store.ledger_for(carol.id) == []
    assert await orphaned(app) == []
