"""Calendar budget periods in UTC: their keys and when they reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_key(period: str, at: float) -> str:
    """``2026-11-21`` for a day, ``2026-W47`` for an ISO week, ``2026-11`` for a month."""
    moment = datetime.fromtimestamp(at, UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return moment.strftime("%Y-%m")
    raise ValueError(f"unknown budget period {period!r}")


def period_reset(period: str, at: float) -> datetime:
    """The UTC moment the period containing ``at`` ends."""
    moment = datetime.fromtimestamp(at, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day_start + timedelta(days=1)
    if period == "week":
        return day_start + timedelta(days=7 - moment.weekday())
    if period == "month":
        first = day_start.replace(day=1)
        return (first + timedelta(days=32)).replace(day=1)
    raise ValueError(f"unknown budget period {period!r}")


def period_noun(period: str) -> str:
    return {"day": "today", "week": "this week", "month": "this month"}[period]
