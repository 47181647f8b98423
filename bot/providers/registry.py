"""The configured providers, by name: the model catalog's routes pick among them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bot.providers.base import VideoProvider


class ProviderSet:
    """Every provider this bot may send renders to, one per name (``fal``, ``openrouter``, ``openai``, ``local``).

    A job stores the name of the provider serving it, so a restarted worker asks the same one
    again; ``default`` serves jobs whose provider is not (or no longer) configured by name.
    """

    def __init__(self, providers: Mapping[str, VideoProvider], *, default: str | None = None) -> None:
        if not providers:
            raise ValueError("at least one provider is needed")
        self._providers = dict(providers)
        self.default = default if default is not None else next(iter(self._providers))
        if self.default not in self._providers:
            raise ValueError(f"no provider named {self.default}")

    @classmethod
    def single(cls, provider: VideoProvider) -> ProviderSet:
        return cls({provider.name: provider}, default=provider.name)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._providers)

    def get(self, name: str | None) -> VideoProvider:
        """The provider called ``name``, or the default one when there is none by that name."""
        if name and name in self._providers:
            return self._providers[name]
        return self._providers[self.default]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
