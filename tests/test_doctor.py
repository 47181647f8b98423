"""``reelbot doctor``: one line per platform and provider, against fake servers; no render is ever started."""

from __future__ import annotations

import pytest

from bot.config import load_settings
from bot.doctor import diagnose
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import FakeSlack
from tests.fakes.videos_server import FakeVideosServer


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "DISCORD_BOT_TOKEN",
        "OPENAI_API_KEY",
        "FAL_KEY",
        "OPENROUTER_API_KEY",
        "REELBOT_PROVIDER",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REELBOT_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


async def test_every_configured_platform_and_provider_gets_one_line(clean_env):
    async with FakeSlack() as slack, FakeDiscord() as discord, FakeVideosServer() as videos:
        settings = load_settings(
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_APP_TOKEN=slack.app_token,
            SLACK_API_URL=slack.api_url,
            DISCORD_BOT_TOKEN=discord.token,
            DISCORD_API_URL=f"http://127.0.0.1:{discord.port}/api/v10",
            OPENAI_API_KEY=videos.api_key,
            OPENAI_BASE_URL=videos.base_url,
        )
        findings = await diagnose(settings)
    lines = [f.line() for f in findings]
    assert lines[0].startswith("ok   slack: workspace Fake Team as reelbot, Socket Mode"), lines
    assert lines[1] == "ok   discord: logged in as reelbot", lines
    assert lines[2] == "ok   openai: key accepted", lines
    assert not any(f.failed for f in findings)
    assert not any(r.method == "POST" for r in videos.requests), "the doctor must not start a render"


async def test_wrong_keys_and_half_configured_platforms_fail_naming_what_to_fix(clean_env):
    async with FakeSlack() as slack, FakeDiscord() as discord, FakeVideosServer() as videos:
        settings = load_settings(
            SLACK_SIGNING_SECRET="only-the-secret",
            DISCORD_BOT_TOKEN="not-the-token",
            DISCORD_API_URL=f"http://127.0.0.1:{discord.port}/api/v10",
            OPENAI_API_KEY="sk-wrong",
            OPENAI_BASE_URL=videos.base_url,
        )
        findings = {f.subject: f for f in await diagnose(settings)}
        assert findings["slack"].failed and "SLACK_BOT_TOKEN is missing" in findings["slack"].text
        assert findings["discord"].failed and "DISCORD_BOT_TOKEN was refused" in findings["discord"].text
        assert findings["openai"].failed and "rejected OPENAI_API_KEY" in findings["openai"].text
        settings = load_settings(SLACK_BOT_TOKEN="xoxb-wrong", SLACK_APP_TOKEN="xapp-1", SLACK_API_URL=slack.api_url)
        (slack_finding, *_rest) = await diagnose(settings)
    assert slack_finding.failed and "SLACK_BOT_TOKEN was refused" in slack_finding.text


async def test_nothing_configured_is_not_a_failure_and_the_local_renderer_stands_in(clean_env):
    findings = await diagnose(load_settings())
    assert [f.line() for f in findings] == [
        "--   slack: not configured",
        "--   discord: not configured",
        "ok   local: the embedded renderer (no key; stands in for every catalog model)",
    ]


async def test_an_unreachable_provider_is_a_failure_not_a_traceback(clean_env):
    settings = load_settings(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    findings = {f.subject: f for f in await diagnose(settings)}
    assert findings["openai"].failed and "could not be asked" in findings["openai"].text


async def test_openrouter_key_is_checked_for_free(clean_env):
    from tests.fakes.openrouter_api import FakeOpenRouter

    async with FakeOpenRouter() as fake:
        good = load_settings(OPENROUTER_API_KEY=fake.api_key, OPENROUTER_BASE_URL=fake.base_url)
        bad = load_settings(OPENROUTER_API_KEY="sk-or-wrong", OPENROUTER_BASE_URL=fake.base_url)
        ok = {f.subject: f for f in await diagnose(good)}
        refused = {f.subject: f for f in await diagnose(bad)}
        created = [r for r in fake.requests if r.method == "POST"]
    assert ok["openrouter"].line() == "ok   openrouter: key accepted"
    assert refused["openrouter"].failed
    assert created == [], "the doctor must not start a render"


async def test_fal_key_is_checked_for_free(clean_env):
    from tests.fakes.fal_queue import FakeFalQueue

    async with FakeFalQueue() as fake:
        good = {f.subject: f for f in await diagnose(load_settings(FAL_KEY=fake.api_key, FAL_QUEUE_URL=fake.queue_url))}
        bad = {f.subject: f for f in await diagnose(load_settings(FAL_KEY="id:wrong", FAL_QUEUE_URL=fake.queue_url))}
        submitted = [r for r in fake.requests if r.method == "POST"]
    assert good["fal"].line() == "ok   fal: key accepted"
    assert bad["fal"].failed
    assert submitted == [], "the doctor must not start a render"


def test_reelbot_doctor_prints_one_line_each_and_exits_non_zero_on_trouble(tmp_path):
    from tests.helpers_processes import reelbot_env, run_reelbot

    fresh = run_reelbot(["doctor"], reelbot_env(tmp_path / "data"), tmp_path, timeout=60)
    lines = fresh.stdout.splitlines()
    assert fresh.returncode == 0, fresh
    assert lines[:3] == [
        "--   slack: not configured",
        "--   discord: not configured",
        "ok   local: the embedded renderer (no key; stands in for every catalog model)",
    ]
    assert lines[3].startswith("ok   models: ") and "veo-3.1-lite" in lines[3]
    assert lines[4].startswith("--   data: no database yet")
    assert fresh.stderr == ""

    env = reelbot_env(tmp_path / "data", OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    broken = run_reelbot(["doctor"], env, tmp_path, timeout=60)
    assert broken.returncode == 1, broken
    assert any(line.startswith("FAIL openai: ") for line in broken.stdout.splitlines())
