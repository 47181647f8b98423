"""N jobs in flight in one bot process: peak memory, CPU while waiting, provider calls per job.

The bot is the real one, in its own process: ``build_app`` from settings (SQLite store in a temp
dir, ``OpenAIVideosProvider``, the worker with ``REELBOT_MAX_JOBS_IN_FLIGHT=N`` and
``REELBOT_MAX_JOBS_PER_USER=N``) with the terminal adapter's ``ConsoleDelivery`` (quiet). The
``/v1/videos`` service is ``FakeVideosServer`` on the real clock in another process
(``tests.helpers_processes.FakeVideosProcess``), with renders that take an hour, so every job
stays in ``rendering`` while it is measured.

For each N (default 10, 100, 1000) and each run, a fresh bot process:

1. builds the app, starts the worker, sends one warm-up clip through the protocol and cancels
   it, and reads its RSS (the **baseline**: imports, SQLite, httpx, the worker, all warm);
2. sends N clip requests through ``ReelBot.handle`` (as N chat messages from 50 people) and
   waits until all N are ``rendering`` (the time this takes is reported as ``ramp_s``);
3. waits ``--settle`` seconds so the poll schedule reaches its steady state (with no progress
   reported the interval grows 1.5x per poll up to 10 s);
4. measures over ``--window`` seconds of waiting: process CPU time (all threads, including
   aiosqlite's) / wall time, as % of one core, and status calls seen by the fake server (single
   ``retrieve`` calls plus list pages fetched by sweeps) per job per minute;
5. reports VmHWM (the process's peak RSS since it started) and the growth over the baseline.

Aims (the issue): 1,000 in flight under 200 MB peak RSS and under 10% of one core while waiting.
Figures are the median of ``--runs`` runs per N.

Run: ``python benchmarks/bench_jobs_in_flight.py [--n 10 100 1000] [--runs 3] [--window 20] [--settle 25]``
Profile one case: ``python benchmarks/bench_jobs_in_flight.py --n 1000 --runs 1 --profile`` (cProfile of the
window, written to ``results/profile_jobs_in_flight_*.prof``).
What-if: ``python benchmarks/bench_jobs_in_flight.py --n 1000 --what-if no-sweep`` measures the bot as it is
beside the same bot with render sweeps disabled (``no-sweep``: the worker's ``RenderWatcher`` never
lists renders in pages and polls every render one by one with ``retrieve``, as before sweeps
existed; see ``apply_what_if``), interleaved run by run, to show what the sweeps save; saved to
``results/bench_jobs_in_flight_what_if.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from tests.helpers_processes import FakeVideosProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_jobs_in_flight.json"
WHAT_IF_RESULTS = ROOT / "benchmarks" / "results" / "bench_jobs_in_flight_what_if.json"
AS_IS = "as-is"
WHAT_IF_VARIANTS = ("no-sweep",)
AIM_RSS_MB = 200.0
AIM_CPU_PCT = 10.0
AIM_N = 1000
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
USERS = 50


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# --- the measured process --------------------------------------------------------------------------


def apply_what_if(app: Any, what_if: str) -> None:
    """A variant of the bot, set up in this process before the worker starts.

    ``no-sweep``: the worker's ``RenderWatcher`` never sweeps (lists the renders in pages); it polls
    every render one by one with ``retrieve``, as the bot did before sweeps existed.
    """
    if what_if == "no-sweep":
        app.worker.renders._batch_min_due = 10**9  # never this many renders due at once
    else:
        raise ValueError(f"unknown what-if {what_if!r} (known: {', '.join(WHAT_IF_VARIANTS)})")


async def measure(
    n: int, base_url: str, api_key: str, settle: float, window: float, profile: str | None, what_if: str = ""
) -> dict:
    from adapters.console import ConsoleDelivery
    from bot.app import build_app
    from bot.config import load_settings
    from bot.jobs import ChatRequest, JobState, Requester

    def ask(i: int, text: str) -> ChatRequest:
        user = f"u{i % USERS}"
        return ChatRequest(
            requester=Requester("console", "bench", user, f"@{user}"),
            request_key=f"bench-{i}",
            channel_id="terminal",
            text=text,
        )

    async def count(state: JobState) -> int:
        return len(await app.store.jobs_in_states([state]))

    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as tmp:
        settings = load_settings(
            REELBOT_DATA_DIR=str(Path(tmp) / "data"),
            REELBOT_PROVIDER="openai",
            OPENAI_API_KEY=api_key,
            OPENAI_BASE_URL=base_url,
            REELBOT_MAX_JOBS_IN_FLIGHT=n,
            REELBOT_MAX_JOBS_PER_USER=n,
            REELBOT_USER_BUDGET_USD=1_000_000,
            REELBOT_RENDER_DEADLINE_S=7200,
        )
        app = await build_app(settings)
        if what_if:
            apply_what_if(app, what_if)
        app.bot.register(ConsoleDelivery(quiet=True))
        await app.worker.start()
        try:
            # Warm-up: one clip through every layer, then cancelled, so the baseline is warm.
            warm = await app.bot.handle(ask(-1, "warm-up clip"))
            assert warm.ok and warm.job is not None, warm.text
            while (await app.store.get_job(warm.job.id)).state is not JobState.RENDERING:
                await asyncio.sleep(0.05)
            await app.bot.cancel(ask(-1, "").requester, warm.job.id)
            await app.worker.wait_for(warm.job.id, timeout=30)
            baseline_kb = status_kb("VmRSS")

            started = time.perf_counter()
            replies = await asyncio.gather(*(app.bot.handle(ask(i, f"bench clip {i}")) for i in range(n)))
            assert all(r.ok for r in replies), [r.text for r in replies if not r.ok][:3]
            admitted_s = time.perf_counter() - started
            while await count(JobState.RENDERING) < n:
                if time.perf_counter() - started > 600:
                    raise RuntimeError("jobs did not all reach rendering within 600 s")
                await asyncio.sleep(0.25)
            ramp_s = time.perf_counter() - started

            await asyncio.sleep(settle)
            profiler = None
            if profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            calls_before = await asyncio.to_thread(read_counts)
            sweeps0, singles0 = app.worker.renders.sweeps, app.worker.renders.single_retrieves
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(window)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            calls_after = await asyncio.to_thread(read_counts)
            sweeps = app.worker.renders.sweeps - sweeps0
            singles = app.worker.renders.single_retrieves - singles0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            still = await count(JobState.RENDERING)
            hwm_kb, rss_kb = status_kb("VmHWM"), status_kb("VmRSS")
        finally:
            await app.close()
    wall = wall1 - wall0
    retrieves = calls_after.get("retrieve", 0) - calls_before.get("retrieve", 0)
    lists = calls_after.get("list", 0) - calls_before.get("list", 0)
    return {
        "n": n,
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "rss_mb": round(rss_kb / 1024, 1),
        "rss_growth_mb": round((hwm_kb - baseline_kb) / 1024, 1),
        "cpu_pct_of_core": round(100 * (cpu1 - cpu0) / wall, 2),
        "calls_per_job_per_min": round((retrieves + lists) / n / (wall / 60), 2),
        "retrieves_in_window": retrieves,
        "list_pages_in_window": lists,
        "sweeps_in_window": sweeps,
        "single_retrieves_in_window": singles,
        "window_s": round(wall, 1),
        "admitted_s": round(admitted_s, 2),
        "ramp_s": round(ramp_s, 2),
        "still_rendering": still,
    }


def read_counts() -> dict[str, int]:
    """Asks the fake server (via the parent, over this process's stdin/stdout) for its counts."""
    sys.stdout.write(json.dumps({"want": "counts"}) + "\n")
    sys.stdout.flush()
    return json.loads(sys.stdin.readline())


# --- the orchestrator --------------------------------------------------------------------------------


def one_run(fake: FakeVideosProcess, n: int, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        str(n),
        "--base-url",
        fake.base_url,
        "--api-key",
        fake.api_key,
        "--settle",
        str(args.settle),
        "--window",
        str(args.window),
    ]
    if variant != AS_IS:
        cmd += ["--apply", variant]
    if args.profile:
        cmd += ["--profile-out", str(RESULTS.parent / f"profile_jobs_in_flight_{n}_{variant}.prof")]
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and not k.startswith(("REELBOT_", "OPENAI_"))}
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert child.stdin is not None and child.stdout is not None
    try:
        for line in child.stdout:
            message = json.loads(line)
            if message.get("want") == "counts":
                child.stdin.write(json.dumps(fake.counts()) + "\n")
                child.stdin.flush()
            elif "result" in message:
                return message["result"]
        raise RuntimeError(f"the measured process exited with {child.wait()} and no result")
    finally:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def summarise(n: int, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    return {
        "n": n,
        "variant": variant,
        "runs": len(runs),
        "peak_rss_mb": med("peak_rss_mb"),
        "baseline_rss_mb": med("baseline_rss_mb"),
        "rss_growth_mb": med("rss_growth_mb"),
        "cpu_pct_of_core": med("cpu_pct_of_core"),
        "cpu_pct_range": [min(r["cpu_pct_of_core"] for r in runs), max(r["cpu_pct_of_core"] for r in runs)],
        "calls_per_job_per_min": med("calls_per_job_per_min"),
        "ramp_s": med("ramp_s"),
        "all_rendering": all(r["still_rendering"] == n for r in runs),
        "samples": runs,
    }


def summary_rows(rows: list[dict[str, Any]], *, what_if: bool) -> list[dict[str, Any]]:
    """The rows for the README's results table: memory and CPU at 1,000 jobs; for a what-if run,
    the CPU of each variant (the bot as it is included, measured alongside)."""
    summary = []
    for row in rows:
        if row["n"] != AIM_N:
            continue
        label = f"median of {row['runs']}" + (f", bot {row['variant']}" if what_if else "")
        if not what_if:
            summary.append(
                {
                    "metric": f"peak RSS, {AIM_N} jobs in flight (VmHWM, {label})",
                    "figure": f"{row['peak_rss_mb']} MB (+{row['rss_growth_mb']} MB over a warm idle bot)",
                    "aim": f"< {AIM_RSS_MB:.0f} MB",
                    "met": row["peak_rss_mb"] < AIM_RSS_MB,
                }
            )
        low, high = row["cpu_pct_range"]
        summary.append(
            {
                "metric": f"CPU while {AIM_N} jobs wait on renders ({label})",
                "figure": f"{row['cpu_pct_of_core']}% of one core (runs {low}-{high}), "
                f"{row['calls_per_job_per_min']} status requests/job/min (retrieves + list pages)",
                "aim": f"< {AIM_CPU_PCT:.0f}%",
                "met": row["cpu_pct_of_core"] < AIM_CPU_PCT,
            }
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=25.0, help="seconds before measuring (poll steady state)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of waiting measured")
    parser.add_argument("--profile", action="store_true", help="cProfile the window; writes results/*.prof")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--what-if",
        nargs="+",
        default=[],
        metavar="VARIANT",
        help="also measure a variant of the bot, interleaved with the bot as it is: no-sweep (render sweeps "
        f"disabled, every render polled one by one, to show what the sweeps save); saved to {WHAT_IF_RESULTS.name}",
    )
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--apply", default="", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure is not None:
        result = asyncio.run(
            measure(args.measure, args.base_url, args.api_key, args.settle, args.window, args.profile_out, args.apply)
        )
        sys.stdout.write(json.dumps({"result": result}) + "\n")
        sys.stdout.flush()
        return

    unknown = [v for v in args.what_if if v not in WHAT_IF_VARIANTS]
    if unknown:
        parser.error(f"unknown --what-if variant(s) {', '.join(unknown)} (known: {', '.join(WHAT_IF_VARIANTS)})")
    started = time.perf_counter()
    variants = [AS_IS, *args.what_if]
    rows = []
    # One fake server for all runs (its memory and CPU are not the bot's); renders take an hour.
    with FakeVideosProcess({"render_seconds": 3600, "encode": [1280, 720, 4]}) as fake:
        for n in args.n:
            samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for index in range(args.runs):
                for variant in variants:  # interleaved, so machine noise hits every variant alike
                    result = one_run(fake, n, variant, args)
                    print(
                        f"N={n} [{variant}] run {index + 1}/{args.runs}: peak {result['peak_rss_mb']} MB "
                        f"(+{result['rss_growth_mb']} MB), CPU {result['cpu_pct_of_core']}% of a core, "
                        f"{result['calls_per_job_per_min']} calls/job/min ({result['sweeps_in_window']} sweeps, "
                        f"{result['list_pages_in_window']} list pages, {result['retrieves_in_window']} retrieves), "
                        f"ramp {result['ramp_s']} s",
                        flush=True,
                    )
                    samples[variant].append(result)
            rows += [summarise(n, v, samples[v]) for v in variants]

    print(
        "\n| jobs in flight | bot | peak RSS (VmHWM) | growth over baseline | CPU while waiting "
        "| calls/job/min | ramp |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['n']} | {row['variant']} | {row['peak_rss_mb']} MB | {row['rss_growth_mb']} MB "
            f"| {row['cpu_pct_of_core']}% ({row['cpu_pct_range'][0]}-{row['cpu_pct_range'][1]}) "
            f"| {row['calls_per_job_per_min']} | {row['ramp_s']} s |"
        )
    summary = summary_rows(rows, what_if=bool(args.what_if))
    if not args.no_save:
        target = WHAT_IF_RESULTS if args.what_if else RESULTS
        save_results(target, started=started, summary=summary, settle_s=args.settle, window_s=args.window, rows=rows)


if __name__ == "__main__":
    for _name in PROXIES:
        os.environ.pop(_name, None)
    main()
