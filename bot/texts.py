"""Everything reelbot says, in one place, so every adapter words things the same way."""

from __future__ import annotations

from datetime import datetime

from bot.commands import USAGE, CommandRules
from bot.delivery import CardView
from bot.jobs import Job, JobState
from bot.money import format_usd
from bot.periods import period_noun
from bot.store import Usage

AI_LABEL = "AI-generated video"


def help_text(rules: CommandRules) -> str:
    seconds = ", ".join(map(str, rules.seconds))
    pro_sizes = ", ".join(rules.sizes("sora-2-pro"))
    return "\n".join(
        [
            "*reelbot* makes short AI video clips.",
            f"`{USAGE}`",
            f"• seconds: {seconds} (default 4) · model: sora-2 (default) or sora-2-pro (`--pro`)",
            f"• sizes: sora-2 720x1280, 1280x720 (default); sora-2-pro also {pro_sizes.split(', ', 2)[-1]}",
            "• attach an image to start the clip from it; quote text to keep flags in the prompt",
            "• prices per second: sora-2 $0.10 · sora-2-pro $0.30 (720p) / $0.50 (1024x1792, 1792x1024)",
            "• `/video budget` · `/video jobs` · `/video cancel JOB` · `/video retry JOB`",
            "• cameos: `/video cameo register|status|audience|allow|revoke|history` (see the README)",
        ]
    )


def settings_line(job: Job) -> str:
    return f"{job.options.model} · {job.options.size} · {job.options.seconds} s"


def short_prompt(prompt: str, limit: int = 80) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def status_text(job: Job, queue_position: int | None = None) -> str:
    match job.state:
        case JobState.RECEIVED:
            return "Received"
        case JobState.PENDING_CONSENT:
            return "Waiting for the cameo owner's consent"
        case JobState.QUEUED:
            return f"Queued (position {queue_position})" if queue_position else "Queued"
        case JobState.SUBMITTING:
            return "Starting the render"
        case JobState.RENDERING:
            return f"Rendering {job.progress}%"
        case JobState.DOWNLOADING:
            return "Downloading the clip"
        case JobState.DELIVERING:
            return "Uploading"
        case JobState.UNDELIVERED:
            reason = job.error or "upload failed"
            return f"Rendered, but not delivered: {reason}. Press Retry or `/video retry {job.id}`"
        case JobState.DELIVERED:
            return "Delivered"
        case JobState.FAILED:
            return f"Failed: {job.error or 'unknown error'} (not charged)"
        case JobState.CANCELLED:
            return "Cancelled (not charged)"
        case JobState.REFUSED:
            return "Refused (not charged)"
    return job.state.value


def card_view(job: Job, queue_position: int | None = None) -> CardView:
    if job.state.is_final:
        actions: tuple[str, ...] = ("reroll", "remix") if job.state is JobState.DELIVERED else ("reroll",)
        if job.state is JobState.REFUSED:
            actions = ()
    elif job.state is JobState.UNDELIVERED:
        actions = ("retry",)
    else:
        actions = ("cancel",)
    return CardView(
        job_id=job.id,
        title=f"🎬 Video job {job.id}",
        prompt=short_prompt(job.prompt, 300),
        settings=settings_line(job),
        cost=format_usd(job.cost_micros),
        requester=job.user_name,
        status=status_text(job, queue_position),
        state=job.state.value,
        progress=job.progress,
        queue_position=queue_position,
        actions=actions,
    )


def caption(job: Job) -> str:
    return (
        f"🎬 For {job.user_name}: “{short_prompt(job.prompt, 200)}” · {settings_line(job)} · "
        f"{format_usd(job.cost_micros)} · {AI_LABEL} · job {job.id}"
    )


def queued_text(job: Job, position: int | None) -> str:
    where = f", position {position} in the queue" if position else ""
    return f"Job {job.id} queued{where}: {settings_line(job)}, {format_usd(job.cost_micros)}."


def budget_text(usage: Usage, period: str, reset: datetime) -> str:
    return (
        f"Budget {period_noun(period)}: spent {format_usd(usage.spent_micros)}, "
        f"reserved {format_usd(usage.reserved_micros)}, limit {format_usd(usage.limit_micros)}, "
        f"remaining {format_usd(usage.remaining_micros)}. Resets {reset:%Y-%m-%d %H:%M} UTC."
    )


def budget_refusal(cost: int, usage: Usage, period: str, reset: datetime) -> str:
    return (
        f"Not enough budget: this clip costs {format_usd(cost)} and you have "
        f"{format_usd(usage.remaining_micros)} left of {format_usd(usage.limit_micros)} {period_noun(period)} "
        f"(resets {reset:%Y-%m-%d %H:%M} UTC). Nothing was charged."
    )


def warning_text(usage: Usage, period: str) -> str:
    used = usage.spent_micros + usage.reserved_micros
    return (
        f"Heads-up: you have used {format_usd(used)} of your {format_usd(usage.limit_micros)} budget "
        f"{period_noun(period)} (80% or more)."
    )


def jobs_text(jobs: list[Job]) -> str:
    if not jobs:
        return "You have no video jobs yet. Try `/video a calico cat playing piano`."
    lines = ["Your latest jobs:"]
    for job in jobs:
        lines.append(
            f"• `{job.id}` {status_text(job)} · {settings_line(job)} · {format_usd(job.cost_micros)} · "
            f"“{short_prompt(job.prompt, 50)}”"
        )
    return "\n".join(lines)
