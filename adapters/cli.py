"""``reelbot``: the composition root. Reads configuration once and starts what was asked for."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from bot.config import ConfigError, Settings, load_settings
from bot.logging_setup import configure_logging

log = logging.getLogger("reelbot")

NO_PLATFORM = (
    "No chat platform is configured, so there is nothing to serve yet.\n"
    "  Slack:   set SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode), or SLACK_BOT_TOKEN and "
    "SLACK_SIGNING_SECRET (HTTP mode on REELBOT_HTTP_PORT).\n"
    "  Discord: set DISCORD_BOT_TOKEN.\n"
    'Meanwhile the terminal works with no set-up: reelbot demo "a calico cat playing piano"'
)


DEMO_HELP = """\
usage: reelbot demo PROMPT [video flags] [--json] [--attach FILE]

Shorthand for: reelbot console --as demo "/video PROMPT [video flags]". The words and flags may come in
any order; every word that is not one of the options below is part of the /video command.

options:
  -h, --help     show this help and exit
  --json         end with one JSON line: ok, job_id, state, model, provider, cost_usd, clip_path,
                 error, budget_remaining_usd, reply
  --attach FILE  attach a picture (JPEG, PNG or WEBP) to start the clip from; repeatable

video flags (the same as /video on every platform):
  --pro, --model NAME, --seconds 4|8|12, --size WxH, --portrait, --landscape, --cameo @name
  text in double quotes is always prompt: reelbot demo '"a --pro wrestler"'

examples:
  reelbot demo "a calico cat playing piano" --seconds 4
  reelbot demo --portrait --json "a lighthouse at dusk"
"""

_NAME = re.compile(r"[^\W_][\w.\-]{0,63}")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line on stderr (and exit code 2), like every other refusal."""

    def error(self, message: str) -> NoReturn:
        print(f"reelbot: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _person(value: str) -> str:
    """``--as``: a name a chat platform could have: letters, digits, ``.``, ``-``, ``_``; no control characters."""
    name = value.strip().lstrip("@")
    if not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a name; use letters, digits, '.', '-' or '_' (up to 64), e.g. --as alice"
        )
    return name


def _workspace(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a workspace name; use letters, digits, '.', '-' or '_'")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0, e.g. --timeout 300")
    return seconds


def _request_id(value: str) -> str:
    if not value or len(value) > 200 or any(not ch.isprintable() for ch in value):
        raise argparse.ArgumentTypeError("a request id is 1 to 200 printable characters")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reelbot", description="Short AI video clips from chat.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("serve", help="run every chat adapter whose credentials are set")
    sub.add_parser(
        "doctor",
        help="check the set-up without spending money: platforms, provider keys, models, the ledger "
        "(one line each; exit 1 when something is wrong)",
    )

    console = sub.add_parser("console", help="send one command through the bot, as a chat platform would")
    console.add_argument("--as", dest="as_user", required=True, type=_person, metavar="USER", help="who is asking")
    console.add_argument(
        "--workspace", default="local", type=_workspace, metavar="NAME", help="the workspace (default: local)"
    )
    console.add_argument(
        "--attach", action="append", default=[], type=Path, metavar="FILE", help="attach a file (repeatable)"
    )
    console.add_argument("--json", dest="json_out", action="store_true", help="end with one JSON line")
    console.add_argument("--no-wait", action="store_true", help="do not wait for the clip")
    console.add_argument(
        "--request-id",
        type=_request_id,
        help="platform request id (the same id twice from the same person makes one job)",
    )
    console.add_argument(
        "--timeout", type=_seconds, default=None, help="give up waiting after this many seconds (above 0)"
    )
    console.add_argument("--press", metavar="ACTION", help="press a button the bot offered (its action id)")
    console.add_argument("text", metavar="COMMAND TEXT", nargs="?", default="", help='e.g. "/video a paper boat --pro"')

    sub.add_parser(
        "demo",
        help='shorthand for: reelbot console --as demo "/video PROMPT flags" (--json, --attach FILE; any order)',
        add_help=False,
    )
    return parser


def _demo_args(words: list[str]) -> tuple[list[str], bool, list[Path]] | str:
    """Splits ``reelbot demo`` words into the /video words, ``--json`` and ``--attach`` files, in any order.

    Returns a one-line error instead when ``--attach`` has no file."""
    rest: list[str] = []
    attach: list[Path] = []
    json_out = False
    items = iter(words)
    for word in items:
        if word == "--":
            continue
        if word == "--json":
            json_out = True
        elif word == "--attach":
            value = next(items, None)
            if value is None:
                return "--attach needs a file, e.g. --attach boat.jpg"
            attach.append(Path(value))
        elif word.startswith("--attach="):
            attach.append(Path(word.removeprefix("--attach=")))
        else:
            rest.append(word)
    return rest, json_out, attach


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)  # every file reelbot writes (references, renders, clips, markers) is owner-only
    demo_words: list[str] | None = None
    if argv and argv[0] == "demo":
        demo_words = argv[1:]
        if any(word in ("-h", "--help") for word in demo_words):
            print(DEMO_HELP, end="")
            return 0
        argv = ["demo"]
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"reelbot: configuration error: {exc}", file=sys.stderr)
        return 2
    from bot.app import secrets_of

    configure_logging("WARNING" if args.command != "serve" else settings.log_level, secrets_of(settings))
    # Library warnings (Pillow's "Corrupt EXIF data" about someone's picture, with a site-packages path)
    # are not the terminal user's business: they go to the log, which the terminal shows from ERROR only.
    logging.captureWarnings(True)
    if args.command != "serve":
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    if args.command == "serve":
        return _start(serve(settings))
    if args.command == "doctor":
        return asyncio.run(doctor(settings))

    from adapters.console.run import ConsoleArgs, run_console

    if demo_words is not None:
        parsed = _demo_args(demo_words)
        if isinstance(parsed, str):
            print(f"reelbot: {parsed}", file=sys.stderr)
            return 2
        words, json_out, attach = parsed
        if not words:
            print(
                'reelbot: say what to film, e.g. reelbot demo "a calico cat playing piano" --seconds 4', file=sys.stderr
            )
            return 1
        text = "/video " + " ".join(words)
        console_args = ConsoleArgs(as_user="demo", text=text, json_out=json_out, attach=tuple(attach))
    else:
        console_args = ConsoleArgs(
            as_user=args.as_user,
            text=args.text,
            workspace=args.workspace,
            attach=tuple(args.attach),
            json_out=args.json_out,
            no_wait=args.no_wait,
            request_id=args.request_id,
            timeout=args.timeout,
            press=args.press,
        )
    try:
        return _start(run_console(settings, console_args))
    except KeyboardInterrupt:
        print("reelbot: interrupted; unfinished jobs resume at the next start.", file=sys.stderr)
        return 130


def _start(coro) -> int:
    """Runs ``coro``; a start-up failure (data dir, database) is one line on stderr and exit code 2."""
    from bot.app import StartupError

    try:
        return asyncio.run(coro)
    except StartupError as exc:
        print(f"reelbot: cannot start: {str(exc).splitlines()[0]}", file=sys.stderr)
        if threading.active_count() > 1:
            # A library thread left running (a database connection opened before the failure) would keep
            # the process "running" under Docker or systemd while it serves nothing: leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2


async def doctor(settings: Settings) -> int:
    """Prints one line per thing checked; 1 when something is wrong, else 0. Never starts a render."""
    from bot.catalog import load_catalog
    from bot.doctor import Finding, diagnose, store_findings

    catalog = None
    found: list[Finding] = []
    try:
        catalog = load_catalog(models_file=settings.models_file, default_model=settings.default_model)
    except ConfigError as exc:
        found.append(Finding("models", "FAIL", str(exc)))
    found[:0] = await diagnose(settings, catalog=catalog, extra=lambda: store_findings(settings))
    for finding in found:
        print(finding.line())
    return 1 if any(f.failed for f in found) else 0


async def serve(settings: Settings) -> int:
    """Runs the worker, every configured adapter and (when needed) the web server until SIGINT/SIGTERM.

    The web server (``bot.web``) listens on ``REELBOT_HTTP_PORT`` when Slack runs in HTTP mode or
    ``REELBOT_PUBLIC_URL`` is set (provider webhooks); both share it. With no chat platform but a
    provider key or a public URL, ``serve`` still runs: it renders jobs queued from the terminal
    with ``--no-wait`` and takes the providers' webhooks.
    """
    from adapters.console import ConsoleDelivery
    from bot.app import build_app

    runners = []
    if settings.slack_configured:
        from adapters.slack import SlackAdapter

        runners.append(SlackAdapter)
    if settings.discord_configured:
        from adapters.discord import DiscordAdapter

        runners.append(DiscordAdapter)
    if settings.incomplete_platforms:
        for problem in settings.incomplete_platforms:
            print(f"reelbot: {problem}", file=sys.stderr)
        return 2
    providers_only = settings.provider_names != ("local",) or settings.public_url is not None
    if not runners and not providers_only:
        print(NO_PLATFORM, file=sys.stderr)
        return 1

    app = await build_app(settings, webhooks=settings.public_url is not None)
    # Jobs queued from the terminal with --no-wait are rendered here too.
    app.bot.register(ConsoleDelivery(quiet=True))
    slack_http = settings.slack_configured and settings.slack_app_token is None
    web = None
    if slack_http or settings.public_url is not None:
        from bot.web import build_web

        web = build_web(settings, on_webhook=app.worker.on_webhook)
    try:
        adapters = [
            runner.from_settings(app.bot, settings, server=web)
            if runner.platform == "slack"
            else runner.from_settings(app.bot, settings)
            for runner in runners
        ]
    except Exception as exc:  # a value the platform library refuses: one line, and the database closed
        await app.close()
        print(
            f"reelbot: cannot start: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        for adapter in adapters:
            try:
                await adapter.start()
            except Exception as exc:  # a bad token or an unreachable platform: one line, not a traceback
                print(f"reelbot: could not start {adapter.platform}: {exc}", file=sys.stderr)
                return 1
        if web is not None:
            try:
                await web.start()
            except OSError as exc:
                print(f"reelbot: could not listen on port {settings.http_port}: {exc.strerror or exc}", file=sys.stderr)
                return 1
        await app.worker.start()
        log.info(
            "reelbot is serving: %s; providers %s; data in %s",
            ", ".join([a.platform for a in adapters] + (["webhooks"] if settings.public_url else [])) or "the terminal",
            ", ".join(app.providers.names),
            settings.data_dir,
        )
        await stop.wait()
    finally:
        await app.worker.stop()  # no delivery may reach a client that is already closed
        if web is not None:  # before the adapters: an adapter does not stop a server it was given
            with contextlib.suppress(Exception):
                await web.stop()
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.stop()
        await app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
