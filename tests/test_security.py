"""Security: secrets never printed, logged or stored; owner-only data; admins only; a non-root image.

The secrets are recognisable fakes, configured exactly as in production (environment variables);
the ``/v1/videos`` service is the fake server, which only accepts the fake key, so a delivered clip
proves the key was really used. Logs are captured at DEBUG, raw (``caplog``, before any redaction:
no code may log a secret at all) and as the real process writes them (stderr).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.console import ConsoleDelivery
from bot.app import build_app, secrets_of
from bot.config import Settings
from bot.jobs import ChatRequest, JobState, Requester
from tests.fakes.videos_server import FakeVideosServer
from tests.helpers_processes import FakeVideosProcess, ReelbotProcess, reelbot_env, run_reelbot

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-proj-REELBOTSECRETopenai0123456789abcdef"
SECRETS = {
    "OPENAI_API_KEY": OPENAI_KEY,
    "SLACK_BOT_TOKEN": "xoxb-1234567890-REELBOTSECRETslackbot-abcdef",
    "SLACK_APP_TOKEN": "xapp-1-A0123-REELBOTSECRETslackapp-abcdef",
    "SLACK_SIGNING_SECRET": "REELBOTSECRETsigning0123456789abcdef",
    "DISCORD_BOT_TOKEN": "MTEREELBOTSECRETdiscord0123.GhIjKl.REELBOTSECRETdiscordtokenpart0123456",
}


def leaks(text: str | bytes) -> list[str]:
    """The names of the secrets found in ``text``."""
    if isinstance(text, bytes):
        return [name for name, value in SECRETS.items() if value.encode() in text]
    return [name for name, value in SECRETS.items() if value in text]


def data_dir_leaks(data_dir: Path) -> dict[str, list[str]]:
    """Secrets found in any file under the data dir (the SQLite file, its WAL, clips, sidecars...)."""
    found = {}
    for path in data_dir.rglob("*"):
        if path.is_file():
            names = leaks(path.read_bytes())
            if names:
                found[str(path.relative_to(data_dir))] = names
    return found


def ask(text: str, user: str = "alice", *, admin: bool = False) -> ChatRequest:
    return ChatRequest(
        requester=Requester("console", "w1", user, f"@{user}", is_admin=admin),
        request_key=f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
    )


# --- secrets ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_full_flow_at_debug_never_logs_or_stores_a_secret(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeVideosServer(api_key=OPENAI_KEY, render_seconds=0.3) as fake:
        settings = make_settings(OPENAI_BASE_URL=fake.base_url, REELBOT_PROVIDER="openai", **SECRETS)
        assert sorted(secrets_of(settings)) == sorted(SECRETS.values())
        app = await build_app(settings)
        delivery = ConsoleDelivery(quiet=True)
        app.bot.register(delivery)
        app.worker.tick_seconds = 0.05
        await app.worker.start()
        try:
            delivered = await app.worker.wait_for((await app.bot.handle(ask("a paper boat"))).job.id, timeout=30)
            assert delivered.state is JobState.DELIVERED, delivered.error  # the key really went to the service
            fake.rate_limit("create", times=1, retry_after_ms=10)
            fake.moderate_next_create()
            refused = await app.worker.wait_for((await app.bot.handle(ask("a moderated boat"))).job.id, timeout=30)
            assert refused.state is JobState.FAILED
            fake.api_key = "sk-some-other-key-the-service-now-wants"  # the key is revoked: 401s with a masked key
            rejected = await app.worker.wait_for((await app.bot.handle(ask("a third boat"))).job.id, timeout=30)
            assert rejected.state is JobState.FAILED and "API key" in rejected.error
            shown = " ".join(
                [
                    repr(settings),
                    repr(app.provider),
                    str(vars(app.provider)),
                    *delivery.posts,
                    str(settings.model_dump()),
                ]
            )
            assert leaks(shown) == []
        finally:
            await app.close()
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG logging was not captured"
    assert any("401" in r.getMessage() or "API key" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + str(record.args or "")
        assert leaks(text) == [], f"{record.name} logged a secret: {text[:300]}"
    assert data_dir_leaks(settings.data_dir) == {}


def test_the_terminal_never_prints_or_stores_a_secret(tmp_path: Path) -> None:
    with FakeVideosProcess({"api_key": OPENAI_KEY, "render_seconds": 0.3, "encode": [1280, 720, 4]}) as fake:
        env = reelbot_env(tmp_path / "data", OPENAI_BASE_URL=fake.base_url, REELBOT_LOG_LEVEL="DEBUG", **SECRETS)
        ok = run_reelbot(["console", "--as", "x", "--json", "/video a paper boat"], env, tmp_path, timeout=60)
        assert ok.returncode == 0 and ok.json["state"] == "delivered", ok
        wrong = dict(env, OPENAI_API_KEY=OPENAI_KEY[:-4] + "XXXX")
        bad = run_reelbot(["console", "--as", "x", "--json", "/video another boat"], wrong, tmp_path, timeout=60)
        assert bad.returncode == 1 and "API key" in bad.stderr, bad
        assert (OPENAI_KEY[:-4] + "XXXX") not in bad.stdout + bad.stderr
        for run in (ok, bad):
            assert leaks(run.stdout + run.stderr) == []
    assert data_dir_leaks(tmp_path / "data") == {}


def test_serve_at_debug_with_every_secret_set_prints_none_of_them(tmp_path: Path) -> None:
    """``reelbot serve`` at DEBUG, with Slack, Discord and the video service all unreachable: it logs
    its start-up and the platforms' failures, and no secret."""
    closed = "127.0.0.1:9"  # the discard port: nothing listens there
    env = reelbot_env(
        tmp_path / "data",
        REELBOT_LOG_LEVEL="DEBUG",
        SLACK_API_URL=f"http://{closed}/api/",
        DISCORD_API_URL=f"http://{closed}/api/v10",
        DISCORD_GATEWAY_URL=f"ws://{closed}/",
        OPENAI_BASE_URL=f"http://{closed}/v1",
        **SECRETS,
    )
    with ReelbotProcess(["serve"], env, tmp_path) as process:
        try:
            process.proc.wait(timeout=20)
        except Exception:
            process.proc.terminate()
            process.proc.wait(timeout=10)
        out, err = process.read_both()
    assert "DEBUG" in err, err[-2000:]  # the debug logs really were on
    assert leaks(out + err) == [], [line for line in (out + err).splitlines() if leaks(line)][:3]
    assert data_dir_leaks(tmp_path / "data") == {}


def test_a_bad_secret_in_the_configuration_is_named_but_not_shown(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data", REELBOT_PROVIDER="openai", REELBOT_HTTP_PORT="not-a-port", **SECRETS)
    done = run_reelbot(["console", "--as", "x", "/video a cat"], env, tmp_path)
    assert done.returncode == 2 and "REELBOT_HTTP_PORT" in done.stderr
    assert leaks(done.stdout + done.stderr) == []


# --- owner-only data -----------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_the_data_dir_and_database_are_owner_only(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    env = reelbot_env(data)
    old = os.umask(umask)  # inherited by the child: even a careless umask must not open the data up
    try:
        done = run_reelbot(["console", "--as", "x", "--json", "/video a paper boat"], env, tmp_path, timeout=60)
    finally:
        os.umask(old)
    assert done.returncode == 0, done
    assert _mode(data) == 0o700
    assert _mode(data / "reelbot.db") == 0o600
    for sidecar in (data / "reelbot.db-wal", data / "reelbot.db-shm"):
        if sidecar.exists():
            assert _mode(sidecar) == 0o600
    for directory in [p for p in data.rglob("*") if p.is_dir()]:
        assert _mode(directory) & 0o077 == 0, f"{directory} is {oct(_mode(directory))}"
    # And the delivered clip itself is owner-only, whatever the umask.
    (clip,) = (data / "clips").glob("*.mp4")
    assert _mode(clip) == 0o600, oct(_mode(clip))


def test_a_data_dir_that_exists_keeps_its_mode_and_the_files_inside_are_owner_only(tmp_path: Path) -> None:
    """A directory reelbot did not create is the operator's (it may be ``.`` or shared on purpose): its
    mode is never changed; what reelbot writes inside is owner-only, and a directory it creates is 0700."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    done = run_reelbot(["console", "--as", "x", "/video budget"], reelbot_env(data), tmp_path)
    assert done.returncode == 0, done
    assert _mode(data) == 0o755 and _mode(data / "reelbot.db") == 0o600


# --- admin commands ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["admin budget @mallory 1000", "admin budget default 1000", "admin budget <@mallory> 1000", "admin usage"],
)
async def test_admin_commands_are_refused_to_non_admins(make_settings: Callable[..., Settings], text: str) -> None:
    app = await build_app(make_settings(REELBOT_ADMIN_IDS="root,U0ADMIN"))
    try:
        for user in ("mallory", "ROOT", "root ", "admin", "U0ADMIN2"):
            reply = await app.bot.handle(ask(text, user=user))
            assert not reply.ok and "Only workspace admins" in reply.text, (user, reply.text)
        assert await app.store._read_all("SELECT * FROM budget_limits") == []
        assert (await app.bot.handle(ask(text, user="root"))).ok
        assert (await app.bot.handle(ask(text, user="someone", admin=True))).ok  # the platform says admin
    finally:
        await app.close()


def test_admin_commands_through_the_terminal(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data", REELBOT_ADMIN_IDS="root")
    refused = run_reelbot(["console", "--as", "mallory", "/video admin budget @mallory 1000"], env, tmp_path)
    assert refused.returncode == 1 and refused.error_lines == ["reelbot: Only workspace admins can set budgets."]
    allowed = run_reelbot(["console", "--as", "root", "/video admin budget @mallory 1000"], env, tmp_path)
    assert allowed.returncode == 0 and "$1,000.00" in allowed.stdout, allowed
    budget = run_reelbot(["console", "--as", "mallory", "/video budget"], env, tmp_path)
    assert "limit $1,000.00" in budget.stdout


# --- the container ----------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\s*\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_container_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    final_stage = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    stage = instructions[final_stage:]
    users = [(i, args) for i, (word, args) in enumerate(stage) if word == "USER"]
    assert users, "the final stage never switches to a non-root USER"
    index, user = users[-1]
    name = user.split(":")[0]
    assert name not in ("root", "0", ""), f"USER {user}"
    runs = " ".join(args for word, args in stage if word == "RUN")
    created = re.search(r"useradd\b[^&;]*?--uid\s+(\d+)[^&;]*?\s(\S+)\s*(?:&&|;|$)", runs)
    assert created and created.group(2) == name and int(created.group(1)) != 0, runs
    assert any(word in ("CMD", "ENTRYPOINT") for word, _ in stage[index:]), "the command runs before USER"
    assert not any(word == "USER" and args.split(":")[0] in ("root", "0") for word, args in stage[index:])
    volumes = [shlex.split(args.strip("[]").replace(",", " ")) for word, args in stage if word == "VOLUME"]
    assert any("/data" in v for v in volumes)
    assert re.search(rf"chown\s+{name}(:{name})?\s+/data", runs), "the data volume is not owned by the user"
