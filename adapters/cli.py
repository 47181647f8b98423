"""``reelbot``: the composition root. Reads configuration once and starts what was asked for."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelbot", description="Short AI video clips from chat.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run every chat adapter whose credentials are set")

    console = sub.add_parser("console", help="send one command through the bot, as a chat platform would")
    console.add_argument("--as", dest="as_user", required=True, metavar="USER", help="who is asking")
    console.add_argument("--workspace", default="local", metavar="NAME", help="the workspace (default: local)")
    console.add_argument(
        "--attach", action="append", default=[], type=Path, metavar="FILE", help="attach a file (repeatable)"
    )
    console.add_argument("--json", dest="json_out", action="store_true", help="end with one JSON line")
    console.add_argument("--no-wait", action="store_true", help="do not wait for the clip")
    console.add_argument("--request-id", help="platform request id (the same id twice makes one job)")
    console.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    console.add_argument("--press", metavar="ACTION", help="press a button the bot offered (its action id)")
    console.add_argument("text", metavar="COMMAND TEXT", nargs="?", default="", help='e.g. "/video a paper boat --pro"')

    demo = sub.add_parser("demo", help='shorthand for: reelbot console --as demo "/video PROMPT flags"')
    demo.add_argument("--json", dest="json_out", action="store_true")
    demo.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE")
    demo.add_argument("words", nargs=argparse.REMAINDER, metavar="PROMPT [flags]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"reelbot: configuration error: {exc}", file=sys.stderr)
        return 2
    from bot.app import secrets_of

    configure_logging("WARNING" if args.command != "serve" else settings.log_level, secrets_of(settings))
    if args.command == "serve":
        return asyncio.run(serve(settings))

    from adapters.console.run import ConsoleArgs, run_console

    if args.command == "demo":
        words = [w for w in args.words if w != "--"]
        json_out = args.json_out or "--json" in words
        words = [w for w in words if w != "--json"]
        if not words:
            print(
                'reelbot: say what to film, e.g. reelbot demo "a calico cat playing piano" --seconds 4', file=sys.stderr
            )
            return 1
        text = "/video " + " ".join(words)
        console_args = ConsoleArgs(as_user="demo", text=text, json_out=json_out, attach=tuple(args.attach))
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
        return asyncio.run(run_console(settings, console_args))
    except KeyboardInterrupt:
        print("reelbot: interrupted; unfinished jobs resume at the next start.", file=sys.stderr)
        return 130


async def serve(settings: Settings) -> int:
    """Runs the worker and every configured adapter until SIGINT/SIGTERM."""
    from adapters.console import ConsoleDelivery
    from bot.app import build_app

    runners = []
    if settings.slack_configured:
        from adapters.slack import SlackAdapter

        runners.append(SlackAdapter)
    if settings.discord_configured:
        from adapters.discord import DiscordAdapter

        runners.append(DiscordAdapter)
    if not runners:
        print(NO_PLATFORM, file=sys.stderr)
        return 1

    app = await build_app(settings)
    # Jobs queued from the terminal with --no-wait are rendered here too.
    app.bot.register(ConsoleDelivery(quiet=True))
    adapters = [runner.from_settings(app.bot, settings) for runner in runners]
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
        await app.worker.start()
        log.info(
            "reelbot is serving: %s; provider %s; data in %s",
            ", ".join(a.platform for a in adapters),
            app.provider.name,
            settings.data_dir,
        )
        await stop.wait()
    finally:
        await app.worker.stop()  # no delivery may reach a client that is already closed
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.stop()
        await app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
