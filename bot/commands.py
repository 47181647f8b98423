"""The command language every adapter shares.

``/video PROMPT [--model NAME] [--seconds N] [--portrait|--landscape|--square] [--aspect 16:9]
[--resolution 720p] [--size WxH] [--audio|--silent] [--seed N] [--negative "TEXT"] [--cameo @name] [--pro]``
plus the subcommands in ``SUBCOMMANDS``. Flags may stand anywhere in the text; text inside double quotes always
stays prompt, and an unclosed quote is refused (so flags after it never apply by accident).

Parsing is total and knows no catalog: every input gives a ``Command`` or a one-line ``CommandError``. What a
model takes (lengths, aspects, prices) is checked in a second step, ``bot.catalog.choose``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

MAX_PROMPT_CHARS = 32_000
MAX_TEXT_CHARS = 40_000
MAX_NEGATIVE_CHARS = 2_000
FLAGS = (
    "--model",
    "--pro",
    "--seconds",
    "--size",
    "--portrait",
    "--landscape",
    "--square",
    "--aspect",
    "--resolution",
    "--audio",
    "--silent",
    "--seed",
    "--negative",
    "--cameo",
)
_VALUE_FLAGS = frozenset(
    {"--model", "--seconds", "--size", "--aspect", "--resolution", "--seed", "--negative", "--cameo"}
)
_ORIENTATIONS = {"--landscape": "16:9", "--portrait": "9:16", "--square": "1:1"}
PRO_MODEL = "sora-2-pro"  # what --pro stands for
CAMEO_ACTIONS = frozenset(
    {
        "register",
        "confirm",
        "audience",
        "allow",
        "disallow",
        "forbid",
        "unforbid",
        "revoke",
        "status",
        "history",
        "approve",
        "deny",
        "verify",
    }
)
SUBCOMMANDS = ("help", "models", "budget", "jobs", "cancel", "retry", "admin", "cameo")
USAGE = (
    "/video PROMPT [--model NAME] [--seconds N] [--portrait|--landscape|--square] [--resolution 720p|1080p] "
    "[--audio|--silent] [--seed N] [--negative TEXT] [--cameo @name]"
)
_USAGES = {
    "help": "/video help [MODEL]",
    "models": "/video models",
    "budget": "/video budget",
    "jobs": "/video jobs",
    "cancel": "/video cancel JOB",
    "retry": "/video retry JOB",
    "cameo": "/video cameo register|confirm|status|audience|allow|disallow|forbid|unforbid|revoke|history|verify",
}

# Bidi overrides and isolates can make a prompt read differently from what is rendered.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Letters and symbols that show as nothing: Hangul fillers, the braille blank, the combining grapheme joiner.
_BLANK_LOOKALIKES = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u180b\u180c\u180d\u180f")
_DASHES = ("\u2014", "\u2013", "\u2012", "\u2212")  # phones turn "--" into these
_TOKEN = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d|(\S+)')
_SIZE = re.compile(r"(\d{2,5})[x×*](\d{2,5})")
_ASPECT = re.compile(r"(\d{1,2}):(\d{1,2})")
_RESOLUTION = re.compile(r"(\d{3,4})p")


class CommandError(ValueError):
    """A mistake in what the person typed. ``str(error)`` is the one-line answer to show."""


@dataclass(frozen=True, slots=True)
class CommandRules:
    """What this deployment allows, as adapters pass it to ``parse`` (``bot.policy.rules``).

    Attributes:
        check: the second step after parsing, the catalog's check of a clip request against its model
            (the core installs it), so an adapter's early ``parse`` (Slack's form, Discord's check before a
            download) refuses what the model does not take with the core's own sentence. It raises
            ``CommandError``; the parsed command is returned unchanged.
    """

    check: Callable[[VideoCommand], object] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VideoCommand:
    """A clip request. As parsed, an option is None when it was not given; ``bot.catalog.choose`` fills
    every one in from the model (``audio`` stays None for a model that always or never makes sound)."""

    prompt: str
    model: str | None = None
    size: str | None = None
    seconds: int | None = None
    cameo: str | None = None
    aspect: str | None = None
    resolution: str | None = None
    audio: bool | None = None
    seed: int | None = None
    negative: str = ""


@dataclass(frozen=True, slots=True)
class HelpCommand:
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ModelsCommand:
    pass


@dataclass(frozen=True, slots=True)
class BudgetCommand:
    pass


@dataclass(frozen=True, slots=True)
class JobsCommand:
    pass


@dataclass(frozen=True, slots=True)
class CancelCommand:
    job_id: str


@dataclass(frozen=True, slots=True)
class RetryCommand:
    job_id: str


@dataclass(frozen=True, slots=True)
class AdminBudgetCommand:
    target: str  # a user mention/id, or "default"
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class AdminUsageCommand:
    pass


@dataclass(frozen=True, slots=True)
class CameoCommand:
    action: str
    args: tuple[str, ...] = field(default_factory=tuple)
    always: bool = False


Command = (
    VideoCommand
    | HelpCommand
    | ModelsCommand
    | BudgetCommand
    | JobsCommand
    | CancelCommand
    | RetryCommand
    | AdminBudgetCommand
    | AdminUsageCommand
    | CameoCommand
)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    quoted: bool


def _invisible(ch: str) -> bool:
    """Characters that show as nothing: format characters (zero-width, tags), variation selectors, fillers."""
    if ch in _BLANK_LOOKALIKES:
        return True
    category = unicodedata.category(ch)
    if category in ("Cf", "Cs"):
        return True
    code = ord(ch)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def clean_text(text: str) -> str:
    """Normalises what a person typed: refuses characters that hide what is rendered, drops invisible ones.

    Raises:
        CommandError: the text is too long, has bidi overrides or control characters, or an unclosed quote.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise CommandError(f"That message is {len(text):,} characters; a prompt may have at most {MAX_PROMPT_CHARS:,}.")
    if any(ch in _BIDI_CONTROLS for ch in text):
        raise CommandError(
            "The text has hidden right-to-left override characters; please type the prompt without them."
        )
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in text):
        raise CommandError("The text has control characters; please type the prompt as plain text.")
    if any(unicodedata.category(ch) == "Cs" for ch in text):  # half of a character: nothing could store or send it
        raise CommandError("The text has a broken character (half of an emoji or symbol); please type it again.")
    text = "".join(ch for ch in text if not _invisible(ch))
    text = unicodedata.normalize("NFC", text)
    if _open_quote(text):
        raise CommandError(
            'The text has a quote (") that is never closed; close it (quoted words stay prompt) or remove it.'
        )
    return text.replace("\r", " ").strip()


def _open_quote(text: str) -> bool:
    """Whether a quote is left open: ``"`` closes ``"``, ``”`` closes ``“``, and inside one kind the other is text."""
    state = ""
    for ch in text:
        if state == "":
            if ch in ('"', "\u201c"):
                state = ch
        elif (state == '"' and ch == '"') or (state == "\u201c" and ch == "\u201d"):
            state = ""
    return state != ""


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    for match in _TOKEN.finditer(text):
        if match.group(3) is not None:
            out.append(_Token(match.group(3), quoted=False))
        else:
            inner = match.group(1) if match.group(1) is not None else match.group(2)
            if inner.strip():
                out.append(_Token(inner.strip(), quoted=True))
    return out


def _flag_name(token: _Token) -> str | None:
    """The canonical flag a token names (``--seconds=8`` -> ``--seconds``), or None for prose."""
    if token.quoted:
        return None
    word = token.text
    for dash in _DASHES:
        if word.startswith(dash) and len(word) > 1:
            word = "--" + word[1:]
            break
    if not word.startswith("--") or len(word) < 3 or not word[2].isalpha():
        return None
    return word.split("=", 1)[0].lower()


def _whole(raw: str, flag: str, example: str, limit: int) -> int:
    """An ASCII whole number (``④`` and ``⁴`` are digits to Python but not numbers anyone means here)."""
    value = raw.strip().lower()
    if flag == "--seconds":
        value = value.removesuffix("s").strip()
    if not value.isascii() or not value.isdigit() or len(value) > len(str(limit)) or int(value) > limit:
        raise CommandError(f"{flag} takes a whole number such as {example} (got {raw[:20]}).")
    return int(value)


def parse_size(raw: str) -> str:
    """``--size WxH`` as ``"1280x720"`` (``×`` and ``*`` accepted)."""
    match = _SIZE.fullmatch(raw.strip().lower())
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise CommandError(f"--size takes WIDTHxHEIGHT such as 1280x720 (got {raw[:20]}).")
    return f"{int(match.group(1))}x{int(match.group(2))}"


def _parse_aspect(raw: str) -> str:
    match = _ASPECT.fullmatch(raw.strip())
    if not match:
        raise CommandError(f"--aspect takes a ratio such as 16:9, 9:16 or 1:1 (got {raw[:20]}).")
    return f"{int(match.group(1))}:{int(match.group(2))}"


def _parse_resolution(raw: str) -> str:
    match = _RESOLUTION.fullmatch(raw.strip().lower())
    if not match:
        raise CommandError(f"--resolution takes 720p or 1080p (got {raw[:20]}).")
    return f"{int(match.group(1))}p"


def _parse_model(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._\-]{0,39}", value):
        raise CommandError(
            f"--model takes a model name such as veo-3.1-lite; /video models lists them (got {raw[:40]})."
        )
    return value


def _example(flag: str) -> str:
    return {
        "--model": "--model veo-3.1-lite",
        "--seconds": "--seconds 8",
        "--size": "--size 720x1280",
        "--aspect": "--aspect 9:16",
        "--resolution": "--resolution 1080p",
        "--seed": "--seed 42",
        "--negative": '--negative "blurry, text"',
        "--cameo": "--cameo @alice",
    }[flag]


def _read_flags(tokens: list[_Token]) -> tuple[list[str], dict[str, str]]:
    flags: dict[str, str] = {}
    words: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = _flag_name(token)
        if name is None:
            words.append(token.text)
            i += 1
            continue
        if name not in FLAGS:
            raise CommandError(f"Unknown option {name[:40]}. Options: {', '.join(FLAGS)}.")
        value = ""
        if name in _VALUE_FLAGS:
            if "=" in token.text:
                value = token.text.split("=", 1)[1]
            elif i + 1 < len(tokens) and _flag_name(tokens[i + 1]) is None:
                i += 1
                value = tokens[i].text
            if not value.strip():
                raise CommandError(f"{name} needs a value, e.g. {_example(name)}.")
        elif "=" in token.text:
            raise CommandError(f"{name} takes no value.")
        if name in flags:
            raise CommandError(f"{name} is given more than once; give it once.")
        flags[name] = value
        i += 1
    return words, flags


def parse_video(text: str, rules: CommandRules | None = None) -> VideoCommand:
    """Parses a clip request: prompt words plus flags anywhere. Options not given stay None."""
    words, flags = _read_flags(_tokens(text))
    prompt = " ".join(words).strip()
    if not prompt:
        raise CommandError(f"Tell me what to film, e.g. /video a calico cat playing piano. Usage: {USAGE}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise CommandError(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")

    model = _parse_model(flags["--model"]) if "--model" in flags else None
    if "--pro" in flags:
        if model is not None and model != PRO_MODEL:
            raise CommandError(f"--pro means --model {PRO_MODEL}; it contradicts --model {model}. Use one.")
        model = PRO_MODEL

    orientations = [flag for flag in _ORIENTATIONS if flag in flags]
    if len(orientations) > 1:
        raise CommandError(f"{' and '.join(orientations)} contradict each other; use one.")
    aspect = _ORIENTATIONS[orientations[0]] if orientations else None
    if "--aspect" in flags:
        asked = _parse_aspect(flags["--aspect"])
        if aspect is not None and asked != aspect:
            raise CommandError(f"--aspect {asked} contradicts {orientations[0]}; use one.")
        aspect = asked

    if "--audio" in flags and "--silent" in flags:
        raise CommandError("--audio and --silent contradict each other; use one.")
    audio = True if "--audio" in flags else False if "--silent" in flags else None

    negative = " ".join(flags.get("--negative", "").split())
    if len(negative) > MAX_NEGATIVE_CHARS:
        raise CommandError(f"--negative is {len(negative):,} characters; the limit is {MAX_NEGATIVE_CHARS:,}.")
    cameo = flags.get("--cameo")
    if cameo is not None and not re.fullmatch(r"<?@?[\w.\-|<>@!&]{1,100}>?", cameo):
        raise CommandError("--cameo takes the cameo owner's handle, e.g. --cameo @alice.")
    return VideoCommand(
        prompt=prompt,
        model=model,
        size=parse_size(flags["--size"]) if "--size" in flags else None,
        seconds=_whole(flags["--seconds"], "--seconds", "8", 999) if "--seconds" in flags else None,
        cameo=cameo,
        aspect=aspect,
        resolution=_parse_resolution(flags["--resolution"]) if "--resolution" in flags else None,
        audio=audio,
        seed=_whole(flags["--seed"], "--seed", "42", 2**32 - 1) if "--seed" in flags else None,
        negative=negative,
    )


def _parse_amount(raw: str) -> Decimal:
    try:
        amount = Decimal(raw.strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise CommandError(f"A budget is an amount in US dollars such as 20 or 12.50 (got {raw[:20]}).") from None
    if not amount.is_finite() or amount < 0 or amount > 1_000_000 or amount != amount.quantize(Decimal("0.01")):
        raise CommandError("A budget is between $0 and $1,000,000, in whole cents.")
    return amount


def _usage(first: str, words: list[str]) -> CommandError:
    """A malformed subcommand: its usage line, and how to film those words instead."""
    shown = " ".join(words)
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    return CommandError(f'Usage: {_USAGES[first]}. To film these words, quote them: /video "{shown}"')


def parse(text: str, rules: CommandRules | None = None) -> Command:
    """Parses the text after ``/video``. A first word that is a subcommand never becomes a prompt.

    Raises:
        CommandError: with the one-line answer for the person.
    """
    text = clean_text(text)
    tokens = _tokens(text)
    first = tokens[0].text.lower() if tokens and not tokens[0].quoted else ""
    words = [t.text for t in tokens]
    rest = words[1:]
    if first == "help":
        if len(rest) > 1:
            raise _usage(first, words)
        return HelpCommand(rest[0].lower() if rest else None)
    if first in ("models", "budget", "jobs"):
        if rest:
            raise _usage(first, words)
        return {"models": ModelsCommand, "budget": BudgetCommand, "jobs": JobsCommand}[first]()
    if first in ("cancel", "retry"):
        if not rest:
            raise CommandError(f"Which job? /video {first} JOB (your jobs: /video jobs).")
        if len(rest) > 1:
            raise _usage(first, words)
        job_id = rest[0].strip("`#")
        return CancelCommand(job_id) if first == "cancel" else RetryCommand(job_id)
    if first == "admin":
        return _parse_admin(rest)
    if first == "cameo":
        if not rest or rest[0].lower() not in CAMEO_ACTIONS:
            raise _usage(first, words)
        args = tuple(a for a in rest[1:] if a.lower() != "--always")
        return CameoCommand(rest[0].lower(), args, always=len(args) != len(rest) - 1)
    command = parse_video(text, rules)
    if rules is not None and rules.check is not None:
        rules.check(command)
    return command


def _parse_admin(rest: list[str]) -> Command:
    usage = "Admin commands: /video admin budget @user 50, /video admin budget default 20, /video admin usage."
    if rest[:1] == ["usage"] and len(rest) == 1:
        return AdminUsageCommand()
    if rest[:1] == ["budget"] and len(rest) == 3:
        return AdminBudgetCommand(target=rest[1], amount_usd=_parse_amount(rest[2]))
    raise CommandError(usage)
