"""The shared command language: every mistake is one line that says what is allowed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.commands import (
    AdminBudgetCommand,
    AdminUsageCommand,
    BudgetCommand,
    CameoCommand,
    CancelCommand,
    CommandError,
    CommandRules,
    HelpCommand,
    JobsCommand,
    RetryCommand,
    VideoCommand,
    parse,
)


def test_defaults() -> None:
    assert parse("a calico cat") == VideoCommand("a calico cat", "sora-2", "1280x720", 4)


def test_flags_anywhere_and_quoted_text_stays_prompt() -> None:
    cmd = parse('--pro a "cat --seconds 8" playing --seconds 8 piano --portrait')
    assert cmd == VideoCommand("a cat --seconds 8 playing piano", "sora-2-pro", "720x1280", 8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat --model sora-2-pro --size 1792x1024", ("sora-2-pro", "1792x1024", 4)),
        ("cat --model=sora-2-pro --size=1024x1792 --seconds=12", ("sora-2-pro", "1024x1792", 12)),
        ("cat —pro —seconds 8", ("sora-2-pro", "1280x720", 8)),  # phones turn -- into an em dash
        ("cat --landscape", ("sora-2", "1280x720", 4)),
        ("cat --SECONDS 8s", ("sora-2", "1280x720", 8)),
        ("cat --size 720×1280", ("sora-2", "720x1280", 4)),
    ],
)
def test_valid_flags(text: str, expected: tuple[str, str, int]) -> None:
    cmd = parse(text)
    assert isinstance(cmd, VideoCommand)
    assert (cmd.model, cmd.size, cmd.seconds) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Tell me what to film"),
        ("   ", "Tell me what to film"),
        ("--pro --seconds 8", "Tell me what to film"),
        ("cat --seconds 7", "--seconds takes 4, 8 or 12 (got 7)"),
        ("cat --seconds -4", "--seconds takes"),
        ("cat --seconds 99999999999999999999", "--seconds takes"),
        ("cat --seconds 16", "--seconds takes 4, 8 or 12"),
        ("cat --size 1792x1024", "sora-2 takes sizes 720x1280 or 1280x720 (got 1792x1024). Add --pro"),
        ("cat --pro --size 1080x1920", "sora-2-pro takes sizes 720x1280, 1280x720, 1024x1792 or 1792x1024"),
        ("cat --size big", "--size takes WIDTHxHEIGHT"),
        ("cat --model sora-3", "--model takes sora-2 or sora-2-pro (got sora-3)"),
        ("cat --pro --model sora-2", "contradicts"),
        ("cat --portrait --landscape", "contradict"),
        ("cat --size 1280x720 --portrait", "contradicts"),
        ("cat --seconds 4 --seconds 8", "more than once"),
        ("cat --pro --pro", "more than once"),
        ("cat --foo", "Unknown option --foo"),
        ("cat --seconds", "--seconds needs a value"),
        ("cat --pro=yes", "--pro takes no value"),
        ("cat \u202e gnirts", "right-to-left"),
        ("cat \x07 bell", "control characters"),
        ("x" * 32_001, "32,001 characters; the limit is 32,000"),
        ("x" * 50_000, "at most 32,000"),
        ("cancel", "Which job?"),
        ("admin budget @bob lots", "amount in US dollars"),
        ("admin budget @bob -5", "between $0 and $1,000,000"),
        ("admin frobnicate", "Admin commands"),
    ],
)
def test_mistakes_get_one_line_that_says_what_is_allowed(text: str, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_configured_long_clips_and_1080p() -> None:
    rules = CommandRules(allow_long_clips=True, allow_1080p=True)
    cmd = parse("cat --pro --seconds 20 --size 1920x1080", rules)
    assert isinstance(cmd, VideoCommand) and cmd.seconds == 20 and cmd.size == "1920x1080"
    with pytest.raises(CommandError, match="sora-2 takes sizes"):
        parse("cat --size 1920x1080", rules)


def test_prompt_of_exactly_32000_characters_is_fine() -> None:
    cmd = parse("y" * 32_000)
    assert isinstance(cmd, VideoCommand) and len(cmd.prompt) == 32_000


def test_zero_width_characters_are_dropped_and_text_normalised() -> None:
    cmd = parse("ca\u200bt cafe\u0301")
    assert isinstance(cmd, VideoCommand) and cmd.prompt == "cat café"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("help", HelpCommand()),
        ("budget", BudgetCommand()),
        ("jobs", JobsCommand()),
        ("cancel abc123", CancelCommand("abc123")),
        ("retry abc123", RetryCommand("abc123")),
        ("admin usage", AdminUsageCommand()),
        ("admin budget <@U1|bob> $50", AdminBudgetCommand("<@U1|bob>", Decimal("50"))),
        ("admin budget default 20.50", AdminBudgetCommand("default", Decimal("20.50"))),
        ("cameo approve r1 --always", CameoCommand("approve", ("r1",), always=True)),
    ],
)
def test_subcommands(text: str, expected: object) -> None:
    assert parse(text) == expected


def test_subcommand_words_in_a_longer_prompt_are_prompt() -> None:
    assert isinstance(parse("help me film a cat"), VideoCommand)
    assert isinstance(parse("budget airline ad"), VideoCommand)
    assert isinstance(parse('"help"'), VideoCommand)


def test_injection_is_just_prompt_text() -> None:
    cmd = parse("$(rm -rf /) `id` <script>alert(1)</script> '; DROP TABLE jobs; --")
    assert isinstance(cmd, VideoCommand)
    assert "DROP TABLE" in cmd.prompt


def test_a_huge_number_of_flags_is_refused_quickly() -> None:
    with pytest.raises(CommandError, match="more than once"):
        parse("cat " + "--pro " * 5_000)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parser_raises_only_its_own_error(text: str) -> None:
    try:
        result = parse(text)
    except CommandError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        if isinstance(result, VideoCommand):
            assert 1 <= len(result.prompt) <= 32_000
            assert result.seconds in (4, 8, 12)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "--pro",
                "--seconds",
                "8",
                "--size",
                "720x1280",
                "--model",
                "sora-2",
                "--portrait",
                "--landscape",
                "--cameo",
                "@al",
                '"',
                "cat",
                "—pro",
                "--",
                "=",
                "--seconds=4",
            ]
        ),
        max_size=30,
    )
)
def test_parser_on_flag_soup(words: list[str]) -> None:
    try:
        parse(" ".join(words))
    except CommandError:
        pass
