"""The model catalog: what people can ask for by name, who serves it, what it takes and what it costs.

``load_catalog`` reads the shipped ``bot/models.toml`` plus the operator's ``REELBOT_MODELS_FILE``; ``choose``
checks a parsed ``/video`` request against one model and prices it; ``Catalog.routes_for`` and
``Catalog.spec_for`` are what the worker needs to send a job to each provider in turn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from bot.catalog._choose import Choice, choose, pick_model
from bot.catalog._load import build_models, load_file, merge_tables, read_doc, shipped_text
from bot.catalog._model import ASPECT_WORDS, ASPECTS, RESOLUTIONS, SIZES, ModelInfo, or_list, seconds_words
from bot.config import ConfigError
from bot.jobs import Job
from bot.money import UnknownPriceError
from bot.providers.base import ReferenceImage, RenderSpec, Route

__all__ = [
    "ASPECTS",
    "ASPECT_WORDS",
    "RESOLUTIONS",
    "SIZES",
    "Catalog",
    "Choice",
    "ClipPromise",
    "ModelInfo",
    "choose",
    "load_catalog",
    "or_list",
    "pick_model",
    "seconds_words",
    "shipped_catalog",
]

LOCAL = "local"
#: Providers that render exactly the asked frame; the aggregators' models choose their own size per aspect.
_EXACT_SIZE_PROVIDERS = frozenset({"local", "openai"})


@dataclass(frozen=True, slots=True)
class ClipPromise:
    """What a finished clip must be, as keyword arguments for ``bot.media.probe_clip``."""

    seconds: int
    size: str
    sound: bool
    exact_size: bool


@dataclass(frozen=True)
class Catalog:
    """The models in order (the order ``/video models`` and the platforms' choices show), and the default."""

    models: tuple[ModelInfo, ...]
    default: str

    def __post_init__(self) -> None:
        if self.get(self.default) is None:
            raise ConfigError(f"The default model {self.default!r} is not in the catalog.")

    def get(self, name: str) -> ModelInfo | None:
        name = name.strip().lower()
        return next((m for m in self.models if m.name == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @staticmethod
    def local_stands_in(provider_names: tuple[str, ...] | list[str]) -> bool:
        """With only the local renderer configured it renders every model (priced like the model)."""
        return tuple(provider_names) == (LOCAL,)

    def enabled(self, provider_names: tuple[str, ...] | list[str]) -> tuple[ModelInfo, ...]:
        """The models a configured provider serves, in catalog order."""
        if self.local_stands_in(provider_names):
            return self.models
        configured = set(provider_names)
        return tuple(m for m in self.models if any(r.provider in configured for r in m.routes))

    def default_for(self, provider_names: tuple[str, ...] | list[str]) -> ModelInfo | None:
        """The default model when it is served here, else the first model that is."""
        enabled = self.enabled(provider_names)
        default = self.get(self.default)
        if default in enabled:
            return default
        return enabled[0] if enabled else None

    def routes_for(self, model: ModelInfo | str, provider_names: tuple[str, ...] | list[str]) -> tuple[Route, ...]:
        """The configured routes for ``model``, in order of preference (the local stand-in when only it is)."""
        info = self.get(model) if isinstance(model, str) else model
        if info is None:
            return ()
        if self.local_stands_in(provider_names):
            own = tuple(r for r in info.routes if r.provider == LOCAL)
            return own or (Route(LOCAL, info.name),)
        configured = set(provider_names)
        return tuple(r for r in info.routes if r.provider in configured)

    def spec_for(self, job: Job, route: Route, reference: ReferenceImage | None) -> RenderSpec:
        """The render of ``job`` through ``route`` (the worker builds one per provider it tries)."""
        info = self.get(job.options.model)
        options = job.options
        audio = options.audio
        if route.provider == LOCAL and info is not None:
            audio = info.makes_sound(options.audio)  # the stand-in cannot know the model makes sound or not
        return RenderSpec(
            prompt=job.prompt,
            model=options.model,
            size=options.size,
            seconds=options.seconds,
            reference=reference,
            aspect=options.aspect,
            resolution=options.resolution,
            audio=audio,
            seed=options.seed,
            negative_prompt=options.negative,
            family=info.family if info is not None else "",
            route=route,
        )

    def promise_for(self, job: Job) -> ClipPromise:
        """What the downloaded clip of ``job`` must be: length, frame, and whether it must have sound."""
        info = self.get(job.options.model)
        sound = info.makes_sound(job.options.audio) if info is not None else True
        return ClipPromise(
            seconds=job.options.seconds,
            size=job.options.size,
            sound=sound,
            exact_size=job.provider in _EXACT_SIZE_PROVIDERS,
        )

    def price_of(self, job: Job) -> int:
        """The per-second price ``job`` was sold at (raises ``UnknownPriceError`` if it is gone)."""
        info = self.get(job.options.model)
        if info is None:
            raise UnknownPriceError(f"{job.options.model} is no longer in the catalog.")
        return info.price_per_second(job.options.resolution, job.options.audio)


def load_catalog(*, models_file: Path | None, default_model: str | None) -> Catalog:
    """The shipped catalog with the operator's file applied and the default chosen.

    Raises:
        ConfigError: one line naming the file or variable and what is wrong.
    """
    shipped_where = "bot/models.toml"
    shipped_doc = read_doc(shipped_text(), shipped_where)
    shipped_tables = shipped_doc.get("models", {})
    build_models(shipped_tables, shipped_where)  # the shipped file must be valid on its own
    default = shipped_doc.get("default")
    tables = shipped_tables
    where = shipped_where
    if models_file is not None:
        where = f"REELBOT_MODELS_FILE ({models_file})"
        tables, operator_default = merge_tables(shipped_tables, load_file(models_file), where)
        if operator_default is not None:
            if operator_default.strip().lower() not in tables:
                raise ConfigError(f"{where}: default names {operator_default!r}, which is not a model.")
            default = operator_default
    models = build_models(tables, where)
    names = [m.name for m in models]
    if default_model is not None:
        default = default_model.strip().lower()
        if default not in names:
            raise ConfigError(f"REELBOT_DEFAULT_MODEL: {default_model!r} is not a model; models: {', '.join(names)}.")
    if not isinstance(default, str) or default.strip().lower() not in names:
        default = names[0]
    return Catalog(models=models, default=default.strip().lower())


@functools.cache
def shipped_catalog() -> Catalog:
    """The shipped catalog alone (what a bot built without configuration uses)."""
    return load_catalog(models_file=None, default_model=None)
