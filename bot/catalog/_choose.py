"""The second step after parsing: a ``VideoCommand`` checked against one model and completed from it.

Every refusal is one ``CommandError`` line that names what *this* model allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.catalog._model import ASPECT_WORDS, SIZES, ModelInfo, or_list, seconds_words
from bot.commands import CommandError, VideoCommand
from bot.money import UnknownPriceError

if TYPE_CHECKING:
    from bot.catalog import Catalog

_BY_SIZE = {size: key for key, size in SIZES.items()}


@dataclass(frozen=True, slots=True)
class Choice:
    """A request completed from its model: every option set, priced to the micro-dollar."""

    command: VideoCommand
    model: ModelInfo
    per_second_micros: int
    cost_micros: int


def _others(catalog: Catalog, provider_names: tuple[str, ...], test, limit: int = 4) -> str:
    names = [m.name for m in catalog.enabled(provider_names) if test(m)]
    if not names:
        return ""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _aspect_words(aspects: tuple[str, ...]) -> str:
    return or_list([f"{a} ({ASPECT_WORDS.get(a, a)})" for a in aspects])


def pick_model(catalog: Catalog, provider_names: tuple[str, ...], name: str | None) -> ModelInfo:
    """The model asked for (or the default), if a configured provider serves it.

    Raises:
        CommandError: unknown or not served here, with the names of the models that are.
    """
    available = ", ".join(m.name for m in catalog.enabled(provider_names)) or "none"
    if name is None:
        model = catalog.default_for(provider_names)
        if model is None:
            raise CommandError("No video model is available: none of the configured providers serves one.")
        return model
    model = catalog.get(name)
    if model is None:
        raise CommandError(f"There is no model {name[:40]}. Models here: {available} (/video models).")
    if model not in catalog.enabled(provider_names):
        providers = or_list(sorted({r.provider for r in model.routes}))
        raise CommandError(
            f"{model.name} is not available here: no provider for it ({providers}) is configured. "
            f"Models here: {available}."
        )
    return model


def choose(
    command: VideoCommand,
    catalog: Catalog,
    provider_names: tuple[str, ...],
    *,
    first_frame: bool = False,
) -> Choice:
    """Completes ``command`` from its model and prices it.

    Args:
        first_frame: the request comes with an image to start from.

    Raises:
        CommandError: the model does not take what was asked (the sentence says what it takes), or has no
            price for it.
    """
    model = pick_model(catalog, provider_names, command.model)
    name = model.name
    aspect, resolution = command.aspect, command.resolution
    if command.size is not None:
        mapped = _BY_SIZE.get(command.size)
        if mapped is None or mapped[0] not in model.aspects or mapped[1] not in model.resolutions:
            hint = _others(catalog, provider_names, lambda m: command.size in m.sizes())
            hint = f" Models that make {command.size}: {hint}." if hint else ""
            raise CommandError(f"{name} takes sizes {or_list(model.sizes())} (got {command.size}).{hint}")
        if aspect is not None and aspect != mapped[0]:
            raise CommandError(f"--size {command.size} is {mapped[0]}, which contradicts {aspect}; use one.")
        if resolution is not None and resolution != mapped[1]:
            raise CommandError(f"--size {command.size} is {mapped[1]}, which contradicts --resolution {resolution}.")
        aspect, resolution = mapped
    aspect = aspect or model.default_aspect
    if aspect not in model.aspects:
        raise CommandError(f"{name} takes {_aspect_words(model.aspects)}, not {aspect}.")
    resolution = resolution or model.default_resolution
    if resolution not in model.resolutions:
        raise CommandError(f"{name} takes {or_list(model.resolutions)} (got {resolution}).")
    seconds = command.seconds if command.seconds is not None else model.durations_at(resolution)[0]
    if seconds not in model.durations:
        raise CommandError(f"{name} takes {seconds_words(model.durations)} (got {seconds}).")
    if seconds not in model.durations_at(resolution):
        raise CommandError(f"{name} makes {resolution} only at {seconds_words(model.durations_at(resolution))}.")

    audio: bool | None = None
    if model.audio == "optional":
        audio = model.default_audio if command.audio is None else command.audio
    elif command.audio is False and model.audio == "always":
        raise CommandError(f"{name} always makes sound, so --silent is not available for it.")
    elif command.audio is True and model.audio == "never":
        hint = _others(catalog, provider_names, lambda m: m.audio != "never")
        raise CommandError(f"{name} makes silent clips only. Models with sound: {hint or 'none here'}.")

    if command.seed is not None and not model.seed:
        hint = _others(catalog, provider_names, lambda m: m.seed)
        raise CommandError(f"{name} does not take --seed. Models that do: {hint or 'none here'}.")
    if command.negative and not model.negative_prompt:
        hint = _others(catalog, provider_names, lambda m: m.negative_prompt)
        raise CommandError(f"{name} does not take --negative. Models that do: {hint or 'none here'}.")
    if command.cameo is not None and not model.subject_reference:
        hint = _others(catalog, provider_names, lambda m: m.subject_reference)
        if not hint:
            raise CommandError(f"{name} can't use a cameo, and no model here can. Nothing was charged.")
        example = hint.split(",")[0].split(" and ")[0]
        raise CommandError(f"{name} can't use a cameo. Models that can: {hint} (add --model {example}).")
    if first_frame and not model.first_frame and command.cameo is None:
        hint = _others(catalog, provider_names, lambda m: m.first_frame)
        raise CommandError(f"{name} can't start from an image. Models that can: {hint or 'none here'}.")

    try:
        per_second = model.price_per_second(resolution, audio)
    except UnknownPriceError as exc:
        raise CommandError(f"{exc} Nothing was charged.") from None
    completed = replace(
        command,
        model=name,
        size=model.size(aspect, resolution),
        seconds=seconds,
        aspect=aspect,
        resolution=resolution,
        audio=audio,
    )
    return Choice(command=completed, model=model, per_second_micros=per_second, cost_micros=seconds * per_second)
