"""Forbidden words that can't be dodged, and cameo arguments that are bounded (issue 12, items 11 and 20)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from bot.app import App
from bot.config import Settings
from bot.consent.words import MAX_WORDS, forms, normalise, parse_words, uses_any
from tests.test_consent import register, say, start

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ｎｕｄｅ", "nude"), ("NÚDE", "nude"), ("nu\u200bde", "nude"), ("Straße", "strasse"), ("ﬁne", "fine")],
)
def test_normal_form(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize("prompt", ["alice nudes", "alice ｎｕｄｅ", "alice núde", "NUDE alice", "a Nudé, please"])
def test_bypasses_are_caught(prompt: str) -> None:
    assert uses_any(prompt, ["nude"])


@pytest.mark.parametrize("prompt", ["a prude at the beach", "nudity statistics", "denude the hill", "nu de"])
def test_harmless_words_are_not(prompt: str) -> None:
    assert not uses_any(prompt, ["nude"])


def test_the_list_is_normalised_like_the_prompt() -> None:
    # The owner typed a fullwidth, accented plural; the prompt has the plain singular.
    (word,) = parse_words(("ＮÚＤＥＳ",)).words
    assert uses_any("alice nude", [word])
    assert forms("t-shirts") == forms("T-Shirt") and uses_any("alice in a t shirt", ["t-shirt"])


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    application = await start(make_settings())
    yield application
    await application.close()


async def test_forbidden_word_bypasses_are_refused_and_nothing_is_charged(app: App) -> None:
    await register(app, "alice")
    assert (await say(app, "alice", "cameo audience everyone")).ok
    assert (await say(app, "alice", "cameo forbid nude")).ok
    for prompt in ("alice nudes", "alice ｎｕｄｅ", "alice núde"):
        reply = await say(app, "bob", f"{prompt} --cameo @alice")
        assert not reply.ok and "does not allow" in reply.text and "Nothing was charged" in reply.text
        assert reply.job is None
    assert (await app.store.ledger_totals()).reserved == 0
    fine = await say(app, "bob", "alice being a prude --cameo @alice")
    assert fine.ok, fine.text


async def test_allow_needs_a_person(app: App) -> None:
    await register(app, "alice")
    for text in ("cameo allow @", "cameo allow @@", "cameo disallow @", "cameo allow <@>"):
        reply = await say(app, "alice", text)
        assert not reply.ok and "is not a person" in reply.text, (text, reply.text)
    assert await app.bot.cameos.store.allowed_users("console:w1:alice") == []
    too_many = await say(app, "alice", "cameo allow " + " ".join(f"@u{i}" for i in range(21)))
    assert not too_many.ok and "at most 20" in too_many.text
    assert (await say(app, "alice", "cameo allow @bob")).ok


async def test_forbidden_words_are_bounded_and_status_stays_short(app: App) -> None:
    await register(app, "alice")
    flood = await say(app, "alice", "cameo forbid " + " ".join(f"word{i}" for i in range(3000)))
    assert not flood.ok and f"at most {MAX_WORDS}" in flood.text
    long = await say(app, "alice", "cameo forbid " + "x" * 41)
    assert not long.ok and "at most 40 characters" in long.text
    assert not (await say(app, "alice", "cameo forbid --- ...")).ok  # nothing that is a word
    assert await app.bot.cameos.store.forbidden_words("console:w1:alice") == []

    assert (await say(app, "alice", "cameo forbid " + " ".join(f"w{i:02d}" for i in range(30)))).ok
    over = await say(app, "alice", "cameo forbid " + " ".join(f"v{i:02d}" for i in range(21)))
    assert not over.ok and "you have 30" in over.text
    status = await say(app, "alice", "cameo status")
    assert "and 10 more" in status.text and len(status.text) < 600
