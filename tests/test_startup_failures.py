"""Start-up failures: every one exits promptly with one line and a non-zero code, never a traceback or a hang.

Each case runs the real ``reelbot`` (``python -m adapters.cli``) as a child process with a timeout:
a process that hung on an open database thread would hit the timeout and fail the test. The data
directory cases also check that reelbot changes the mode only of a directory it created.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.helpers_processes import Finished, reelbot_env, run_reelbot

pytestmark = pytest.mark.timeout(90)

COMMANDS = {
    "console": ["console", "--as", "alice", "/video budget"],
    # serve with a platform configured (HTTP mode on a free port; nothing is reached before the failure)
    "serve": ["serve"],
}
SERVE_ENV = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "s3cret", "SLACK_API_URL": "http://127.0.0.1:9/"}


def start(command: str, data: Path, cwd: Path, **env: object) -> Finished:
    variables = {**(SERVE_ENV if command == "serve" else {}), **env}
    return run_reelbot(COMMANDS[command], reelbot_env(data, **variables), cwd, timeout=45)


def assert_one_line(done: Finished, code: int, line: str) -> None:
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.error_lines == [line], done.stderr


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["console", "serve"])
@pytest.mark.parametrize(
    ("value", "shown"), [("0.0000001", "'0.0000001'"), ("2.505", "'2.505'"), ("NaN", "'NaN'"), ("-1", "'-1'")]
)
def test_a_budget_that_is_not_whole_cents_is_refused(tmp_path: Path, command: str, value: str, shown: str) -> None:
    done = start(command, tmp_path / "data", tmp_path, REELBOT_USER_BUDGET_USD=value)
    assert done.returncode == 2, done
    [line] = done.error_lines
    assert line.startswith("reelbot: configuration error: REELBOT_USER_BUDGET_USD: must be ") and shown in line
    assert not (tmp_path / "data").exists()


def test_whole_cents_are_a_budget(tmp_path: Path) -> None:
    done = start("console", tmp_path / "data", tmp_path, REELBOT_USER_BUDGET_USD="2.50")
    assert done.returncode == 0, done
    assert "limit $2.50" in done.stdout


@pytest.mark.parametrize("command", ["console", "serve"])
def test_an_empty_data_dir_is_refused_and_the_current_directory_is_left_alone(tmp_path: Path, command: str) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir(mode=0o755)
    cwd.chmod(0o755)
    env = reelbot_env(tmp_path / "unused")
    env["REELBOT_DATA_DIR"] = ""
    env.update(SERVE_ENV if command == "serve" else {})
    done = run_reelbot(COMMANDS[command], env, cwd, timeout=45)
    assert_one_line(
        done,
        2,
        "reelbot: configuration error: REELBOT_DATA_DIR: must name a folder; leave it unset to use "
        "./reelbot-data (got '')",
    )
    assert stat.S_IMODE(cwd.stat().st_mode) == 0o755
    assert [p.name for p in cwd.iterdir() if p.name not in ("stdout", "stderr") and "." not in p.name] == []


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"SLACK_BOT_TOKEN": "xoxb-1"},
            "reelbot: Slack: SLACK_BOT_TOKEN is set but SLACK_APP_TOKEN (Socket Mode) or "
            "SLACK_SIGNING_SECRET (HTTP mode) is missing.",
        ),
        ({"SLACK_APP_TOKEN": "xapp-1"}, "reelbot: Slack: SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is missing."),
        ({"SLACK_SIGNING_SECRET": "s"}, "reelbot: Slack: SLACK_SIGNING_SECRET is set but SLACK_BOT_TOKEN is missing."),
        ({"DISCORD_GUILD_ID": "42"}, "reelbot: Discord: DISCORD_GUILD_ID is set but DISCORD_BOT_TOKEN is missing."),
    ],
)
def test_serve_with_part_of_a_platform_names_the_missing_variable(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    done = run_reelbot(["serve"], reelbot_env(tmp_path / "data", **env), tmp_path, timeout=45)
    assert_one_line(done, 2, line)
    assert "No chat platform is configured" not in done.stderr


# --- the database ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["console", "serve"])
def test_a_corrupt_database_is_one_line_and_the_process_exits(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    garbage = bytes(range(256)) * 40
    (data / "reelbot.db").write_bytes(garbage)
    done = start(command, data, tmp_path)
    assert_one_line(
        done,
        2,
        f"reelbot: cannot start: {data / 'reelbot.db'} is damaged or not a reelbot database "
        "(file is not a database); move it aside to start afresh.",
    )
    assert (data / "reelbot.db").read_bytes() == garbage  # left as it was, for whoever investigates


@pytest.mark.parametrize("command", ["console", "serve"])
def test_a_database_from_a_newer_reelbot_is_one_line(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with sqlite3.connect(data / "reelbot.db") as db:
        db.execute("PRAGMA user_version = 999")
    done = start(command, data, tmp_path)
    assert done.returncode == 2, done
    [line] = done.error_lines
    assert line.startswith("reelbot: cannot start: ") and "schema version 999" in line, line
    assert "Traceback" not in done.stderr


# --- the data directory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["console", "serve"])
def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    data.write_text("not a folder")
    done = start(command, data, tmp_path)
    assert_one_line(done, 2, f"reelbot: cannot start: REELBOT_DATA_DIR '{data}' is a file, not a folder.")


def test_a_data_dir_of_another_user_is_refused_and_not_re_moded(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        data = tmp_path / "theirs"
        data.mkdir(mode=0o755)
        data.chmod(0o755)
        os.chown(data, 12345, 12345)
        owner = 12345
    else:
        data, owner = Path("/"), 0  # somebody else's by construction
    mode = stat.S_IMODE(data.stat().st_mode)
    done = start("console", data, tmp_path)
    assert_one_line(
        done,
        2,
        f"reelbot: cannot start: REELBOT_DATA_DIR '{data}' belongs to another user (uid {owner}); "
        "use a folder of your own.",
    )
    assert stat.S_IMODE(data.stat().st_mode) == mode
    assert not (data / "reelbot.db").exists()


def test_a_read_only_data_dir_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        data = tmp_path / "ro"
        data.mkdir()
        data.chmod(0o500)
    else:  # root writes through permission bits; a read-only mount of root's own still refuses
        data = Path("/proc/sys/kernel")
        if data.stat().st_uid != 0 or os.access(data, os.W_OK):
            pytest.skip("no directory here is read-only for root")
    mode = stat.S_IMODE(data.stat().st_mode)
    done = start("console", data, tmp_path)
    assert_one_line(
        done,
        2,
        f"reelbot: cannot start: REELBOT_DATA_DIR '{data}' is read-only for reelbot; make it writable or use "
        "another folder.",
    )
    assert stat.S_IMODE(data.stat().st_mode) == mode


def test_a_data_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = blocker / "data"
    done = start("console", data, tmp_path)
    assert_one_line(done, 2, f"reelbot: cannot start: REELBOT_DATA_DIR '{data}' cannot be used (Not a directory).")


def test_an_existing_data_dir_keeps_its_mode_and_a_new_one_is_owner_only(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    done = start("console", shared, tmp_path)
    assert done.returncode == 0, done
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "reelbot.db").stat().st_mode) == 0o600

    fresh = tmp_path / "a" / "b" / "fresh"
    done = start("console", fresh, tmp_path)
    assert done.returncode == 0, done
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
