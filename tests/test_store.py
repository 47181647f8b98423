"""The store: migrations, idempotent jobs, exact budgets under concurrency, a balanced ledger."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bot.jobs import Job, JobOptions, JobState
from bot.store import IllegalTransition, NoSuchJob, StopRequested, Store, StoreError, new_job_id
from bot.store.schema import MIGRATIONS, statements


def make_job(user: str = "alice", key: str | None = None, cost: int = 400_000) -> Job:
    now = time.time()
    return Job(
        id=new_job_id(),
        request_key=key or new_job_id(),
        platform="console",
        workspace_id="w",
        user_id=user,
        user_name=f"@{user}",
        channel_id="c",
        thread_id=None,
        prompt="a cat",
        options=JobOptions("sora-2", "1280x720", 4),
        state=JobState.RECEIVED,
        cost_micros=cost,
        created_at=now,
        updated_at=now,
    )


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "data" / "reelbot.db")
    yield s
    await s.close()


async def admit(store: Store, job: Job, limit: int = 10_000_000):
    return await store.admit(
        job.id,
        period="2026-11",
        default_subject="default:console:w",
        fallback_limit=limit,
        queued_state=JobState.QUEUED,
    )


# The worker's road from queued to the clip being posted, one legal move at a time.
_ROAD = (JobState.SUBMITTING, JobState.RENDERING, JobState.DOWNLOADING, JobState.DELIVERING)


async def walk(store: Store, job_id: str, *states: JobState) -> Job:
    """Moves the job through ``states`` by ``Store.transition`` (each move checked by the table)."""
    job = await store.get_job(job_id)
    for state in states:
        job = await store.transition(job_id, state)
    assert job is not None
    return job


async def test_files_are_owner_only_and_migrations_are_versioned(tmp_path: Path) -> None:
    path = tmp_path / "data" / "reelbot.db"
    s = await Store.open(path)
    await s.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    again = await Store.open(path)  # re-opening applies nothing twice
    try:
        row = await again._read_one("PRAGMA user_version")
        assert row[0] == again.schema_version
        row = await again._read_one("PRAGMA journal_mode")
        assert row[0] == "wal"
    finally:
        await again.close()


async def test_same_request_key_makes_one_job(store: Store) -> None:
    first, created = await store.insert_job(make_job(key="slack:evt1"))
    second, created_again = await store.insert_job(make_job(key="slack:evt1"))
    assert created and not created_again
    assert second.id == first.id


async def test_admission_reserves_and_delivery_settles_once(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    admission = await admit(store, job)
    assert admission.admitted and admission.usage.reserved_micros == 400_000
    again = await admit(store, job)  # idempotent
    assert again.admitted and again.usage.reserved_micros == 400_000
    await walk(store, job.id, *_ROAD)
    done = await store.finish_job(job.id, JobState.DELIVERED, delivered_ref="m1")
    assert done is not None and done.state is JobState.DELIVERED
    assert (await store.finish_job(job.id, JobState.DELIVERED)).state is JobState.DELIVERED  # repeating is harmless
    assert await store.finish_job(job.id, JobState.FAILED) is None  # a final job stays as it is
    # ...and a finish expecting a waiting state does not pass off the delivered job as finished.
    assert await store.finish_job(job.id, JobState.CANCELLED, expect=[JobState.QUEUED]) is None
    assert await store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    usage = await store.usage("console:w:alice", "2026-11", default_subject="x", fallback_limit=10_000_000)
    assert (usage.spent_micros, usage.reserved_micros, usage.remaining_micros) == (400_000, 0, 9_600_000)


async def test_failed_job_releases_and_is_not_billed(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    await store.finish_job(job.id, JobState.FAILED, error="boom")
    assert await store.ledger_for(job.id) == [("reserve", 400_000), ("release", 400_000)]
    usage = await store.usage("console:w:alice", "2026-11", default_subject="x", fallback_limit=10_000_000)
    assert usage.spent_micros == 0 and usage.reserved_micros == 0


async def test_refusal_reserves_nothing(store: Store) -> None:
    job, _ = await store.insert_job(make_job(cost=2_000_000))
    admission = await admit(store, job, limit=1_000_000)
    assert not admission.admitted
    assert (await store.get_job(job.id)).state is JobState.REFUSED
    assert await store.ledger_for(job.id) == []


async def test_fifty_concurrent_requests_with_budget_for_seven_admit_exactly_seven(store: Store) -> None:
    jobs = [(await store.insert_job(make_job(cost=400_000)))[0] for _ in range(50)]
    results = await asyncio.gather(*(admit(store, job, limit=7 * 400_000 + 399_999) for job in jobs))
    assert sum(r.admitted for r in results) == 7
    totals = await store.ledger_totals()
    assert totals.reserved == 7 * 400_000
    usage = await store.usage("console:w:alice", "2026-11", default_subject="x", fallback_limit=0)
    assert usage.reserved_micros == 7 * 400_000


async def test_concurrent_admission_across_two_connections(tmp_path: Path) -> None:
    """Two processes share one data dir: BEGIN IMMEDIATE still admits exactly what fits."""
    path = tmp_path / "reelbot.db"
    a, b = await Store.open(path), await Store.open(path)
    try:
        jobs = [(await a.insert_job(make_job()))[0] for _ in range(20)]
        results = await asyncio.gather(
            *(admit(a if i % 2 else b, job, limit=5 * 400_000) for i, job in enumerate(jobs))
        )
        assert sum(r.admitted for r in results) == 5
    finally:
        await a.close()
        await b.close()


async def test_warning_once_per_period_at_80_percent(store: Store) -> None:
    warns = []
    for _ in range(5):
        job, _ = await store.insert_job(make_job(cost=200_000))
        warns.append((await admit(store, job, limit=1_000_000)).warn)
    assert warns == [False, False, False, True, False]


async def test_limits_per_user_and_default_override(store: Store) -> None:
    await store.set_limit("default:console:w", 1_000_000, set_by="admin")
    usage = await store.usage("console:w:alice", "p", default_subject="default:console:w", fallback_limit=5)
    assert usage.limit_micros == 1_000_000
    await store.set_limit("console:w:alice", 3_000_000, set_by="admin")
    usage = await store.usage("console:w:alice", "p", default_subject="default:console:w", fallback_limit=5)
    assert usage.limit_micros == 3_000_000


async def test_a_transition_checks_expect_and_the_table_and_update_job_never_writes_state(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    with pytest.raises(IllegalTransition) as stale:
        await store.transition(job.id, JobState.RENDERING, expect=[JobState.SUBMITTING])
    assert stale.value.job.state is JobState.QUEUED
    with pytest.raises(IllegalTransition):
        await store.transition(job.id, JobState.RENDERING)  # queued -> rendering skips a step
    with pytest.raises(ValueError, match="transition"):
        await store.update_job(job.id, state=JobState.SUBMITTING)
    with pytest.raises(NoSuchJob):
        await store.transition("nosuchjob", JobState.FAILED)
    moved = await store.transition(job.id, JobState.SUBMITTING, expect=[JobState.QUEUED], started_at=5.0)
    assert moved.state is JobState.SUBMITTING and moved.started_at == 5.0
    updated = await store.update_job(job.id, provider_video_id="v1", expect=[JobState.SUBMITTING])
    assert updated.provider_video_id == "v1" and updated.state is JobState.SUBMITTING


async def test_also_runs_in_the_transition_and_undoes_it_when_it_raises(store: Store) -> None:
    job, _ = await store.insert_job(make_job())

    def broken(conn: sqlite3.Connection, moved: Job) -> None:
        assert moved.state is JobState.PENDING_CONSENT
        conn.execute("INSERT INTO audit (at, actor, action, subject) VALUES (1, 'x', 'held', ?)", (moved.id,))
        raise RuntimeError("the consent request could not be written")

    with pytest.raises(RuntimeError):
        await store.transition(job.id, JobState.PENDING_CONSENT, also=broken)
    assert (await store.get_job(job.id)).state is JobState.RECEIVED
    assert await store._read_all("SELECT * FROM audit") == []
    seen: list[str] = []
    held = await store.transition(job.id, JobState.PENDING_CONSENT, also=lambda conn, moved: seen.append(moved.id))
    assert held.state is JobState.PENDING_CONSENT and seen == [job.id]


async def test_a_stopped_job_can_only_end_and_the_end_releases(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    await walk(store, job.id, *_ROAD)
    with pytest.raises(ValueError):
        await store.request_stop(job.id, JobState.DELIVERED, "no")
    stopping = await store.request_stop(job.id, JobState.REFUSED, "the cameo was revoked")
    again = await store.request_stop(job.id, JobState.CANCELLED, "cancelled by @alice")
    assert stopping.cancel_requested and again.stop_to is JobState.REFUSED  # the first stop decides
    with pytest.raises(StopRequested):
        await store.transition(job.id, JobState.DELIVERED, delivered_ref="m1")
    with pytest.raises(StopRequested):
        await store.transition(job.id, JobState.UNDELIVERED)
    ended = await store.transition(job.id, JobState.REFUSED, error="the cameo was revoked")
    assert ended.state is JobState.REFUSED and ended.delivered_ref is None
    assert await store.ledger_for(job.id) == [("reserve", 400_000), ("release", 400_000)]
    with pytest.raises(IllegalTransition) as late:
        await store.request_stop(job.id, JobState.CANCELLED, "too late")
    assert late.value.job.state is JobState.REFUSED


async def test_ledger_and_audit_are_append_only(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    await store.audit("admin", "budget_set", "x", "1")
    for sql in (
        "UPDATE ledger SET amount_micros = 0",
        "DELETE FROM ledger",
        "UPDATE audit SET detail = 'changed'",
        "DELETE FROM audit",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            await store._db.execute(sql)
    assert await store.ledger_for(job.id) == [("reserve", 400_000)]


async def test_the_ledger_check_reports_each_difference_once(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    for user in ("alice", "bob"):
        job, _ = await store.insert_job(make_job(user=user))
        await admit(store, job)
    assert await store.check_ledger() == []
    await store._db.execute("UPDATE budget_usage SET reserved_micros = 1 WHERE user_key = 'console:w:bob'")
    # A job that ended while its reservation stayed open (as a crash in older versions could leave it).
    await store._db.execute("UPDATE jobs SET state = 'failed' WHERE user_id = 'alice'")
    with caplog.at_level("ERROR", logger="bot.store.money"):
        found = await store.check_ledger()
    lines = sorted(m.line() for m in found)
    assert len(lines) == 2
    assert lines[0].endswith("console:w:bob in 2026-11: reserved is 1 micro-USD but the ledger says 400000")
    assert "has ended but its reservation of 400000 micro-USD was never settled or released" in lines[1]
    assert sorted(r.getMessage() for r in caplog.records if r.levelname == "ERROR") == lines


async def test_an_id_collision_retries_with_a_fresh_id(store: Store) -> None:
    first, _ = await store.insert_job(make_job(key="k1"))
    colliding = make_job(key="k2")
    colliding.id = first.id
    second, created = await store.insert_job(colliding)
    assert created and second.id != first.id and second.request_key == "k2"


async def test_leases_keep_two_workers_apart(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    assert await store.claim_job(job.id, "w1", 60)
    assert not await store.claim_job(job.id, "w2", 60)
    await store.release_lease(job.id, "w1")
    assert await store.claim_job(job.id, "w2", 60)


async def test_a_claim_counts_attempts_per_step_and_backoff_holds_it(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    started = await store.claim(job.id, "w1", 60, max_in_flight=4, max_per_user=2)
    assert started.state is JobState.SUBMITTING and started.attempts == 1
    assert (await store.claim(job.id, "w1", 60)).attempts == 2  # the same step again (a crash)
    assert await store.claim(job.id, "w2", 60) is None  # w1's lease is live
    await store.delay_step(job.id, "w1", time.time() + 3600)
    assert await store.claim(job.id, "w2", 60) is None  # backing off
    await store._db.execute("UPDATE jobs SET not_before = NULL WHERE id = ?", (job.id,))
    assert (await store.claim(job.id, "w2", 60)).attempts == 3  # attempts survive a change of owner
    await store.transition(job.id, JobState.RENDERING)
    assert (await store.claim(job.id, "w2", 60)).attempts == 1  # a new step counts afresh


async def test_the_caps_are_counted_inside_the_claim_across_connections(tmp_path: Path) -> None:
    """Two processes share one data dir: however the claims interleave, the caps hold."""
    path = tmp_path / "reelbot.db"
    a, b = await Store.open(path), await Store.open(path)
    try:
        jobs = []
        for index in range(12):
            job, _ = await a.insert_job(make_job(user=f"u{index % 3}"))
            await admit(a, job)
            jobs.append(job)
        claims = await asyncio.gather(
            *(
                (a if i % 2 else b).claim(job.id, f"w{i % 2}", 60, max_in_flight=5, max_per_user=2)
                for i, job in enumerate(jobs)
            )
        )
        started = [c for c in claims if c is not None]
        assert len(started) == 5
        per_user: dict[str, int] = {}
        for job in started:
            per_user[job.user_id] = per_user.get(job.user_id, 0) + 1
        assert max(per_user.values()) <= 2
        assert await a.count_active() == 5
    finally:
        await a.close()
        await b.close()


async def test_first_sighting_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "reelbot.db"
    s = await Store.open(path)
    assert await s.first_sighting("slack:event:Ev1")
    assert not await s.first_sighting("slack:event:Ev1")
    await s.close()
    s = await Store.open(path)
    try:
        assert not await s.first_sighting("slack:event:Ev1")
    finally:
        await s.close()


async def test_budget_usage_always_equals_the_ledger(tmp_path):
    """The ledger_moves_usage trigger keeps budget_usage the sum of the ledger, whatever mix of moves."""
    store = await Store.open(tmp_path / "reelbot.db")
    try:
        outcomes = [JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED, None]
        for index in range(12):
            job = make_job(user="u1" if index % 3 else "u2", cost=100_000 + index)
            await store.insert_job(job)
            await store.admit(
                job.id,
                period="2026-11",
                default_subject="default:x",
                fallback_limit=10**9,
                queued_state=JobState.QUEUED,
            )
            outcome = outcomes[index % len(outcomes)]
            if outcome is JobState.DELIVERED:
                await walk(store, job.id, *_ROAD)
            if outcome is not None:
                await store.finish_job(job.id, outcome)
        ledger = await store._read_all(
            "SELECT user_key, "
            "SUM(CASE kind WHEN 'reserve' THEN amount_micros ELSE -amount_micros END), "
            "SUM(CASE kind WHEN 'settle' THEN amount_micros ELSE 0 END) FROM ledger GROUP BY user_key ORDER BY user_key"
        )
        usage = await store._read_all(
            "SELECT user_key, reserved_micros, spent_micros FROM budget_usage "
            "WHERE period = '2026-11' ORDER BY user_key"
        )
        assert [tuple(r) for r in ledger] == [tuple(r) for r in usage]
        assert all(r[1] > 0 and r[2] > 0 for r in usage)
    finally:
        await store.close()


async def test_a_version_2_database_is_migrated_to_the_usage_trigger_and_render_start(tmp_path):
    path = tmp_path / "reelbot.db"
    with sqlite3.connect(path) as conn:  # a database exactly as version 2 left it
        for script in MIGRATIONS[:2]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
    store = await Store.open(path)
    try:
        assert (await store._read_one("PRAGMA user_version"))[0] == store.schema_version == len(MIGRATIONS)
        job = make_job(user="u1", cost=400_000)
        await store.insert_job(job)
        await store.admit(
            job.id, period="2026-11", default_subject="default:x", fallback_limit=10**9, queued_state=JobState.QUEUED
        )
        await store.transition(job.id, JobState.SUBMITTING)
        rendering = await store.transition(job.id, JobState.RENDERING, render_started_at=123.0)
        assert rendering.render_started_at == 123.0
        await walk(store, job.id, JobState.DOWNLOADING, JobState.DELIVERING)
        await store.finish_job(job.id, JobState.DELIVERED)
        usage = await store.usage("console:w:u1", "2026-11", default_subject="default:x", fallback_limit=10**9)
        assert (usage.spent_micros, usage.reserved_micros) == (400_000, 0)
    finally:
        await store.close()


async def test_a_database_from_a_newer_reelbot_is_refused_with_one_line(tmp_path):
    path = tmp_path / "reelbot.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this reelbot knows"):
        await Store.open(path)


async def test_a_stop_does_not_wait_out_a_crash_backoff(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    await admit(store, job)
    await store.claim(job.id, "w1", 60, max_in_flight=4, max_per_user=2)
    await store.delay_step(job.id, "w1", time.time() + 3600)
    assert await store.claim(job.id, "w2", 60) is None
    assert [j.id for j in await store.schedulable_jobs(["console"])] == []
    await store.request_stop(job.id, JobState.CANCELLED, "cancelled by @alice")
    assert [j.id for j in await store.schedulable_jobs(["console"])] == [job.id]
    claimed = await store.claim(job.id, "w2", 60)
    assert claimed is not None and claimed.cancel_requested and claimed.stop_to is JobState.CANCELLED
