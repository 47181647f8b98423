"""The command language every adapter shares.

``/video PROMPT [--model sora-2|sora-2-pro] [--pro] [--seconds N] [--size WxH]
[--portrait|--landscape] [--cameo NAME]`` plus the subcommands in ``SUBCOMMANDS``.
Flags may stand anywhere in the text; text inside double quotes always stays prompt.
Every mistake raises ``CommandError`` whose message is one line that says what is allowed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

MAX_PROMPT_CHARS = 32_000
MAX_TEXT_CHARS = 40_000
BASE_SECONDS = (4, 8, 12)
LONG_SECONDS = (16, 20)
MODELS = ("sora-2", "sora-2-pro")
DEFAULT_MODEL = "sora-2"
DEFAULT_SECONDS = 4
DEFAULT_SIZE = "1280x720"
SIZES: dict[str, tuple[str, ...]] = {
    "sora-2": ("720x1280", "1280x720"),
    "sora-2-pro": ("720x1280", "1280x720", "1024x1792", "1792x1024"),
}
SIZES_1080P = ("1080x1920", "1920x1080")
PORTRAIT, LANDSCAPE = "720x1280", "1280x720"
FLAGS = ("--model", "--pro", "--seconds", "--size", "--portrait", "--landscape", "--cameo")
_VALUE_FLAGS = frozenset({"--model", "--seconds", "--size", "--cameo"})
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
    }
)
SUBCOMMANDS = ("help", "budget", "jobs", "cancel", "retry", "admin", "cameo")
USAGE = "/video PROMPT [--pro] [--seconds 4|8|12] [--size WxH] [--portrait|--landscape] [--cameo @name]"

# Bidi overrides and isolates can make a prompt read differently from what is rendered.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))
_DASHES = ("\u2014", "\u2013", "\u2012", "\u2212")  # phones turn "--" into these
_TOKEN = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d|(\S+)')


class CommandError(ValueError):
    """A mistake in what the person typed. ``str(error)`` is the one-line answer to show."""


@dataclass(frozen=True, slots=True)
class CommandRules:
    """What this deployment allows beyond the base set (from configuration)."""

    allow_long_clips: bool = False
    allow_1080p: bool = False

    @property
    def seconds(self) -> tuple[int, ...]:
        return BASE_SECONDS + LONG_SECONDS if self.allow_long_clips else BASE_SECONDS

    def sizes(self, model: str) -> tuple[str, ...]:
        extra = SIZES_1080P if self.allow_1080p and model == "sora-2-pro" else ()
        return SIZES[model] + extra


@dataclass(frozen=True, slots=True)
class VideoCommand:
    prompt: str
    model: str
    size: str
    seconds: int
    cameo: str | None = None


@dataclass(frozen=True, slots=True)
class HelpCommand:
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


def clean_text(text: str) -> str:
    """Normalises what a person typed, refusing characters that hide what is rendered."""
    if len(text) > MAX_TEXT_CHARS:
        raise CommandError(f"That message is {len(text):,} characters; a prompt may have at most {MAX_PROMPT_CHARS:,}.")
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    if any(ch in _BIDI_CONTROLS for ch in text):
        raise CommandError(
            "The text has hidden right-to-left override characters; please type the prompt without them."
        )
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in text):
        raise CommandError("The text has control characters; please type the prompt as plain text.")
    return text.replace("\r", " ").strip()


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


def _parse_seconds(raw: str, rules: CommandRules) -> int:
    allowed = rules.seconds
    choices = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
    value = raw.lower().removesuffix("s").strip()
    if not value.isdigit() or int(value) not in allowed:
        raise CommandError(f"--seconds takes {choices} (got {raw[:20]}).")
    return int(value)


def _parse_size(raw: str) -> str:
    value = raw.lower().replace("×", "x").replace("*", "x")
    if not re.fullmatch(r"\d{2,5}x\d{2,5}", value):
        raise CommandError(f"--size takes WIDTHxHEIGHT such as 1280x720 (got {raw[:20]}).")
    return value


def _parse_model(raw: str) -> str:
    value = raw.lower()
    if value not in MODELS:
        raise CommandError(f"--model takes sora-2 or sora-2-pro (got {raw[:40]}).")
    return value


def _or_list(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" or {items[-1]}"


def parse_video(text: str, rules: CommandRules) -> VideoCommand:
    """Parses a clip request: prompt words plus flags anywhere."""
    flags: dict[str, str] = {}
    words: list[str] = []
    tokens = _tokens(text)
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
            if not value:
                raise CommandError(f"{name} needs a value, e.g. {_example(name)}.")
        elif "=" in token.text:
            raise CommandError(f"{name} takes no value.")
        if name in flags:
            raise CommandError(f"{name} is given more than once; give it once.")
        flags[name] = value
        i += 1

    prompt = " ".join(words).strip()
    if not prompt:
        raise CommandError(f"Tell me what to film, e.g. /video a calico cat playing piano --pro. Usage: {USAGE}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise CommandError(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")

    model = DEFAULT_MODEL
    if "--model" in flags:
        model = _parse_model(flags["--model"])
        if "--pro" in flags and model != "sora-2-pro":
            raise CommandError("--pro means --model sora-2-pro; it contradicts --model sora-2. Use one.")
    elif "--pro" in flags:
        model = "sora-2-pro"

    if "--portrait" in flags and "--landscape" in flags:
        raise CommandError("--portrait and --landscape contradict each other; use one.")
    size = DEFAULT_SIZE
    if "--size" in flags:
        size = _parse_size(flags["--size"])
        width, height = (int(n) for n in size.split("x"))
        if ("--portrait" in flags and width > height) or ("--landscape" in flags and height > width):
            raise CommandError(f"--size {size} contradicts the orientation flag; use one of them.")
    elif "--portrait" in flags:
        size = PORTRAIT
    sizes = rules.sizes(model)
    if size not in sizes:
        hint = ""
        if model == "sora-2" and size in rules.sizes("sora-2-pro"):
            hint = f" Add --pro for {size}."
        raise CommandError(f"{model} takes sizes {_or_list(sizes)} (got {size}).{hint}")

    seconds = _parse_seconds(flags["--seconds"], rules) if "--seconds" in flags else DEFAULT_SECONDS
    cameo = flags.get("--cameo")
    if cameo is not None and not re.fullmatch(r"<?@?[\w.\-|<>@!&]{1,100}>?", cameo):
        raise CommandError("--cameo takes the cameo owner's handle, e.g. --cameo @alice.")
    return VideoCommand(prompt=prompt, model=model, size=size, seconds=seconds, cameo=cameo)


def _example(flag: str) -> str:
    return {
        "--model": "--model sora-2-pro",
        "--seconds": "--seconds 8",
        "--size": "--size 720x1280",
        "--cameo": "--cameo @alice",
    }[flag]


def _parse_amount(raw: str) -> Decimal:
    try:
        amount = Decimal(raw.strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise CommandError(f"A budget is an amount in US dollars such as 20 or 12.50 (got {raw[:20]}).") from None
    if not amount.is_finite() or amount < 0 or amount > 1_000_000 or amount != amount.quantize(Decimal("0.01")):
        raise CommandError("A budget is between $0 and $1,000,000, in whole cents.")
    return amount


def parse(text: str, rules: CommandRules | None = None) -> Command:
    """Parses the text after ``/video``.

    Raises:
        CommandError: with the one-line answer for the person.
    """
    rules = rules or CommandRules()
    text = clean_text(text)
    plain = [t.text for t in _tokens(text)]
    first = plain[0].lower() if plain and not _tokens(text)[0].quoted else ""
    rest = plain[1:]
    if first == "help" and len(rest) <= 1:
        return HelpCommand()
    if first == "budget" and not rest:
        return BudgetCommand()
    if first == "jobs" and not rest:
        return JobsCommand()
    if first in ("cancel", "retry") and len(rest) <= 1:
        if not rest:
            raise CommandError(f"Which job? /video {first} JOB (your jobs: /video jobs).")
        job_id = rest[0].strip("`#")
        return CancelCommand(job_id) if first == "cancel" else RetryCommand(job_id)
    if first == "admin":
        return _parse_admin(rest)
    if first == "cameo" and rest and rest[0].lower() in CAMEO_ACTIONS:
        args = tuple(a for a in rest[1:] if a.lower() != "--always")
        return CameoCommand(rest[0].lower(), args, always=len(args) != len(rest) - 1)
    return parse_video(text, rules)


def _parse_admin(rest: list[str]) -> Command:
    usage = "Admin commands: /video admin budget @user 50, /video admin budget default 20, /video admin usage."
    if rest[:1] == ["usage"] and len(rest) == 1:
        return AdminUsageCommand()
    if rest[:1] == ["budget"] and len(rest) == 3:
        return AdminBudgetCommand(target=rest[1], amount_usd=_parse_amount(rest[2]))
    raise CommandError(usage)
