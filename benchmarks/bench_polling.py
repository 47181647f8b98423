"""Adaptive polling vs fixed 10 s and fixed 1 s: provider calls per job and detection delay.

Two measurements, both on a fake clock (nothing sleeps for real):

1. **model**: the poll schedule driven directly against a timeline model of 200 renders
   (durations uniform in 30-180 s, a 0-5 s queue, integer progress rising linearly; the same
   model the fake server implements).
2. **e2e**: the real ``OpenAIVideosProvider`` over loopback HTTP against ``FakeVideosServer``
   with a ``FakeClock`` (fewer renders, same distributions), as a check that the model matches
   what the worker would see.

"Detection delay" is the time from the render completing to the first status request that sees
it completed; "calls" counts status requests (retrieve) per job, not the create.

Run: ``python benchmarks/bench_polling.py [--renders 200] [--e2e-renders 40] [--seed 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.polling import AdaptivePoller  # noqa: E402
from bot.providers.base import RenderSpec, VideoStatus  # noqa: E402
from bot.providers.openai_videos import OpenAIVideosProvider  # noqa: E402
from tests.fakes.videos_server import FakeClock, FakeVideosServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_polling.json"
MIN_RENDER, MAX_RENDER, MAX_QUEUE = 30.0, 180.0, 5.0

# A schedule: (elapsed, progress, hint) -> next delay.
Schedule = Callable[[float, int, float | None], float]


@dataclass(frozen=True)
class Render:
    queue: float
    duration: float

    @property
    def done_at(self) -> float:
        return self.queue + self.duration

    def progress(self, t: float) -> int:
        if t <= self.queue:
            return 0
        return max(0, min(99, math.floor(100 * (t - self.queue) / self.duration)))


def renders(count: int, seed: int) -> list[Render]:
    rng = random.Random(seed)
    return [Render(rng.uniform(0, MAX_QUEUE), rng.uniform(MIN_RENDER, MAX_RENDER)) for _ in range(count)]


def adaptive() -> Schedule:
    poller = AdaptivePoller()
    return lambda elapsed, progress, hint: poller.next_delay(elapsed=elapsed, progress=progress, hint=hint)


def fixed(seconds: float) -> Schedule:
    return lambda elapsed, progress, hint: seconds


STRATEGIES: dict[str, Callable[[], Schedule]] = {
    "adaptive": adaptive,
    "fixed 10 s": lambda: fixed(10.0),
    "fixed 1 s": lambda: fixed(1.0),
}


def simulate(schedule: Schedule, render: Render, hint: float | None = None) -> tuple[int, float]:
    """(status calls, detection delay) for one render under one schedule, on the model."""
    t, progress, calls = 0.0, 0, 0
    while True:
        t += schedule(t, progress, hint)
        calls += 1
        if t >= render.done_at:
            return calls, t - render.done_at
        progress = render.progress(t)


async def simulate_e2e(schedule: Schedule, jobs: list[Render]) -> list[tuple[int, float]]:
    """The same loop through the real provider and the fake server, on a fake clock."""
    clock = FakeClock()
    out: list[tuple[int, float]] = []
    async with FakeVideosServer(clock=clock, render_seconds=1.0) as fake:
        async with OpenAIVideosProvider(api_key=fake.api_key, base_url=fake.base_url, sleep=clock.sleep) as provider:
            for render in jobs:
                fake.plan(render_seconds=render.duration, queue_seconds=render.queue)
                created_at = clock()
                video = await provider.create(RenderSpec("bench", "sora-2", "1280x720", 8))
                calls = 0
                while True:
                    elapsed = clock() - created_at
                    await clock.sleep(schedule(elapsed, video.progress, video.poll_after))
                    video = await provider.retrieve(video.id)
                    calls += 1
                    if video.status is VideoStatus.COMPLETED:
                        out.append((calls, clock() - created_at - render.done_at))
                        break
                await provider.delete(video.id)
    return out


def summarise(name: str, mode: str, samples: list[tuple[int, float]]) -> dict[str, object]:
    calls = [c for c, _ in samples]
    delays = sorted(d for _, d in samples)
    return {
        "strategy": name,
        "mode": mode,
        "renders": len(samples),
        "calls_mean": round(statistics.fmean(calls), 2),
        "calls_median": statistics.median(calls),
        "delay_median_s": round(statistics.median(delays), 3),
        "delay_p90_s": round(delays[min(len(delays) - 1, math.ceil(0.9 * len(delays)) - 1)], 3),
        "delay_max_s": round(delays[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument("--e2e-renders", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    jobs = renders(args.renders, args.seed)
    rows = [summarise(name, "model", [simulate(make(), r) for r in jobs]) for name, make in STRATEGIES.items()]
    rows.append(summarise("adaptive + 2 s server hint", "model", [simulate(adaptive(), r, 2.0) for r in jobs]))
    e2e_jobs = renders(args.e2e_renders, args.seed + 1)
    for name, make in STRATEGIES.items():
        rows.append(summarise(name, "e2e", asyncio.run(simulate_e2e(make(), e2e_jobs))))

    by_name = {(row["strategy"], row["mode"]): row for row in rows}
    adaptive_model, fixed1_model = by_name[("adaptive", "model")], by_name[("fixed 1 s", "model")]
    ratio = float(adaptive_model["calls_mean"]) / float(fixed1_model["calls_mean"])  # type: ignore[arg-type]
    target = {
        "median_delay_under_2s": float(adaptive_model["delay_median_s"]) < 2.0,  # type: ignore[arg-type]
        "calls_vs_fixed_1s": round(ratio, 3),
        "calls_at_most_a_third_of_fixed_1s": ratio <= 1 / 3,
    }

    print(
        "| strategy | mode | renders | calls/job (mean) | calls/job (median) | delay median | delay p90 | delay max |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['strategy']} | {row['mode']} | {row['renders']} | {row['calls_mean']} | {row['calls_median']} "
            f"| {row['delay_median_s']} s | {row['delay_p90_s']} s | {row['delay_max_s']} s |"
        )
    print(
        f"\nTarget (adaptive, model): median delay < 2 s: {target['median_delay_under_2s']}; calls = "
        f"{target['calls_vs_fixed_1s']:.0%} of fixed 1 s (aim <= 33%): {target['calls_at_most_a_third_of_fixed_1s']}"
    )
    print(
        "model = schedule driven against the timeline model; e2e = real provider + fake server over "
        "loopback HTTP, fake clock."
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "bench_polling",
                "timeline": {
                    "render_seconds": [MIN_RENDER, MAX_RENDER],
                    "queue_seconds": [0, MAX_QUEUE],
                    "progress": "integer, linear",
                    "seed": args.seed,
                },
                "rows": rows,
                "target": target,
                "wall_seconds": round(time.perf_counter() - started, 2),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
