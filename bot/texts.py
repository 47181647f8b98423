"""Everything reelbot says, in one place, so every adapter words things the same way."""

from __future__ import annotations

from datetime import datetime

from bot.catalog import ASPECT_WORDS, Catalog, ModelInfo, or_list, seconds_words
from bot.commands import USAGE
from bot.delivery import CardView
from bot.jobs import Job, JobState
from bot.money import format_usd
from bot.periods import period_noun
from bot.providers.base import ProviderError, Route
from bot.store import Usage

AI_LABEL = "AI-generated video"


PROVIDER_NAMES = {"local": "local preview", "fal": "fal.ai", "openrouter": "OpenRouter", "openai": "/v1/videos"}


def provider_name(provider: str) -> str:
    return PROVIDER_NAMES.get(provider, provider or "?")


def _sound_words(model: ModelInfo, *, short: bool = False) -> str:
    if short:
        return {"always": "with sound", "never": "silent", "optional": "sound optional"}[model.audio]
    return {
        "always": "always (no --silent)",
        "never": "never: silent clips (no --audio)",
        "optional": "with sound unless you add --silent (cheaper)",
    }[model.audio]


def _from_price(model: ModelInfo) -> str:
    cheapest = model.cheapest_per_second()
    return f"from {format_usd(cheapest)}/s" if cheapest is not None else "no price"


def help_text(catalog: Catalog, provider_names: tuple[str, ...]) -> str:
    enabled = catalog.enabled(provider_names)
    default = catalog.default_for(provider_names)
    names = ", ".join(m.name for m in enabled) or "none"
    return "\n".join(
        [
            "*reelbot* makes short AI video clips.",
            f"`{USAGE}`",
            f"• models: {names}; default {default.name if default else 'none'} · `/video models` compares them, "
            "`/video help MODEL` shows one",
            "• each model takes its own lengths, aspects and resolutions; the price follows the model, "
            "resolution, length and sound",
            "• attach an image to start the clip from it; quote text to keep flags in the prompt",
            "• `/video budget` · `/video jobs` · `/video cancel JOB` · `/video retry JOB`",
            "• cameos: `/video cameo register|status|audience|allow|revoke|history` (see the README)",
        ]
    )


def model_line(model: ModelInfo, *, default: bool = False) -> str:
    """One model in ``/video models``: what it takes and what it costs."""
    extras = [word for flag, word in ((model.first_frame, "image start"), (model.subject_reference, "cameos")) if flag]
    parts = [
        f"• `{model.name}`{' (default)' if default else ''} {model.label}",
        seconds_words(model.durations).replace(" seconds", " s"),
        ", ".join(model.aspects),
        ", ".join(model.resolutions),
        _sound_words(model, short=True),
        *extras,
        _from_price(model),
    ]
    return parts[0] + ": " + " · ".join(parts[1:])


def models_text(catalog: Catalog, provider_names: tuple[str, ...]) -> str:
    enabled = catalog.enabled(provider_names)
    if not enabled:
        return "No video model is available: none of the configured providers serves one."
    default = catalog.default_for(provider_names)
    lines = ["Models here (`--model NAME`; `/video help NAME` for details):"]
    lines += [model_line(m, default=m is default) for m in enabled]
    if catalog.local_stands_in(provider_names):
        lines.append(
            "No video service is configured: the local renderer makes a preview for every model, priced like it."
        )
    return "\n".join(lines)


def model_help_text(model: ModelInfo, routes: tuple[Route, ...], *, local_stands_in: bool) -> str:
    """``/video help MODEL``: everything the model takes, its prices, and who serves it here."""
    served = ", ".join(f"{provider_name(r.provider)} ({r.model_id})" for r in routes) or "no configured provider"
    if local_stands_in:
        served = "the local renderer (a preview; no video service is configured)"
    aspects = ", ".join(f"{a} (--{ASPECT_WORDS.get(a, a)})" for a in model.aspects)
    limits = "".join(f"; {r} only at {seconds_words(d)}" for r, d in model.seconds_at.items())
    can = [
        ("start from an attached image", model.first_frame),
        ("cameos (--cameo @name)", model.subject_reference),
        ("--seed", model.seed),
        ("--negative", model.negative_prompt),
    ]
    takes = ", ".join(word for word, ok in can if ok) or "nothing else"
    cannot = ", ".join(word for word, ok in can if not ok)
    lines = [
        f"*{model.name}*: {model.label}",
        f"• length: {seconds_words(model.durations)} (--seconds N, default {model.default_seconds}){limits}",
        f"• aspect: {aspects}; resolution: {or_list(model.resolutions)} (--resolution, default "
        f"{model.default_resolution})",
        f"• sound: {_sound_words(model)}",
        f"• also takes: {takes}" + (f"; not: {cannot}" if cannot else ""),
        f"• price per second: {model.price_words()}",
        f"• served by: {served}",
        f"• e.g. `/video a paper boat in the rain --model {model.name} --seconds {model.default_seconds}`",
    ]
    if model.note:
        lines.append(f"• source: {model.note}" + ("" if model.verified else " (not all verified)"))
    return "\n".join(lines)


def settings_line(job: Job) -> str:
    """``veo-3.1-lite · 1280x720 · 4 s · with sound``: what the clip is (sound named only where it was a choice)."""
    options = job.options
    sound = "" if options.audio is None else (" · with sound" if options.audio else " · silent")
    return f"{options.model} · {options.size} · {options.seconds} s{sound}"


def made_line(job: Job) -> str:
    """The settings plus which provider makes (or made) the clip, for the card and the caption."""
    return f"{settings_line(job)} · via {provider_name(job.provider)}"


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
            if job.provider_position is not None:  # 0 = next at the provider; shown 1-based like reelbot's queue
                return f"Queued at {provider_name(job.provider)} (position {job.provider_position + 1})"
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
        settings=made_line(job),
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
        f"🎬 For {job.user_name}: “{short_prompt(job.prompt, 200)}” · {made_line(job)} · "
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


def failover_text(job: Job, previous: str, error: ProviderError) -> str:
    """Said in the thread when a job moves to its model's next provider (the price stays the model's)."""
    return (
        f"{provider_name(previous)} could not take job {job.id} ({error.user_message.rstrip('.')}), so "
        f"{job.options.model} is being made through {provider_name(job.provider)} instead, at the same price."
    )
