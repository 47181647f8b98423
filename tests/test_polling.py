"""AdaptivePoller: hints, clamping, the no-progress ramp, and the issue's targets on a timeline."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.polling import AdaptivePoller

pytestmark = pytest.mark.timeout(30)


def render_timeline(poller: AdaptivePoller, duration: float, queue: float = 0.0) -> tuple[int, float]:
    """(status calls, completion-detection delay) for a render with linear integer progress."""
    done_at = queue + duration
    t, progress, calls = 0.0, 0, 0
    while calls < 10_000:
        t += poller.next_delay(elapsed=t, progress=progress, hint=None)
        calls += 1
        if t >= done_at:
            return calls, t - done_at
        progress = 0 if t <= queue else min(99, math.floor(100 * (t - queue) / duration))
    raise AssertionError("the poller never reached the end of the render")


def test_the_hint_is_a_floor_not_a_target() -> None:
    poller = AdaptivePoller(min_interval=1.0, max_interval=10.0)
    # Nearly done: the estimate says "soon", so the service's poll-after wins.
    assert poller.next_delay(elapsed=99, progress=99, hint=3.5) == 3.5
    # Far from done: the estimate is longer than the hint, so we wait longer than asked.
    assert poller.next_delay(elapsed=50, progress=10, hint=2.0) == 10.0
    assert poller.next_delay(elapsed=50, progress=10, hint=None) == 10.0


@pytest.mark.parametrize(("hint", "expected"), [(0.0, 1.0), (0.2, 1.0), (-4.0, 1.0), (60.0, 10.0), (math.inf, 10.0)])
def test_the_hint_is_clamped(hint: float, expected: float) -> None:
    assert AdaptivePoller().next_delay(elapsed=99, progress=99, hint=hint) == expected


def test_a_nan_hint_is_ignored() -> None:
    poller = AdaptivePoller()
    assert poller.next_delay(elapsed=0, progress=0, hint=math.nan) == poller.next_delay(
        elapsed=0, progress=0, hint=None
    )


def test_first_delay_defaults_to_two_seconds_and_is_clamped() -> None:
    assert AdaptivePoller().next_delay(elapsed=0, progress=0, hint=None) == 2.0
    assert AdaptivePoller(first_delay=4).next_delay(elapsed=0, progress=0, hint=None) == 4.0
    assert AdaptivePoller(first_delay=0.1).next_delay(elapsed=0, progress=0, hint=None) == 1.0
    assert AdaptivePoller(max_interval=5, first_delay=30).next_delay(elapsed=0, progress=0, hint=None) == 5.0


def test_without_progress_the_delay_grows_geometrically_to_the_cap() -> None:
    poller = AdaptivePoller(min_interval=1.0, max_interval=10.0)
    t, delays = 0.0, []
    for _ in range(12):
        delay = poller.next_delay(elapsed=t, progress=0, hint=None)
        delays.append(delay)
        t += delay
    assert delays[0] == 2.0
    assert all(b >= a for a, b in itertools.pairwise(delays))  # never shrinks
    assert all(b <= a * 1.5 + 1e-9 for a, b in itertools.pairwise(delays))  # no jumps
    assert delays[-1] == 10.0
    assert delays.index(10.0) <= 8  # reaches the cap within ~25 s rather than crawling


def test_far_from_done_polls_at_the_cap_and_near_the_end_at_the_floor() -> None:
    poller = AdaptivePoller(min_interval=1.0, max_interval=10.0)
    assert poller.next_delay(elapsed=10, progress=5, hint=None) == 10.0  # ~190 s left
    assert poller.next_delay(elapsed=60, progress=80, hint=None) == pytest.approx(7.5)  # 15 s left -> half
    assert poller.next_delay(elapsed=90, progress=98, hint=None) == 1.0  # ~1.8 s left
    assert poller.next_delay(elapsed=100, progress=100, hint=None) == 1.0  # done but not yet "completed"


def test_it_is_stateless_so_a_restarted_worker_gets_the_same_schedule() -> None:
    used = AdaptivePoller()
    for elapsed in range(0, 100, 7):
        used.next_delay(elapsed=elapsed, progress=elapsed // 2, hint=None)
    fresh = AdaptivePoller()
    assert used.next_delay(elapsed=42, progress=30, hint=None) == fresh.next_delay(elapsed=42, progress=30, hint=None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_interval": 0},
        {"min_interval": -1},
        {"min_interval": 5, "max_interval": 2},
        {"max_interval": math.inf},
        {"first_delay": math.nan},
    ],
)
def test_nonsense_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptivePoller(**kwargs)


@settings(max_examples=300, deadline=None)
@given(
    low=st.floats(0.1, 5),
    span=st.floats(0, 60),
    elapsed=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e6, 1e6)),
    progress=st.integers(-50, 500),
    hint=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_every_delay_is_within_the_bounds(
    low: float, span: float, elapsed: float, progress: int, hint: float | None
) -> None:
    poller = AdaptivePoller(min_interval=low, max_interval=low + span)
    delay = poller.next_delay(elapsed=elapsed, progress=progress, hint=hint)
    assert low <= delay <= low + span


@settings(max_examples=200, deadline=None)
@given(duration=st.floats(30, 180), queue=st.floats(0, 5))
def test_each_render_is_detected_within_about_one_interval_at_a_third_of_the_calls(
    duration: float, queue: float
) -> None:
    calls, delay = render_timeline(AdaptivePoller(), duration, queue)
    fixed_one_second_calls = math.ceil(queue + duration)
    assert 0 <= delay <= 1.5  # at most ~min_interval late, never a max_interval late
    assert calls <= fixed_one_second_calls / 3


def test_the_issue_target_holds_over_a_spread_of_renders() -> None:
    results = [render_timeline(AdaptivePoller(), 30 + 150 * i / 199, queue=5 * ((i * 7) % 11) / 10) for i in range(200)]
    delays = [d for _, d in results]
    calls = sum(c for c, _ in results)
    fixed_calls = sum(math.ceil(5 * ((i * 7) % 11) / 10 + 30 + 150 * i / 199) for i in range(200))
    assert statistics.median(delays) < 2.0
    assert calls <= fixed_calls / 3
