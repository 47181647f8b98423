"""Budget reservations per second through the real ``Store.admit`` (aim: > 1,000/s with 50 tasks).

``Store.admit`` is the money path of every clip request: one ``BEGIN IMMEDIATE`` transaction that
reads the limit and the period's usage, refuses or reserves, writes the ledger row and queues the
job. Each measured call admits its own job row, inserted (state ``received``) before the clock
starts, for one of 100 people, into a fresh SQLite file (WAL) in a temp dir.

Cases, measured side by side in one run and interleaved (run 1 of every case, then run 2...):

- **1 process, C concurrent tasks** for C in ``--concurrency`` (default 1, 10, 50): one ``Store``
  (one aiosqlite connection), C asyncio tasks calling ``admit`` as fast as they can;
- **2 processes x 50 tasks** on the same data dir: two child processes, each with its own
  ``Store`` on the same file, start together and admit disjoint halves of the jobs; the rate is
  all jobs / (last finish - first start). SQLite's write lock is shared between them.

After every run the ledger is checked: exactly one ``reserve`` per job, and the usage rows add up
to the reserved total. Figures are the median of ``--runs`` runs.

Run: ``python benchmarks/bench_reservations.py [--jobs 2000] [--runs 5] [--concurrency 1 10 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import save_results  # noqa: E402
from bot.jobs import Job, JobOptions, JobState  # noqa: E402
from bot.store import Store  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_reservations.json"
AIM_PER_S = 1000.0
AIM_CONCURRENCY = 50
COST = 400_000
PERIOD = "2026-11"
PEOPLE = 100


def tasks(count: int) -> str:
    return f"{count} task" if count == 1 else f"{count} tasks"


def job(index: int) -> Job:
    now = time.time()
    user = f"u{index % PEOPLE}"
    return Job(
        id=f"j{index:07d}",
        request_key=f"bench:{index}",
        platform="console",
        workspace_id="bench",
        user_id=user,
        user_name=f"@{user}",
        channel_id="terminal",
        thread_id=None,
        prompt=f"bench clip {index}",
        options=JobOptions("sora-2", "1280x720", 4),
        state=JobState.RECEIVED,
        cost_micros=COST,
        created_at=now,
        updated_at=now,
    )


async def prepare(db_path: Path, count: int) -> None:
    store = await Store.open(db_path)
    try:
        for index in range(count):
            await store.insert_job(job(index))
    finally:
        await store.close()


async def admit_all(store: Store, ids: list[str], concurrency: int) -> dict:
    """Admits every job in ``ids`` with ``concurrency`` tasks; returns wall-clock start/end (time.time)."""
    pending = iter(ids)
    refused = 0

    async def task() -> None:
        nonlocal refused
        for job_id in pending:  # a shared iterator: each id is taken once
            admission = await store.admit(
                job_id,
                period=PERIOD,
                default_subject="default:console:bench",
                fallback_limit=10**15,
                queued_state=JobState.QUEUED,
            )
            refused += not admission.admitted

    start = time.time()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    end = time.time()
    return {"start": start, "end": end, "admitted": len(ids) - refused, "refused": refused}


async def admit_in_this_process(db_path: Path, ids: list[str], concurrency: int) -> dict:
    store = await Store.open(db_path)
    try:
        return await admit_all(store, ids, concurrency)
    finally:
        await store.close()


def check_ledger(db_path: Path, count: int) -> None:
    with sqlite3.connect(db_path) as db:
        reserves = db.execute("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM ledger WHERE kind = 'reserve'").fetchone()
        reserved = db.execute("SELECT COALESCE(SUM(reserved_micros), 0) FROM budget_usage").fetchone()[0]
        queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    assert reserves == (count, count), f"ledger reserve rows {reserves}, expected {count}"
    assert reserved == count * COST, f"reserved {reserved}, expected {count * COST}"
    assert queued == count, f"{queued} queued jobs, expected {count}"


def one_process(count: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-reserve-") as tmp:
        db_path = Path(tmp) / "data" / "reelbot.db"
        asyncio.run(prepare(db_path, count))
        ids = [job(i).id for i in range(count)]
        timing = asyncio.run(admit_in_this_process(db_path, ids, concurrency))
        check_ledger(db_path, count)
    seconds = timing["end"] - timing["start"]
    return {"per_s": round(count / seconds, 1), "seconds": round(seconds, 3)}


def two_processes(count: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-reserve-") as tmp:
        db_path = Path(tmp) / "data" / "reelbot.db"
        asyncio.run(prepare(db_path, count))
        half = count // 2
        slices = [(0, half), (half, count)]
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", str(db_path), str(lo), str(hi), str(concurrency)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for lo, hi in slices
        ]
        try:
            for child in children:  # each says "ready" once its store is open
                assert child.stdout is not None
                assert json.loads(child.stdout.readline())["ready"]
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            results = []
            for child in children:
                assert child.stdout is not None
                results.append(json.loads(child.stdout.readline()))
        finally:
            for child in children:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
        check_ledger(db_path, count)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"per_s": round(count / seconds, 1), "seconds": round(seconds, 3)}


async def child_main(db_path: Path, lo: int, hi: int, concurrency: int) -> None:
    """One of the two processes: opens its own Store, says ready, waits for "go", admits its half."""
    store = await Store.open(db_path)
    try:
        ids = [job(i).id for i in range(lo, hi)]
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        await asyncio.to_thread(sys.stdin.readline)
        result = await admit_all(store, ids, concurrency)
    finally:
        await store.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs admitted per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        db, lo, hi, concurrency = args.child
        asyncio.run(child_main(Path(db), int(lo), int(hi), int(concurrency)))
        return

    started = time.perf_counter()
    cases: list[tuple[str, int, int]] = [(f"1 process, {tasks(c)}", 1, c) for c in args.concurrency]
    cases.append((f"2 processes, {AIM_CONCURRENCY} tasks each, one data dir", 2, AIM_CONCURRENCY))
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
    for index in range(args.runs):
        for name, processes, concurrency in cases:
            if processes == 1:
                result = one_process(args.jobs, concurrency)
            else:
                result = two_processes(args.jobs, concurrency)
            samples[name].append(result)
            print(f"run {index + 1}/{args.runs} {name}: {result['per_s']}/s", flush=True)

    rows = []
    for name, processes, concurrency in cases:
        rates = [r["per_s"] for r in samples[name]]
        rows.append(
            {
                "case": name,
                "processes": processes,
                "concurrency": concurrency,
                "jobs": args.jobs,
                "runs": len(rates),
                "per_s_median": round(statistics.median(rates), 1),
                "per_s_min": min(rates),
                "per_s_max": max(rates),
                "ms_per_admit_median": round(1000 / statistics.median(rates), 3),
            }
        )
    print("\n| case | reservations/s (median) | min | max | ms per reservation |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['per_s_median']} | {row['per_s_min']} | {row['per_s_max']} "
            f"| {row['ms_per_admit_median']} |"
        )
    summary = [
        {
            "metric": f"reservations/s, {row['case']} (Store.admit, median of {row['runs']})",
            "figure": f"{row['per_s_median']:,.0f}/s (runs {row['per_s_min']:,.0f}-{row['per_s_max']:,.0f})",
            "aim": f"> {AIM_PER_S:,.0f}/s",
            "met": row["per_s_median"] > AIM_PER_S,
        }
        for row in rows
        if row["concurrency"] == AIM_CONCURRENCY
    ]
    if not args.no_save:
        save_results(RESULTS, started=started, summary=summary, rows=rows, samples=samples)


if __name__ == "__main__":
    main()
