"""Bad input: a corpus of hostile or broken commands and attachments, each answered with one clear
line and nothing charged.

The corpus goes through ``ReelBot.handle`` exactly as every adapter sends it; a few cases also go
through the real ``reelbot console`` process (exit code 1 and one line on stderr). A property test
(hypothesis) drives arbitrary text through ``handle``: it never raises, every refusal is one line,
and the ledger never moves.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.console import ConsoleDelivery
from adapters.console.run import AttachmentError, read_attachment
from bot.app import App, build_app
from bot.commands import FLAGS, MAX_PROMPT_CHARS
from bot.config import Settings, load_settings
from bot.jobs import ChatRequest, InputFile, JobState, Requester
from tests.helpers_processes import reelbot_env, run_reelbot
from tests.media_factory import image_bytes, png_bomb

pytestmark = pytest.mark.timeout(60)


def ask(text: str, *, attachments: tuple[InputFile, ...] = (), admin: bool = False, user: str = "alice") -> ChatRequest:
    return ChatRequest(
        requester=Requester("console", "w1", user, f"@{user}", is_admin=admin),
        request_key=f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
        attachments=attachments,
    )


@pytest.fixture
async def bot(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    """The core with the terminal adapter; the worker is not started (nothing here should run)."""
    app = await build_app(make_settings())
    app.bot.register(ConsoleDelivery(quiet=True))
    try:
        yield app
    finally:
        await app.close()


async def assert_nothing_charged(app: App) -> None:
    totals = await app.store.ledger_totals()
    assert (totals.reserved, totals.settled, totals.released) == (0, 0, 0)
    usage = await app.bot.usage_for("console", "w1", "alice")
    assert usage.spent_micros == usage.reserved_micros == 0


def assert_one_clear_line(text: str, *fragments: str) -> None:
    assert text.strip(), "an empty answer"
    assert "\n" not in text.strip(), f"more than one line: {text!r}"
    assert len(text) <= 400, f"not short: {len(text)} characters"
    assert "Traceback" not in text and "Error(" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# --- commands ------------------------------------------------------------------------------------------------

COMMANDS: list[tuple[str, str, str]] = [
    ("empty", "", "Tell me what to film"),
    ("only spaces", "   \t  ", "Tell me what to film"),
    ("only flags", "--pro --seconds 8", "Tell me what to film"),
    ("only zero-width", "\u200b\u2060\ufeff", "Tell me what to film"),
    ("32,001 characters", "a" * (MAX_PROMPT_CHARS + 1), "32,001 characters; the limit is 32,000"),
    ("40,001 characters of text", "a " * 20_001, "a prompt may have at most 32,000"),
    ("NUL", "a cat\x00 on a mat", "control characters"),
    ("escape sequence", "a cat \x1b[31mred\x1b[0m", "control characters"),
    ("bell and backspace", "a cat\x07\x08", "control characters"),
    ("right-to-left override", "a cat \u202egnp.exe", "right-to-left"),
    ("left-to-right isolate", "a cat \u2066hidden\u2069", "right-to-left"),
    ("repeated flag", "a cat --pro --pro", "--pro is given more than once"),
    ("repeated value flag", "a cat --seconds 4 --seconds 8", "--seconds is given more than once"),
    ("contradictory orientation", "a cat --portrait --landscape", "contradict each other"),
    ("contradictory model", "a cat --model sora-2 --pro", "contradicts --model sora-2"),
    ("size against orientation", "a cat --size 1280x720 --portrait", "--size 1280x720 is 16:9, which contradicts 9:16"),
    ("unknown flag", "a cat --hd", "Unknown option --hd"),
    ("unknown flag with value", "a cat --fps=60", "Unknown option --fps"),
    ("flag without value", "a cat --seconds", "--seconds needs a value"),
    ("value on a switch", "a cat --pro=yes", "--pro takes no value"),
    ("seconds out of range", "a cat --seconds 5", "sora-2 takes 4, 8 or 12 seconds (got 5)"),
    ("seconds zero", "a cat --seconds 0", "sora-2 takes 4, 8 or 12 seconds (got 0)"),
    ("seconds negative", "a cat --seconds -4", "--seconds takes a whole number such as 8 (got -4)"),
    ("seconds huge", "a cat --seconds 99999999999999999999999", "--seconds takes a whole number"),
    ("seconds not a number", "a cat --seconds NaN", "--seconds takes a whole number"),
    ("seconds as a superscript", "a cat --seconds ⁴", "--seconds takes a whole number such as 8 (got ⁴)"),
    ("seconds as a circled digit", "a cat --seconds ④", "--seconds takes a whole number such as 8 (got ④)"),
    ("unclosed quote", '"a cat --pro --seconds 8', "never closed"),
    ("a subcommand with extra words", "budget please", "Usage: /video budget."),
    ("cancel two words", "cancel a b", "Usage: /video cancel JOB."),
    ("invisible prompt", "\u2800\u2800 \u3164", "Tell me what to film"),
    ("a cameo for a model without references", "a walk --cameo @bob", "Models that can: veo-3.1"),
    ("a choice the model does not offer", "a cat --model veo-3.1-lite --square", "veo-3.1-lite takes 16:9"),
    ("long clips not enabled", "a cat --seconds 20", "sora-2 takes 4, 8 or 12 seconds (got 20)"),
    ("size huge", "a cat --size 99999x99999", "sora-2 takes sizes"),
    ("size zero", "a cat --size 0x0", "--size takes WIDTHxHEIGHT"),
    ("size garbage", "a cat --size big", "--size takes WIDTHxHEIGHT"),
    ("a size no model makes", "a cat --size 1792x1024", "sora-2 takes sizes 1280x720 or 720x1280"),
    ("1080p not enabled", "a cat --pro --size 1920x1080", "sora-2-pro takes sizes"),
    ("unknown model", "a cat --model sora-3", "There is no model sora-3. Models here: veo-3.1-lite"),
    ("injection as a model", "a cat --model $(reboot)", "--model takes a model name such as veo-3.1-lite"),
    ("markup as a flag value", "a cat --size <script>alert(1)</script>", "--size takes WIDTHxHEIGHT"),
    ("bad cameo handle", "a cat --cameo '; DROP TABLE jobs;--", "--cameo takes"),
    ("many unknown flags", "a cat " + " ".join(f"--x{i}" for i in range(5000)), "Unknown option --x0"),
    ("a huge number of one flag", "a cat " + "--pro " * 6_000, "--pro is given more than once"),
    ("cancel without a job", "cancel", "Which job?"),
    ("cancel a path", "cancel ../../etc/passwd", "There is no job"),
    ("retry SQL", "retry 1'OR'1'='1", "There is no job"),
    ("admin by a non-admin", "admin budget @bob 50", "Only workspace admins"),
    ("admin usage by a non-admin", "admin usage", "Only workspace admins"),
    ("admin, wrong shape", "admin budget", "Admin commands:"),
]


@pytest.mark.parametrize(("text", "fragment"), [(t, f) for _, t, f in COMMANDS], ids=[n for n, _, _ in COMMANDS])
async def test_a_bad_command_gets_one_clear_line_and_nothing_is_charged(bot: App, text: str, fragment: str) -> None:
    started = time.perf_counter()
    reply = await bot.bot.handle(ask(text))
    assert time.perf_counter() - started < 2.0, "a bad command must be answered quickly"
    assert not reply.ok
    assert_one_clear_line(reply.text, fragment)
    assert reply.job is None
    assert await bot.store.jobs_for_user("console", "w1", "alice") == []
    await assert_nothing_charged(bot)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("admin budget @bob -5", "between $0 and $1,000,000"),
        ("admin budget @bob 1e309", "between $0 and $1,000,000"),
        ("admin budget @bob NaN", "between $0 and $1,000,000"),
        ("admin budget @bob 0.001", "whole cents"),
        ("admin budget @bob fifty", "amount in US dollars"),
    ],
)
async def test_an_admin_mistyping_a_budget_changes_nothing(bot: App, text: str, fragment: str) -> None:
    reply = await bot.bot.handle(ask(text, admin=True, user="root"))
    assert not reply.ok
    assert_one_clear_line(reply.text, fragment)
    assert await bot.store._read_all("SELECT * FROM budget_limits") == []


@pytest.mark.parametrize(
    "prompt",
    [
        "$(touch /tmp/reelbot-pwned) `id` ; rm -rf ~ && echo done | sh",
        "<script>alert(1)</script> <img src=x onerror=alert(1)> *bold* _it_ <!channel> @everyone",
        "Robert'); DROP TABLE jobs;-- ' OR '1'='1",
        "%s %n {0} {__class__} ${jndi:ldap://x}",
        "قطة تعزف على البيانو",  # right-to-left text without override characters is fine
        "a cat\u200b playing\u2060 piano",  # zero-width characters are dropped, not refused
    ],
    ids=["shell", "markup", "sql", "format-strings", "arabic", "zero-width"],
)
async def test_injection_and_foreign_text_are_only_ever_prompt_text(bot: App, prompt: str) -> None:
    reply = await bot.bot.handle(ask(prompt))
    assert reply.ok, reply.text
    job = await bot.store.get_job(reply.job.id)
    assert job.prompt == prompt.replace("\u200b", "").replace("\u2060", "")
    assert job.state is JobState.QUEUED and job.cost_micros == 400_000
    tables = {row[0] for row in await bot.store._read_all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "jobs" in tables and "ledger" in tables
    assert not Path("/tmp/reelbot-pwned").exists()


# --- attachments ------------------------------------------------------------------------------------------------


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


# A bomb is built when its test runs (``png_bomb``, ~0.5 s), not in every xdist worker that collects this module.
ATTACHMENTS: list[tuple[str, str, str, bytes | Callable[[], bytes], str]] = [
    ("gif-as-png", "cat.png", "image/png", image_bytes("GIF", 64, 64), "is a GIF, not a picture"),
    ("pdf-as-jpg", "cat.jpg", "image/jpeg", image_bytes("PDF", 64, 64), "is a PDF, not a picture"),
    ("html-as-png", "cat.png", "image/png", b"<!DOCTYPE html><html><body>hi</body></html>", "is a web page"),
    ("svg-as-png", "cat.png", "image/png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "is an SVG"),
    ("bmp-as-jpg", "cat.jpg", "image/jpeg", image_bytes("BMP", 64, 64), "is a BMP"),
    ("zip-as-webp", "cat.webp", "image/webp", b"PK\x03\x04" + bytes(100), "is a ZIP archive"),
    ("mp4-as-png", "cat.png", "image/png", b"\x00\x00\x00\x18ftypisom" + bytes(100), "is a video"),
    ("random-bytes", "cat.png", "image/png", bytes(range(256)) * 4, "not a picture reelbot can use"),
    ("truncated-jpeg", "cat.jpg", "image/jpeg", truncated(image_bytes("JPEG", 800, 600)), "damaged"),
    ("truncated-png", "cat.png", "image/png", truncated(image_bytes("PNG", 800, 600)), "damaged"),
    ("header-only-png", "cat.png", "image/png", b"\x89PNG\r\n\x1a\n", "damaged"),
    ("decompression-bomb", "bomb.png", "image/png", png_bomb, "too large in pixels"),
]


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "fragment"),
    [(f, c, d, m) for _, f, c, d, m in ATTACHMENTS],
    ids=[n for n, *_ in ATTACHMENTS],
)
async def test_a_bad_attachment_gets_one_clear_line_and_nothing_is_charged(
    bot: App, filename: str, content_type: str, data: bytes | Callable[[], bytes], fragment: str
) -> None:
    data = data() if callable(data) else data
    started = time.perf_counter()
    reply = await bot.bot.handle(ask("a paper boat", attachments=(InputFile(filename, content_type, data),)))
    assert time.perf_counter() - started < 5.0
    assert not reply.ok
    assert_one_clear_line(reply.text, fragment)
    await assert_nothing_charged(bot)
    references = bot.settings.data_dir / "references"
    assert not references.exists() or not list(references.iterdir())


async def test_a_zero_byte_attachment_is_refused_not_silently_dropped(bot: App) -> None:
    reply = await bot.bot.handle(ask("a paper boat", attachments=(InputFile("empty.png", "image/png", b""),)))
    assert not reply.ok
    assert_one_clear_line(reply.text, "empty.png is empty")
    await assert_nothing_charged(bot)


async def test_a_100_mb_attachment_is_refused_by_size(bot: App) -> None:
    big = InputFile("huge.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(100 * 1024 * 1024))
    reply = await bot.bot.handle(ask("a paper boat", attachments=(big,)))
    assert not reply.ok
    assert_one_clear_line(reply.text, "is 100 MB; pictures may be at most 20 MB")
    await assert_nothing_charged(bot)


async def test_two_attachments_are_refused(bot: App) -> None:
    png = InputFile("a.png", "image/png", image_bytes("PNG", 64, 64))
    reply = await bot.bot.handle(ask("a paper boat", attachments=(png, png)))
    assert not reply.ok
    assert_one_clear_line(reply.text, "Attach one image at most")
    await assert_nothing_charged(bot)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (640, 480), (4000, 90), (90, 4000), (1280, 720)])
async def test_an_image_of_the_wrong_size_is_fitted_to_the_clip(bot: App, width: int, height: int) -> None:
    from PIL import Image

    picture = InputFile("p.png", "image/png", image_bytes("PNG", width, height))
    reply = await bot.bot.handle(ask("a paper boat --portrait", attachments=(picture,)))
    assert reply.ok, reply.text
    job = await bot.store.get_job(reply.job.id)
    with Image.open(job.reference_path) as fitted:
        assert fitted.size == (720, 1280)


def test_the_console_refuses_a_100_mb_file_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:  # sparse: 100 MB long, nothing written
        fh.truncate(100 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(AttachmentError, match="larger than 20 MB"):
            read_attachment(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"{peak} bytes allocated: the file was read"


# --- through the real terminal process ------------------------------------------------------------------------


@pytest.fixture
def listener() -> tuple[str, list[str]]:
    """A TCP port on 127.0.0.1 that records any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append("connected")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_bad_input_through_the_terminal_exits_1_with_one_line(tmp_path: Path, listener) -> None:
    address, connections = listener
    env = reelbot_env(tmp_path / "data")
    gif = tmp_path / "cat.png"
    gif.write_bytes(image_bytes("GIF", 32, 32))
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    marker = tmp_path / "pwned"
    cases = [
        (["--as", "x", "/video a cat --seconds 5"], "sora-2 takes 4, 8 or 12 seconds (got 5)."),
        (["--as", "x", "/video a cat \x1b[2J"], "control characters"),
        (["--as", "x", "--attach", str(gif), "/video a cat"], "cat.png is a GIF, not a picture"),
        (["--as", "x", "--attach", str(huge), "/video a cat"], "huge.jpg is larger than 20 MB"),
        (["--as", "x", "--attach", f"http://{address}/cat.png", "/video a cat"], "There is no file"),
        (["--as", "x", f"/video $(touch {marker}) --hd"], "Unknown option --hd"),
    ]
    for args, fragment in cases:
        done = run_reelbot(["console", *args], env, tmp_path, timeout=60)
        assert done.returncode == 1, (args, done)
        assert len(done.error_lines) == 1, (args, done.stderr)
        assert done.error_lines[0].startswith("reelbot: ") and fragment in done.error_lines[0], done.stderr
    assert connections == [], "a URL given as an attachment was fetched"
    assert not marker.exists()
    budget = run_reelbot(["console", "--as", "x", "/video budget"], env, tmp_path)
    assert budget.returncode == 0 and "spent $0.00, reserved $0.00" in budget.stdout, budget.stdout


# --- property: handle never raises, refusals are one line, nothing is charged ---------------------------------

_WEIRD = ["\x00", "\x1b", "\u202e", "\u2066", "\u200b", "\ufeff", "\u00ad", "—", "–", '"', "\u201c", "\u201d", "=", "@"]
_WORDS = [
    *FLAGS,
    *(f"{flag}=" for flag in FLAGS),
    "4",
    "8",
    "12",
    "16",
    "5",
    "-1",
    "1280x720",
    "720x1280",
    "1792x1024",
    "0x0",
    "99999x1",
    "sora-2",
    "sora-2-pro",
    "help",
    "budget",
    "jobs",
    "cancel",
    "retry",
    "admin",
    "usage",
    "default",
    "cameo",
    "register",
    "approve",
    "audience",
    "everyone",
    "allow",
    "forbid",
    "--always",
    "@bob",
    "<@U123>",
    "a",
    "cat",
    '"--pro"',
    "\u201c--pro\u201d",
    *_WEIRD,
]
_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from(list("ab -=@\"'\n\t") + _WEIRD), max_size=120),
    st.lists(st.sampled_from(_WORDS), max_size=25).map(" ".join),
    st.lists(st.sampled_from(_WORDS), max_size=12).map("".join),
)


def test_handle_never_raises_and_never_charges_for_anything_typed(tmp_path: Path) -> None:
    """A zero budget refuses well-formed clip requests too; an admin example may raise it, so the
    invariant is per call: a refusal never moves money."""
    loop = asyncio.new_event_loop()
    app = loop.run_until_complete(
        build_app(load_settings(REELBOT_DATA_DIR=str(tmp_path / "data"), REELBOT_USER_BUDGET_USD="0"))
    )
    app.bot.register(ConsoleDelivery(quiet=True))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=_TEXT, admin=st.booleans())
    def check(text: str, admin: bool) -> None:
        before = loop.run_until_complete(app.store.ledger_totals())
        reply = loop.run_until_complete(app.bot.handle(ask(text, admin=admin)))
        assert isinstance(reply.text, str) and reply.text.strip()
        if not reply.ok:
            assert_one_clear_line(reply.text)
            assert loop.run_until_complete(app.store.ledger_totals()) == before

    try:
        check()
    finally:
        loop.run_until_complete(app.close())
        loop.close()
