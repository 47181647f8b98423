"""Forbidden words: one normal form for the owner's list and the prompt alike.

A word is compared after Unicode NFKC (fullwidth ``ｎｕｄｅ`` becomes ``nude``), case-folding,
stripping accents (``núde``) and invisible format characters (a zero-width space inside a word),
and then by its Snowball stem, so ``nudes`` and ``nude`` match while ``nudity`` and ``prude`` do
not. An entry of several words (``t-shirt``) matches the same words in a row. The Snowball stemmer
is English; other languages are matched on the normalised word itself.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import snowballstemmer

MAX_WORDS = 50  # per cameo
MAX_WORD_CHARS = 40
MAX_SHOWN = 20  # how many a status or reply lists before "and N more"

_TOKEN = re.compile(r"\w+")


@functools.cache
def _stemmer() -> snowballstemmer.stemmer:
    import snowballstemmer  # its stemmers for every language take ~30 ms to import: only when words are compared

    return snowballstemmer.stemmer("english")


def normalise(text: str) -> str:
    """NFKC, case-folded, without accents or invisible format characters."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFD", folded)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    return unicodedata.normalize("NFC", kept)


def forms(text: str) -> tuple[str, ...]:
    """The stems of the words in ``text``, in order."""
    tokens = _TOKEN.findall(normalise(text))
    return tuple(_stemmer().stemWords(tokens)) if tokens else ()


def uses_any(prompt: str, words: list[str]) -> bool:
    """Whether ``prompt`` uses any of ``words`` (in any of its forms)."""
    stems = forms(prompt)
    for word in words:
        wanted = forms(word)
        if not wanted:
            continue
        size = len(wanted)
        if any(stems[i : i + size] == wanted for i in range(len(stems) - size + 1)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class WordList:
    """The words of a ``forbid``/``unforbid`` command, cleaned, or the sentence refusing them."""

    words: tuple[str, ...] = ()
    refusal: str = ""


def parse_words(args: tuple[str, ...]) -> WordList:
    """Normalises and bounds the words a person typed."""
    cleaned: list[str] = []
    for arg in args:
        word = " ".join(_TOKEN.findall(normalise(arg)))
        if not word:
            continue
        if len(word) > MAX_WORD_CHARS:
            return WordList(refusal=f"Forbidden words are at most {MAX_WORD_CHARS} characters each.")
        if word not in cleaned:
            cleaned.append(word)
    if not cleaned:
        return WordList(refusal="Which words? /video cameo forbid WORD...")
    if len(cleaned) > MAX_WORDS:
        return WordList(refusal=f"A cameo can forbid at most {MAX_WORDS} words; that was {len(cleaned)}.")
    return WordList(words=tuple(sorted(cleaned)))


def listing(words: list[str] | tuple[str, ...]) -> str:
    """Words for a reply, at most ``MAX_SHOWN`` of them."""
    shown = ", ".join(words[:MAX_SHOWN])
    rest = len(words) - MAX_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown
