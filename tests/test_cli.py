"""The ``reelbot`` command line as a person (or a script) uses it: real processes, exit codes, output.

Exit codes (README): 0 a clip was delivered or a question answered; 1 with one line on stderr when
something was refused or failed; 2 with one line naming the variable for a bad configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers_processes import Db, ReelbotProcess, reelbot_env, run_reelbot

pytestmark = pytest.mark.timeout(90)

JSON_FIELDS = {
    "ok",
    "job_id",
    "state",
    "model",
    "provider",
    "cost_usd",
    "clip_path",
    "error",
    "budget_remaining_usd",
    "reply",
}


def test_demo_renders_a_real_clip_and_says_where_it_is(tmp_path: Path) -> None:
    from bot.media import probe_clip

    env = reelbot_env(tmp_path / "data")
    done = run_reelbot(["demo", "a lighthouse at dusk", "--portrait", "--json"], env, tmp_path, timeout=60)
    assert done.returncode == 0, done
    result = done.json
    assert set(result) == JSON_FIELDS
    assert result["ok"] is True and result["state"] == "delivered" and result["error"] is None
    assert result["cost_usd"] == "0.40" and result["budget_remaining_usd"] == "9.60"
    clip = Path(result["clip_path"])
    assert clip.parent == tmp_path / "data" / "clips" and clip.name == f"{result['job_id']}.mp4"
    info = probe_clip(clip, seconds=4, size="720x1280")
    assert info.video_codec == "h264" and info.has_audio
    assert str(clip) in done.stdout.splitlines()[-2]  # the post before the JSON line says where it is


def test_demo_without_a_prompt_says_what_to_type(tmp_path: Path) -> None:
    done = run_reelbot(["demo"], reelbot_env(tmp_path / "data"), tmp_path)
    assert done.returncode == 1 and len(done.error_lines) == 1 and "reelbot demo" in done.error_lines[0]


def test_console_json_when_delivered(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    done = run_reelbot(["console", "--as", "alice", "--json", "/video a paper boat --seconds 8"], env, tmp_path)
    assert done.returncode == 0, done
    result = done.json
    assert set(result) == JSON_FIELDS
    assert (result["ok"], result["state"], result["cost_usd"], result["error"]) == (True, "delivered", "0.80", None)
    assert result["budget_remaining_usd"] == "9.20" and Path(result["clip_path"]).is_file()
    assert done.error_lines == []


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("/video a cat --seconds 5", "reelbot: sora-2 takes 4, 8 or 12 seconds (got 5)."),
        ("/video a cat --pro --portrait --landscape", "reelbot: --landscape and --portrait contradict each other"),
        ("/video", "reelbot: Tell me what to film"),
    ],
)
def test_console_refusal_exits_1_with_one_line_and_json(tmp_path: Path, command: str, line: str) -> None:
    done = run_reelbot(["console", "--as", "alice", "--json", command], reelbot_env(tmp_path / "data"), tmp_path)
    assert done.returncode == 1
    assert len(done.error_lines) == 1 and done.error_lines[0].startswith(line), done.stderr
    result = done.json
    assert result["ok"] is False and result["job_id"] is None and result["error"].startswith(line[len("reelbot: ") :])


def test_console_budget_refusal_exits_1_and_charges_nothing(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data", REELBOT_USER_BUDGET_USD="0.30")
    done = run_reelbot(["console", "--as", "alice", "--json", "/video a paper boat"], env, tmp_path)
    assert done.returncode == 1
    assert len(done.error_lines) == 1
    assert done.error_lines[0].startswith("reelbot: Not enough budget: this clip costs $0.40 and you have $0.30 left")
    result = done.json
    assert result["state"] == "refused" and result["clip_path"] is None and result["budget_remaining_usd"] == "0.30"
    assert Db(tmp_path / "data" / "reelbot.db").ledger() == []


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("REELBOT_BUDGET_PERIOD", "year", "REELBOT_BUDGET_PERIOD: must be 'day', 'week' or 'month' (got 'year')"),
        ("REELBOT_MAX_JOBS_IN_FLIGHT", "0", "REELBOT_MAX_JOBS_IN_FLIGHT: must be greater than or equal to 1"),
        ("REELBOT_ALLOW_LONG_CLIPS", "true", "REELBOT_ALLOW_LONG_CLIPS is no longer used"),
        ("REELBOT_USER_BUDGET_USD", "ten", "REELBOT_USER_BUDGET_USD: must be a number"),
        ("OPENAI_BASE_URL", "ftp://example.com", "OPENAI_BASE_URL"),
        ("REELBOT_PROVIDER", "openai", "REELBOT_PROVIDER=openai needs OPENAI_API_KEY"),
    ],
)
def test_a_bad_configuration_value_exits_2_naming_the_variable(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    env = reelbot_env(tmp_path / "data", **{variable: value})
    for args in (["console", "--as", "alice", "/video a cat"], ["demo", "a cat"], ["serve"]):
        done = run_reelbot(args, env, tmp_path)
        assert done.returncode == 2, (args, done)
        assert len(done.error_lines) == 1, (args, done.stderr)
        assert done.error_lines[0].startswith("reelbot: configuration error: ") and says in done.error_lines[0]
    assert not (tmp_path / "data").exists(), "nothing may be created with a bad configuration"


def test_serve_without_a_platform_says_how_to_set_one(tmp_path: Path) -> None:
    done = run_reelbot(["serve"], reelbot_env(tmp_path / "data"), tmp_path)
    assert done.returncode == 1
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_BOT_TOKEN", "reelbot demo"):
        assert name in done.stderr, name
    assert "Traceback" not in done.stderr


def test_the_same_request_id_twice_makes_one_job(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    args = ["console", "--as", "alice", "--json", "--request-id", "slack-trigger-42", "/video a paper boat"]
    first = run_reelbot(args, env, tmp_path)
    second = run_reelbot(args, env, tmp_path)
    assert first.returncode == second.returncode == 0, (first, second)
    assert first.json["job_id"] == second.json["job_id"]
    assert second.json["reply"].startswith(f"Already on it: job {first.json['job_id']}")
    db = Db(tmp_path / "data" / "reelbot.db")
    assert len(db.jobs()) == 1
    assert [kind for _, kind, _ in db.ledger()] == ["reserve", "settle"]
    assert "📎" not in second.stdout  # not posted again


def test_the_same_request_id_from_two_processes_at_once_makes_one_job(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    args = ["console", "--as", "alice", "--json", "--request-id", "discord-interaction-7", "/video a kite"]
    first, second = ReelbotProcess(args, env, tmp_path), ReelbotProcess(args, env, tmp_path)
    with first, second:
        results = [first.wait(60), second.wait(60)]
    assert [r.returncode for r in results] == [0, 0], results
    assert results[0].json["job_id"] == results[1].json["job_id"]
    db = Db(tmp_path / "data" / "reelbot.db")
    assert len(db.jobs()) == 1 and [kind for _, kind, _ in db.ledger()] == ["reserve", "settle"]
    posts = sum(r.stdout.count("📎") for r in results)
    assert posts == 1


def test_no_wait_queues_and_a_later_run_delivers(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    queued = run_reelbot(["console", "--as", "alice", "--json", "--no-wait", "/video a paper boat"], env, tmp_path)
    assert queued.returncode == 0 and queued.json["state"] != "delivered", queued
    later = run_reelbot(["console", "--as", "alice", "/video jobs"], env, tmp_path)
    assert later.returncode == 0 and "Resuming 1 unfinished job" in later.stderr
    job = Db(tmp_path / "data" / "reelbot.db").jobs()[queued.json["job_id"]]
    assert job["state"] == "delivered" and later.stdout.count("📎") == 1


def test_an_unknown_button_press_is_refused(tmp_path: Path) -> None:
    done = run_reelbot(
        ["console", "--as", "alice", "--press", "cameo_approve:nope"], reelbot_env(tmp_path / "data"), tmp_path
    )
    assert done.returncode == 1 and len(done.error_lines) == 1, done


def test_timeout_gives_up_waiting_with_one_line(tmp_path: Path) -> None:
    env = reelbot_env(tmp_path / "data")
    started = time.monotonic()
    done = run_reelbot(
        ["console", "--as", "alice", "--json", "--timeout", "0.5", "/video a cat --pro --seconds 12"],
        env,
        tmp_path,
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert len(done.error_lines) == 1 and "Traceback" not in done.stderr, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"] is False and result["state"] in ("queued", "submitting", "rendering")
