"""The bot's render watcher on the real clock: how soon a finished render is seen, and at what cost.

``bench_polling.py`` measures the poll schedule itself (a model, and the client on a fake clock).
This measures what the worker actually runs: ``bot.render_watch.RenderWatcher`` with the real
``OpenAIVideosProvider`` against ``FakeVideosServer`` on 127.0.0.1, in real time, with renders of
random length (``--min``-``--max`` seconds, the same durations for both variants of a run).

For each N (default 10 and 200 renders started together) and each run, two variants, interleaved:

- ``sweeps``: the watcher as the bot uses it (a list sweep when several renders are due together);
- ``one-by-one``: the same watcher with sweeps switched off (every render asked about alone).

Reported per variant: the delay from the moment the fake server counts a render as completed to
the moment the watcher hands that status to the waiting job (median and p90 over every render of
every run), and status requests (retrieves + list pages) per render. The aim (the issue's, for the
poll schedule): median delay under 2 s.

Run: ``python benchmarks/bench_render_watch.py [--n 10 200] [--runs 2] [--min 5] [--max 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import save_results  # noqa: E402
from bot.providers.base import RenderSpec, VideoStatus  # noqa: E402
from bot.providers.openai_videos import OpenAIVideosProvider  # noqa: E402
from bot.render_watch import RenderWatcher  # noqa: E402
from tests.fakes.videos_server import FakeVideosServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_render_watch.json"
VARIANTS = ("sweeps", "one-by-one")
AIM_MEDIAN_DELAY_S = 2.0
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


async def one_run(n: int, variant: str, durations: list[float]) -> dict[str, Any]:
    """Starts ``n`` renders with the given durations and watches them all until completed."""
    pending = iter(durations)
    async with FakeVideosServer(render_seconds=lambda *_: next(pending), video_bytes=b"\x00") as fake:
        provider = OpenAIVideosProvider(api_key=fake.api_key, base_url=fake.base_url, request_timeout=30.0)
        watcher = RenderWatcher(provider=provider, batch_min_due=4 if variant == "sweeps" else 10**9)
        try:
            spec = RenderSpec("a lighthouse at dusk", "sora-2", "1280x720", 4)
            videos = [await provider.create(spec) for _ in range(n)]
            creates = fake.count("create")

            async def watch(video_id: str) -> float:
                async with watcher.watch(video_id, started=time.time()) as w:
                    while True:
                        video = await w.next_change()
                        if video is not None and video.status is VideoStatus.COMPLETED:
                            seen = time.time()
                            _, _, completed_at, _ = fake.videos[video_id].state(seen)
                            assert completed_at is not None
                            return seen - completed_at

            delays = await asyncio.gather(*(watch(v.id) for v in videos))
            requests = fake.count("retrieve") + fake.count("list")
        finally:
            await watcher.aclose()
            await provider.aclose()
    assert creates == n
    return {"delays": delays, "requests": requests, "sweeps": watcher.sweeps}


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(20261122)
    rows = []
    for n in args.n:
        delays: dict[str, list[float]] = {v: [] for v in VARIANTS}
        requests: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for index in range(args.runs):
            durations = [rng.uniform(args.min, args.max) for _ in range(n)]
            for variant in VARIANTS:  # interleaved, on the same durations
                result = await one_run(n, variant, list(durations))
                delays[variant] += result["delays"]
                requests[variant].append(result["requests"] / n)
                print(
                    f"N={n} [{variant}] run {index + 1}/{args.runs}: delay median "
                    f"{statistics.median(result['delays']):.3f} s, p90 {p90(result['delays']):.3f} s, "
                    f"{result['requests'] / n:.2f} status requests/render, {result['sweeps']} sweeps",
                    flush=True,
                )
        for variant in VARIANTS:
            rows.append(
                {
                    "n": n,
                    "variant": variant,
                    "runs": args.runs,
                    "delay_median_s": round(statistics.median(delays[variant]), 3),
                    "delay_p90_s": round(p90(delays[variant]), 3),
                    "requests_per_render": round(statistics.median(requests[variant]), 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--min", type=float, default=5.0, help="shortest render, seconds")
    parser.add_argument("--max", type=float, default=20.0, help="longest render, seconds")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = asyncio.run(main_async(args))

    print("\n| renders | watcher | delay median | delay p90 | status requests per render |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['n']} | {row['variant']} | {row['delay_median_s']} s | {row['delay_p90_s']} s "
            f"| {row['requests_per_render']} |"
        )
    summary = [
        {
            "metric": f"finished render seen by the bot's watcher, {row['n']} renders of {args.min:g}-{args.max:g} s "
            f"together, real clock, {row['variant']} (median / p90 over {row['runs']} runs)",
            "figure": f"{row['delay_median_s']} s / {row['delay_p90_s']} s, "
            f"{row['requests_per_render']} status requests per render",
            "aim": f"median < {AIM_MEDIAN_DELAY_S:g} s",
            "met": row["delay_median_s"] < AIM_MEDIAN_DELAY_S,
        }
        for row in rows
    ]
    if not args.no_save:
        save_results(RESULTS, started=started, summary=summary, rows=rows)


if __name__ == "__main__":
    for _name in PROXIES:
        os.environ.pop(_name, None)
    main()
