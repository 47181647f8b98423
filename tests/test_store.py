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
from bot.store import Store, StoreError, new_job_id
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
    done = await store.finish_job(job.id, JobState.DELIVERED, delivered_ref="m1")
    assert done is not None and done.state is JobState.DELIVERED
    await store.finish_job(job.id, JobState.DELIVERED)
    await store.finish_job(job.id, JobState.FAILED)  # a final job stays as it is
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


async def test_update_with_expected_state_refuses_a_stale_transition(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    with pytest.raises(StoreError):
        await store.update_job(job.id, state=JobState.RENDERING, expect=[JobState.SUBMITTING])
    updated = await store.update_job(
        job.id, state=JobState.RENDERING, provider_video_id="v1", expect=[JobState.RECEIVED]
    )
    assert updated.provider_video_id == "v1"


async def test_leases_keep_two_workers_apart(store: Store) -> None:
    job, _ = await store.insert_job(make_job())
    assert await store.claim_job(job.id, "w1", 60)
    assert not await store.claim_job(job.id, "w2", 60)
    await store.release_lease(job.id, "w1")
    assert await store.claim_job(job.id, "w2", 60)


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
        rendering = await store.update_job(job.id, state=JobState.RENDERING, render_started_at=123.0)
        assert rendering.render_started_at == 123.0
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
