"""Reads the shipped ``bot/models.toml`` and the operator's ``REELBOT_MODELS_FILE`` into ``ModelInfo`` rows.

Every mistake in a file is one ``ConfigError`` line naming the file (or variable), the model and the key.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from bot.catalog._model import ASPECTS, AUDIO_MODES, FAMILIES, PROVIDERS, RESOLUTIONS, SIZES, ModelInfo
from bot.config import ConfigError
from bot.providers.base import Route

_REQUIRED = ("label", "family", "routes", "durations", "aspects", "resolutions", "audio", "prices")
_OPTIONAL = ("first_frame", "subject_reference", "seed", "negative_prompt", "seconds_at", "verified", "note")
_ROUTE_KEYS = ("provider", "model_id", "image_model_id", "reference_model_id")
_MAX_PRICE = 100_000_000  # $100 per second: anything above is a typo, not a price
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


class _Bad(Exception):
    """A problem at one key; ``_load_doc`` adds the file's name."""


def shipped_text() -> str:
    return resources.files("bot").joinpath("models.toml").read_text("utf-8")


def read_doc(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid TOML ({reason}).") from None


def _words(value: Any, key: str, allowed: tuple[str, ...] | frozenset[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{key} must be a non-empty list of strings")
    out = tuple(v.strip().lower() for v in value)
    if allowed is not None:
        for item in out:
            if item not in allowed:
                raise _Bad(f"{key} has {item!r}; allowed: {', '.join(sorted(allowed))}")
    if len(set(out)) != len(out):
        raise _Bad(f"{key} lists something twice")
    return out


def _seconds(value: Any, key: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 120 for v in value)
    ):
        raise _Bad(f"{key} must be a non-empty list of whole seconds from 1 to 120")
    return tuple(sorted(set(value)))


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{key} must be true or false")
    return value


def _routes(value: Any) -> tuple[Route, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad("routes must be a non-empty list of {provider, model_id} tables")
    routes = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Bad(f'routes[{i}] must be a table such as {{provider = "fal", model_id = "..."}}')
        extra = sorted(set(item) - set(_ROUTE_KEYS))
        if extra:
            raise _Bad(f"routes[{i}] has an unknown key {extra[0]!r}; keys: {', '.join(_ROUTE_KEYS)}")
        if not all(isinstance(v, str) for v in item.values()):
            raise _Bad(f"routes[{i}] values must be strings")
        provider = item.get("provider", "").strip().lower()
        if provider not in PROVIDERS:
            raise _Bad(f"routes[{i}].provider must be one of {', '.join(sorted(PROVIDERS))} (got {provider!r})")
        if not item.get("model_id", "").strip():
            raise _Bad(f"routes[{i}].model_id is missing")
        routes.append(
            Route(
                provider=provider,
                model_id=item["model_id"].strip(),
                image_model_id=item.get("image_model_id", "").strip(),
                reference_model_id=item.get("reference_model_id", "").strip(),
            )
        )
    return tuple(routes)


def _prices(value: Any, resolutions: tuple[str, ...]) -> dict[tuple[str, bool], int]:
    if not isinstance(value, dict) or not value:
        raise _Bad('prices must be a table such as {"720p" = {silent = 30_000, sound = 50_000}}')
    prices: dict[tuple[str, bool], int] = {}
    for resolution, by_sound in value.items():
        key = f"prices.{resolution}"
        if resolution not in resolutions:
            raise _Bad(f"{key}: {resolution} is not one of the model's resolutions ({', '.join(resolutions)})")
        if not isinstance(by_sound, dict) or not by_sound:
            raise _Bad(f"{key} must be a table with silent and/or sound")
        for choice, micros in by_sound.items():
            if choice not in ("silent", "sound"):
                raise _Bad(f"{key} has {choice!r}; only silent and sound")
            if isinstance(micros, bool) or not isinstance(micros, int):
                raise _Bad(f"{key}.{choice} must be whole micro-USD per second, e.g. 50_000 for $0.05/s")
            if not 1 <= micros <= _MAX_PRICE:
                raise _Bad(f"{key}.{choice} must be from 1 to {_MAX_PRICE:_} micro-USD per second")
            prices[(resolution, choice == "sound")] = micros
    return prices


def build_model(name: str, doc: dict[str, Any]) -> ModelInfo:
    """One ``ModelInfo`` from its TOML table (shipped keys already merged in).

    Raises:
        _Bad: naming the key that is wrong.
    """
    if not name or set(name) - _NAME_CHARS or len(name) > 40 or not name[0].isalnum():
        raise _Bad("a model name is 1-40 lower-case letters, digits, '.', '-' or '_'")
    missing = [key for key in _REQUIRED if key not in doc]
    if missing:
        raise _Bad(f"is missing {', '.join(missing)}")
    extra = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
    if extra:
        raise _Bad(f"has an unknown key {extra[0]!r}")
    if not isinstance(doc["label"], str) or not doc["label"].strip():
        raise _Bad("label must be a non-empty string")
    family = str(doc["family"]).strip().lower()
    if family not in FAMILIES:
        raise _Bad(f"family must be one of {', '.join(sorted(FAMILIES))} (got {doc['family']!r})")
    audio = str(doc["audio"]).strip().lower()
    if audio not in AUDIO_MODES:
        raise _Bad(f"audio must be always, never or optional (got {doc['audio']!r})")
    aspects = _words(doc["aspects"], "aspects", ASPECTS)
    resolutions = tuple(r for r in RESOLUTIONS if r in _words(doc["resolutions"], "resolutions", RESOLUTIONS))
    durations = _seconds(doc["durations"], "durations")
    seconds_at: dict[str, tuple[int, ...]] = {}
    raw_at = doc.get("seconds_at", {})
    if not isinstance(raw_at, dict):
        raise _Bad('seconds_at must be a table such as {"1080p" = [8]}')
    for resolution, allowed in raw_at.items():
        if resolution not in resolutions:
            raise _Bad(f"seconds_at.{resolution}: not one of the model's resolutions")
        limited = _seconds(allowed, f"seconds_at.{resolution}")
        if set(limited) - set(durations):
            raise _Bad(f"seconds_at.{resolution} has lengths that are not in durations")
        seconds_at[resolution] = limited
    note = doc.get("note", "")
    if not isinstance(note, str):
        raise _Bad("note must be a string")
    assert all((a, r) in SIZES for a in aspects for r in resolutions)
    return ModelInfo(
        name=name,
        family=family,
        label=doc["label"].strip(),
        routes=_routes(doc["routes"]),
        durations=durations,
        aspects=aspects,
        resolutions=resolutions,
        audio=audio,
        prices=_prices(doc["prices"], resolutions),
        first_frame=_flag(doc.get("first_frame", False), "first_frame"),
        subject_reference=_flag(doc.get("subject_reference", False), "subject_reference"),
        seed=_flag(doc.get("seed", False), "seed"),
        negative_prompt=_flag(doc.get("negative_prompt", False), "negative_prompt"),
        seconds_at=seconds_at,
        verified=_flag(doc.get("verified", False), "verified"),
        note=note.strip(),
    )


def merge_tables(
    shipped: dict[str, dict[str, Any]], operator: dict[str, Any], where: str
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The shipped model tables with the operator's removals, changes and additions applied.

    Returns:
        The merged tables (in order: shipped ones first, then new ones) and the operator's ``default``.
    """
    extra = sorted(set(operator) - {"default", "remove", "models"})
    if extra:
        raise ConfigError(f"{where}: unknown top-level key {extra[0]!r}; keys: default, remove, models.")
    merged = {name: dict(table) for name, table in shipped.items()}
    remove = operator.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(n, str) for n in remove):
        raise ConfigError(f"{where}: remove must be a list of model names.")
    for name in remove:
        if name.strip().lower() not in merged:
            raise ConfigError(f"{where}: remove names {name!r}, which is not a shipped model.")
        del merged[name.strip().lower()]
    models = operator.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f'{where}: models must be tables such as [models."veo-3.1-lite"].')
    for raw_name, table in models.items():
        name = raw_name.strip().lower()
        if not isinstance(table, dict):
            raise ConfigError(f'{where}: models."{raw_name}" must be a table.')
        merged[name] = {**merged.get(name, {}), **table}
    default = operator.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{where}: default must be a model name.")
    return merged, default


def build_models(tables: dict[str, dict[str, Any]], where: str) -> tuple[ModelInfo, ...]:
    models = []
    for name, table in tables.items():
        try:
            models.append(build_model(name, table))
        except _Bad as exc:
            raise ConfigError(f'{where}: models."{name}" {exc}.') from None
    if not models:
        raise ConfigError(f"{where}: no models are left; keep at least one.")
    return tuple(models)


def load_file(path: Path) -> dict[str, Any]:
    where = f"REELBOT_MODELS_FILE ({path})"
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read ({type(exc).__name__}).") from None
    return read_doc(text, where)
