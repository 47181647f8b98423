"""The terminal adapter against hostile and careless input: real ``reelbot`` processes, exact outcomes.

Each case runs ``python -m adapters.cli`` as a child with a timeout, on a data dir in tmp_path, and
asserts what a person (or a script) sees: the exit code, the one line on stderr, the JSON object,
what is in the database, and that no byte a terminal would obey reaches it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from adapters.console.safe import json_line, terminal_text
from tests.helpers_processes import REELBOT, Db, reelbot_env, run_reelbot

pytestmark = pytest.mark.timeout(120)

# Bytes a terminal acts on: ESC, BEL, CSI as a C1 control, and a bidi override.
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


def job_row(data: Path, job_id: str) -> dict[str, object]:
    """One row of the jobs table, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{data / 'reelbot.db'}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def no_raw_controls(text: str) -> bool:
    return not any(ch in text for ch in RAW_CONTROLS)


def test_terminal_text_and_json() -> None:
    raw = "a\x1b]8;;https://evil\x1b\\b\x07c\x9b31m\u202ed\n\te"
    assert terminal_text(raw) == "a\\x1b]8;;https://evil\\x1b\\b\\x07c\\x9b31m\\u202ed\n\te"
    line = json_line({"error": raw})
    assert not any(ch in line for ch in "\x1b\x07\x9b\u202e\n") and json.loads(line) == {"error": raw}


# --- arguments ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["console", "--as", "", "/video jobs"], "argument --as: '' is not a name"),
        (["console", "--as", "@", "/video jobs"], "argument --as: '@' is not a name"),
        (["console", "--as", "   ", "/video jobs"], "argument --as: '   ' is not a name"),
        (["console", "--as", "eve\x1b[2J", "/video jobs"], "argument --as: 'eve\\x1b[2J' is not a name"),
        (["console", "--as", "a b", "/video jobs"], "argument --as: 'a b' is not a name"),
        (["console", "--as", "alice", "--workspace", "", "/video jobs"], "argument --workspace: '' is not a"),
        (["console", "--as", "alice", "--timeout", "-1", "/video jobs"], "argument --timeout: '-1' is not a number"),
        (["console", "--as", "alice", "--timeout", "nan", "/video jobs"], "argument --timeout: 'nan' is not a number"),
        (["console", "--as", "alice", "--timeout", "inf", "/video jobs"], "argument --timeout: 'inf' is not a number"),
        (["console", "--as", "alice", "--timeout", "0", "/video jobs"], "argument --timeout: '0' is not a number"),
        (["console", "--as", "alice", "--request-id", "", "/video jobs"], "argument --request-id: a request id is"),
        (["console", "/video jobs"], "the following arguments are required: --as"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2_before_anything_is_created(
    tmp_path: Path, args: list[str], says: str
) -> None:
    done = run_reelbot(args, reelbot_env(tmp_path / "data"), tmp_path, timeout=60)
    assert done.returncode == 2, done
    assert len(done.error_lines) == 1, done.stderr
    assert done.error_lines[0].startswith(f"reelbot: {says}"), done.error_lines
    assert "Traceback" not in done.stderr and no_raw_controls(done.stderr)
    assert done.stdout == ""
    assert not (tmp_path / "data").exists()


def test_an_at_sign_before_a_name_is_the_same_person(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    done = run_reelbot(["console", "--as", "@alice", "--json", "/video budget"], env, tmp_path, timeout=60)
    assert done.returncode == 0, done
    assert done.json["reply"].startswith("Budget this month: spent $0.00")


# --- request ids ---------------------------------------------------------------------------------------------


def test_a_request_id_belongs_to_the_person_who_sent_it(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data", REELBOT_MAX_JOBS_IN_FLIGHT=1)
    ask = ["--json", "--no-wait", "--request-id", "shared-42"]
    alice = run_reelbot(["console", "--as", "alice", *ask, "/video a kite"], env, tmp_path, timeout=60)
    bob = run_reelbot(["console", "--as", "bob", *ask, "/video a paper boat"], env, tmp_path, timeout=60)
    again = run_reelbot(["console", "--as", "alice", *ask, "/video a kite"], env, tmp_path, timeout=60)
    assert alice.returncode == bob.returncode == again.returncode == 0, (alice, bob, again)
    assert alice.json["job_id"] != bob.json["job_id"]
    assert not bob.json["reply"].startswith("Already on it")
    assert again.json["job_id"] == alice.json["job_id"] and again.json["reply"].startswith("Already on it")
    assert len(Db(tmp_path / "data" / "reelbot.db").jobs()) == 2
    for result, user, prompt in ((alice, "alice", "a kite"), (bob, "bob", "a paper boat")):
        row = job_row(tmp_path / "data", result.json["job_id"])
        assert (row["user_id"], row["prompt"]) == (user, prompt)


# --- what reaches the terminal ---------------------------------------------------------------------------------


def test_escape_sequences_in_a_file_name_are_shown_not_obeyed(tmp_path: Path) -> None:
    name = "\x1b]0;pwned\x07a\x1b[2Jb\u202ec.gif"
    picture = tmp_path / name
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "GIF")
    picture.write_bytes(buffer.getvalue())
    env = reelbot_env(tmp_path / "data")
    done = run_reelbot(
        ["console", "--as", "alice", "--json", "--attach", str(picture), "/video a red square"],
        env,
        tmp_path,
        timeout=60,
    )
    assert done.returncode == 1, done
    shown = "\\x1b]0;pwned\\x07a\\x1b[2Jb\\u202ec.gif is a GIF, not a picture reelbot can use"
    assert len(done.error_lines) == 1 and done.error_lines[0].startswith(f"reelbot: {shown}"), done.stderr
    assert no_raw_controls(done.stderr) and no_raw_controls(done.stdout)
    # The JSON line keeps the real name (escaped the JSON way), so a script still gets the facts.
    assert json.loads(done.stdout.splitlines()[-1])["error"].startswith(f"{name} is a GIF")
    db = Db(tmp_path / "data" / "reelbot.db")
    assert db.ledger() == []


def test_a_long_reason_is_one_line_without_a_terminal_and_nothing_is_charged(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data", REELBOT_USER_BUDGET_USD="0.10")
    env.pop("COLUMNS")  # as under a script or CI: rich would wrap at 80 columns
    done = run_reelbot(["console", "--as", "alice", "--json", "/video a paper boat"], env, tmp_path, timeout=60)
    assert done.returncode == 1, done
    reason = done.json["error"]
    assert len(reason) > 100 and reason.startswith("Not enough budget") and "Nothing was charged." in reason
    assert done.stderr == f"reelbot: {reason}\n"
    assert Db(tmp_path / "data" / "reelbot.db").ledger() == []


def test_decoder_warnings_and_progress_bars_stay_off_a_redirected_stderr(tmp_path: Path) -> None:
    """A JPEG with a corrupt EXIF block makes Pillow warn (with its site-packages path); the clip
    is still made, the progress bar is not drawn without a terminal, and stderr stays empty."""
    buffer = io.BytesIO()
    broken_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    Image.new("RGB", (640, 360), (30, 60, 220)).save(buffer, "JPEG", exif=broken_exif + b"\xff" * 4)
    picture = tmp_path / "blue.jpg"
    picture.write_bytes(buffer.getvalue())
    env = reelbot_env(tmp_path / "data")
    done = run_reelbot(
        ["console", "--as", "alice", "--json", "--attach", str(picture), "/video a blue sky --seconds 4"],
        env,
        tmp_path,
        timeout=90,
    )
    assert done.returncode == 0, done
    assert done.json["state"] == "delivered"
    assert done.stderr == "", repr(done.stderr)


@pytest.mark.parametrize("kind", ["folder", "missing", "unreadable"])
def test_an_unreadable_attachment_gets_one_sentence_and_nothing_is_charged(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "picture.png"
    if kind == "folder":
        target.mkdir()
        says = f"reelbot: {target} is a folder, not a file."
    elif kind == "missing":
        says = f"reelbot: There is no file {target}."
    else:
        # Something that is there but cannot be read as a file (root could read a chmod 000 file).
        import socket

        target = tmp_path / "p.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
        says = f"reelbot: {target} is not a regular file (a device, socket or pipe)."
    done = run_reelbot(
        ["console", "--as", "alice", "--attach", str(target), "/video a cat"],
        reelbot_env(tmp_path / "data"),
        tmp_path,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert done.error_lines == [says] and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "reelbot.db").exists()  # refused before anything was opened


# --- reelbot demo ----------------------------------------------------------------------------------------------


def test_demo_help_describes_its_options(tmp_path: Path) -> None:
    done = run_reelbot(["demo", "--help"], reelbot_env(tmp_path / "data"), tmp_path, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    for part in ("--json", "--attach FILE", "any", "order", "model, provider", "--seconds"):
        assert part in done.stdout, part
    assert not (tmp_path / "data").exists()


def test_demo_flags_come_in_any_order_and_every_file_written_is_owner_only(tmp_path: Path) -> None:
    picture = tmp_path / "sky.png"
    Image.new("RGB", (640, 360), (30, 60, 220)).save(picture, "PNG")
    data = tmp_path / "data"
    done = run_reelbot(
        ["demo", "--json", "--attach", str(picture), "--seconds", "4", "a", "lighthouse", "at", "dusk"],
        reelbot_env(data),
        tmp_path,
        timeout=90,
    )
    assert done.returncode == 0, done
    result = done.json
    assert result["state"] == "delivered" and result["model"] and result["provider"]
    job = job_row(data, result["job_id"])
    assert job["prompt"] == "a lighthouse at dusk" and job["reference_path"]
    assert done.stderr == ""
    # Every file reelbot wrote (database, reference, render, clip, marker) is owner-only.
    files = [p for p in data.rglob("*") if p.is_file()]
    names = {p.suffix for p in files}
    assert {".db", ".png", ".mp4", ".delivered"} <= names, names
    loose = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077}
    assert loose == {}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700  # reelbot made it, so reelbot locked it


# --- issue 11: a terminal waits for its own jobs only -------------------------------------------------------------


def test_a_terminal_neither_resumes_nor_shows_other_peoples_jobs(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    queued = run_reelbot(
        ["console", "--as", "bob", "--json", "--no-wait", "/video a secret garden --seconds 4"], env, tmp_path
    )
    assert queued.returncode == 0, queued
    alice = run_reelbot(["console", "--as", "alice", "--json", "/video budget"], env, tmp_path, timeout=60)
    assert alice.returncode == 0, alice
    assert "Resuming" not in alice.stderr and alice.stderr == ""
    assert "secret garden" not in alice.stdout and "📎" not in alice.stdout
    bob = run_reelbot(["console", "--as", "bob", "/video jobs"], env, tmp_path, timeout=90)
    assert bob.returncode == 0, bob
    job = Db(tmp_path / "data" / "reelbot.db").jobs()[queued.json["job_id"]]
    assert job["state"] == "delivered"
    if "Resuming" in bob.stderr:  # still unfinished when bob came back: he waits for it and sees it
        assert bob.error_lines == ["Resuming 1 unfinished job(s) of yours from an earlier run."]
        assert bob.stdout.count("📎") == 1


def test_on_a_terminal_the_progress_bar_is_still_drawn(tmp_path: Path) -> None:
    """The bar is only left out when stderr is not a terminal: on a pseudo-terminal it is drawn."""
    master, slave = pty.openpty()
    env = reelbot_env(tmp_path / "data", TERM="xterm", COLUMNS="120")
    process = subprocess.Popen(
        [*REELBOT, "console", "--as", "alice", "/video a cat --seconds 8"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=tmp_path,
        env=env,
    )
    os.close(slave)
    drawn = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                drawn += chunk
            elif process.poll() is not None:
                break
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert b"% " in drawn and b"job " in drawn, drawn[:500]
