"""One catalog row (``ModelInfo``) and the frame sizes its aspect and resolution names stand for."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.money import UnknownPriceError, clip_cost, format_usd
from bot.providers.base import Route

FAMILIES = frozenset({"veo", "kling", "seedance", "ltx", "wan", "sora"})
AUDIO_MODES = frozenset({"always", "never", "optional"})
PROVIDERS = frozenset({"fal", "openrouter", "openai", "local"})

#: The exact frame for each (aspect, resolution); the resolution names the short side.
SIZES: dict[tuple[str, str], str] = {
    ("16:9", "480p"): "854x480",
    ("9:16", "480p"): "480x854",
    ("1:1", "480p"): "480x480",
    ("16:9", "720p"): "1280x720",
    ("9:16", "720p"): "720x1280",
    ("1:1", "720p"): "720x720",
    ("16:9", "1080p"): "1920x1080",
    ("9:16", "1080p"): "1080x1920",
    ("1:1", "1080p"): "1080x1080",
}
ASPECTS = ("16:9", "9:16", "1:1")
RESOLUTIONS = ("480p", "720p", "1080p")
ASPECT_WORDS = {"16:9": "landscape", "9:16": "portrait", "1:1": "square"}


def or_list(items: tuple[str, ...] | list[str], word: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {word} {items[-1]}"


def seconds_words(durations: tuple[int, ...]) -> str:
    """``4, 6 or 8 seconds``; a run of four or more whole seconds reads ``4 to 15 seconds``."""
    if len(durations) >= 4 and durations == tuple(range(durations[0], durations[-1] + 1)):
        return f"{durations[0]} to {durations[-1]} seconds"
    return or_list([str(d) for d in durations]) + " seconds"


@dataclass(frozen=True)
class ModelInfo:
    """A model people can ask for by ``name``, and everything reelbot must know to sell it.

    Attributes:
        name: what people type (``veo-3.1-lite``); lower case.
        family: whose input conventions it follows (``veo``, ``kling``, ``seedance``, ``ltx``, ``wan``, ``sora``).
        routes: the providers serving it, in order of preference.
        durations: the lengths it takes, in whole seconds, ascending.
        aspects, resolutions: what it takes, from ``ASPECTS`` and ``RESOLUTIONS``.
        audio: ``always`` (sound, no choice), ``never`` (silent) or ``optional`` (``--audio``/``--silent``).
        first_frame: takes an attached image as the first frame.
        subject_reference: takes a cameo as a subject reference image.
        seed, negative_prompt: honours ``--seed`` and ``--negative``.
        prices: micro-USD per second by (resolution, with sound); a missing pair is refused, never free.
        seconds_at: lengths a resolution is limited to (Veo 3.1 Lite makes 1080p only at 8 s).
        verified: whether every price and limit here was read on the providers' own pages.
        note: where the figures come from, shown in ``/video help MODEL``.
    """

    name: str
    family: str
    label: str
    routes: tuple[Route, ...]
    durations: tuple[int, ...]
    aspects: tuple[str, ...]
    resolutions: tuple[str, ...]
    audio: str
    prices: dict[tuple[str, bool], int] = field(hash=False)
    first_frame: bool = False
    subject_reference: bool = False
    seed: bool = False
    negative_prompt: bool = False
    seconds_at: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    verified: bool = False
    note: str = ""

    @property
    def default_seconds(self) -> int:
        """The shortest length: the cheapest clip is the one nobody is surprised by."""
        return self.durations[0]

    @property
    def default_aspect(self) -> str:
        return "16:9" if "16:9" in self.aspects else self.aspects[0]

    @property
    def default_resolution(self) -> str:
        return "720p" if "720p" in self.resolutions else self.resolutions[0]

    @property
    def default_audio(self) -> bool:
        """Sound unless the model never makes any (providers default optional sound to on)."""
        return self.audio != "never"

    def makes_sound(self, audio: bool | None) -> bool:
        """Whether a clip asked with ``audio`` (None: the model's default) must carry a sound track."""
        if self.audio == "optional":
            return self.default_audio if audio is None else audio
        return self.audio == "always"

    def price_per_second(self, resolution: str, audio: bool | None) -> int:
        """Micro-USD per second at ``resolution`` with or without sound (None: the model's default).

        Raises:
            UnknownPriceError: the catalog has no price for that choice, so the clip is refused.
        """
        with_sound = self.makes_sound(audio)
        try:
            return self.prices[(resolution, with_sound)]
        except KeyError:
            sound = "with sound" if with_sound else "without sound"
            raise UnknownPriceError(
                f"No price is known for {self.name} at {resolution} {sound}, so I can't make it."
            ) from None

    def clip_cost(self, seconds: int, resolution: str, audio: bool | None) -> int:
        """The exact cost of one clip in micro-USD."""
        return clip_cost(self.price_per_second(resolution, audio), seconds)

    def size(self, aspect: str, resolution: str) -> str:
        """The exact frame ``WxH`` for ``aspect`` at ``resolution``."""
        return SIZES[(aspect, resolution)]

    def sizes(self) -> tuple[str, ...]:
        return tuple(SIZES[(a, r)] for r in self.resolutions for a in self.aspects if (a, r) in SIZES)

    def durations_at(self, resolution: str) -> tuple[int, ...]:
        return self.seconds_at.get(resolution, self.durations)

    def cheapest_per_second(self) -> int | None:
        return min(self.prices.values(), default=None)

    def price_words(self) -> str:
        """``720p $0.03/s silent, $0.05/s with sound · 1080p ...``"""
        parts = []
        for resolution in self.resolutions:
            prices = []
            for sound, word in ((False, "silent"), (True, "with sound")):
                if (resolution, sound) in self.prices:
                    prices.append(f"{format_usd(self.prices[(resolution, sound)])}/s {word}")
            if prices:
                parts.append(f"{resolution} " + ", ".join(prices))
        return " · ".join(parts) or "no price (refused)"
