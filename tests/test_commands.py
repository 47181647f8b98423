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
    HelpCommand,
    JobsCommand,
    ModelsCommand,
    RetryCommand,
    VideoCommand,
    parse,
)


def test_defaults_leave_every_option_to_the_model() -> None:
    assert parse("a calico cat") == VideoCommand("a calico cat")


def test_flags_anywhere_and_quoted_text_stays_prompt() -> None:
    cmd = parse('--pro a "cat --seconds 8" playing --seconds 8 piano --portrait')
    assert cmd == VideoCommand("a cat --seconds 8 playing piano", "sora-2-pro", seconds=8, aspect="9:16")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat --model veo-3.1-lite --size 1920x1080", {"model": "veo-3.1-lite", "size": "1920x1080"}),
        ("cat --model=Veo-3.1 --seconds=6s", {"model": "veo-3.1", "seconds": 6}),
        ("cat —pro —seconds 8", {"model": "sora-2-pro", "seconds": 8}),  # phones turn -- into an em dash
        ("cat --landscape", {"aspect": "16:9"}),
        ("cat --square", {"aspect": "1:1"}),
        ("cat --aspect 9:16 --portrait", {"aspect": "9:16"}),
        ("cat --resolution 1080P", {"resolution": "1080p"}),
        ("cat --SECONDS 8s", {"seconds": 8}),
        ("cat --size 720×1280", {"size": "720x1280"}),
        ("cat --audio", {"audio": True}),
        ("cat --silent", {"audio": False}),
        ("cat --seed 42", {"seed": 42}),
        ('cat --negative "blurry,  text" on a mat', {"negative": "blurry, text", "prompt": "cat on a mat"}),
        ("cat --cameo <@U123|alice>", {"cameo": "<@U123|alice>"}),
    ],
)
def test_valid_flags(text: str, expected: dict[str, object]) -> None:
    cmd = parse(text)
    assert isinstance(cmd, VideoCommand)
    for name, value in expected.items():
        assert getattr(cmd, name) == value, name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Tell me what to film"),
        ("   ", "Tell me what to film"),
        ("--pro --seconds 8", "Tell me what to film"),
        ("cat --seconds -4", "--seconds takes a whole number such as 8 (got -4)"),
        ("cat --seconds 99999999999999999999", "--seconds takes a whole number"),
        ("cat --seconds eight", "--seconds takes a whole number"),
        ("cat --seconds ⁴", "--seconds takes a whole number such as 8 (got ⁴)."),  # issue 12 item 6
        ("cat --seconds ④", "--seconds takes a whole number such as 8 (got ④)."),
        ("cat --seconds ٤", "--seconds takes a whole number"),  # an Arabic-Indic four
        ("cat --seed 1.5", "--seed takes a whole number such as 42"),
        ("cat --seed 99999999999", "--seed takes a whole number"),
        ("cat --size big", "--size takes WIDTHxHEIGHT"),
        ("cat --size 0x0", "--size takes WIDTHxHEIGHT"),
        ("cat --aspect wide", "--aspect takes a ratio such as 16:9"),
        ("cat --resolution 4k", "--resolution takes 720p or 1080p (got 4k)"),
        ("cat --model $(reboot)", "--model takes a model name such as veo-3.1-lite"),
        ("cat --pro --model veo-3.1", "--pro means --model sora-2-pro; it contradicts --model veo-3.1"),
        ("cat --portrait --landscape", "contradict"),
        ("cat --square --portrait", "contradict"),
        ("cat --aspect 16:9 --portrait", "--aspect 16:9 contradicts --portrait"),
        ("cat --audio --silent", "--audio and --silent contradict each other"),
        ("cat --seconds 4 --seconds 8", "more than once"),
        ("cat --pro --pro", "more than once"),
        ("cat --foo", "Unknown option --foo"),
        ("cat --seconds", "--seconds needs a value"),
        ("cat --negative", "--negative needs a value"),
        ("cat --pro=yes", "--pro takes no value"),
        ("cat --silent=1", "--silent takes no value"),
        ("cat --negative " + "x" * 2_001, "--negative is 2,001 characters; the limit is 2,000"),
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


@pytest.mark.parametrize(
    "text",
    [
        '"a cat --pro --seconds 8',  # issue 12 item 19: the flags after an unclosed quote must not apply
        'a cat --pro "--seconds 8',
        "\u201ca cat --pro --seconds 8",
        'a 12" pizza',
    ],
)
def test_an_unclosed_quote_is_refused(text: str) -> None:
    with pytest.raises(CommandError, match=r"quote \(\"\) that is never closed"):
        parse(text)


@pytest.mark.parametrize(
    ("text", "usage"),
    [
        ("cancel a b", "Usage: /video cancel JOB."),
        ("retry a b", "Usage: /video retry JOB."),
        ("budget please", "Usage: /video budget."),
        ("Jobs all", "Usage: /video jobs."),
        ("help me please", "Usage: /video help [MODEL]."),
        ("models please", "Usage: /video models."),
        ("cameo lol", "Usage: /video cameo register|"),
        ("cameo", "Usage: /video cameo register|"),
    ],
)
def test_a_first_word_that_is_a_subcommand_never_becomes_a_prompt(text: str, usage: str) -> None:
    """Issue 12 item 5: these used to render (and charge) a clip of the words."""
    with pytest.raises(CommandError) as info:
        parse(text)
    assert str(info.value).startswith(usage)
    assert f'quote them: /video "{text}"' in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "\u2800\u2800",  # braille blanks
        "\u3164\u3164 \u115f\u1160 \uffa0",  # Hangul fillers
        "\U000e0061\U000e0062\U000e0063",  # Unicode tag characters
        "\ufe0f" * 5_000,  # thousands of variation selectors
        "\U000e0100" * 100 + "\u200b\u200d\u2060\u034f",
        "\u2800 --pro --seconds 8",
    ],
)
def test_invisible_prompts_are_empty(text: str) -> None:
    """Issue 12 item 13: invisible and format characters are stripped before the empty-prompt check."""
    with pytest.raises(CommandError, match="Tell me what to film"):
        parse(text)


def test_invisible_characters_are_dropped_from_a_real_prompt() -> None:
    cmd = parse("a\u2800 cat\U000e0041\ufe0f on\u3164 a mat")
    assert isinstance(cmd, VideoCommand) and cmd.prompt == "a cat on a mat"


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
        ("help Veo-3.1-Lite", HelpCommand("veo-3.1-lite")),
        ("models", ModelsCommand()),
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


def test_subcommand_words_stay_prompt_when_quoted_or_not_first() -> None:
    assert parse('"help me film a cat"') == VideoCommand("help me film a cat")
    assert parse('"budget" airline ad') == VideoCommand("budget airline ad")
    assert parse("an airline budget ad") == VideoCommand("an airline budget ad")
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
            assert result.prompt.strip() == result.prompt
            assert result.seconds is None or 0 <= result.seconds <= 999


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
                "--square",
                "--aspect",
                "9:16",
                "--resolution",
                "1080p",
                "--audio",
                "--silent",
                "--seed",
                "--negative",
                "④",
                "\u2800",
                "\U000e0041",
                "help",
                "cancel",
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


def test_a_lone_surrogate_is_refused_with_one_sentence() -> None:
    with pytest.raises(CommandError, match="broken character"):
        parse("a cat \ud83d playing piano")
