"""The terminal adapter killed with SIGKILL at every job state, then restarted on the same data.

Each test runs the real ``reelbot console`` as a child process (``python -m adapters.cli``), watches
its SQLite file read-only until the job reaches the state under test, kills it with SIGKILL, and
runs ``reelbot console --as x "/video jobs"``, which resumes the unfinished terminal jobs and waits
for them. Then, for every job: it reached an end state, its clip was posted exactly once (the
``📎`` lines of every run's output, and the ``<clip>.mp4.delivered`` marker), and the ledger
balances (one reserve per job; delivered jobs settled, others released; open jobs hold the rest).

The video service is ``FakeVideosServer`` in its own process (it must outlive the bot), scripted
from here: slow creates, slow downloads and long renders hold the bot in the state under test. One
test uses the local renderer instead (a 10 s 1920x1080 clip renders for a few seconds).

A killed process still holds its jobs' 60 s leases (no other process drives or waits for them
meanwhile); the tests expire those leases in the database instead of waiting a minute, which is what
the passing minute would do. ``test_a_restart_after_sigkill_resumes_promptly`` (xfail) shows what a
person sees without that.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.jobs import Job, JobOptions, JobState
from bot.media import inspect_clip
from bot.store import Store
from bot.store.jobs import new_job_id
from tests.helpers_processes import (
    Db,
    FakeVideosProcess,
    Finished,
    ReelbotProcess,
    delivered_posts,
    reelbot_env,
    run_reelbot,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fake_videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeVideosProcess, bytes]]:
    """One fake service for the module; it serves one real 1280x720, 4 s MP4 (the default clip)."""
    from tests.fakes.videos_server import encode_mp4

    clip = encode_mp4(1280, 720, 4)
    path = tmp_path_factory.mktemp("fake-videos") / "clip.mp4"
    path.write_bytes(clip)
    with FakeVideosProcess({"render_seconds": 0.5, "queue_seconds": 0.3, "video_file": str(path)}) as fake:
        yield fake, clip


@pytest.fixture
def videos(fake_videos: tuple[FakeVideosProcess, bytes]) -> FakeVideosProcess:
    fake, _ = fake_videos
    fake.reset()
    return fake


class Bot:
    """A data dir, the ``reelbot console`` processes run on it, and what they printed."""

    def __init__(self, tmp_path: Path, **env: object) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.env = reelbot_env(self.data, **env)
        self.db = Db(self.data / "reelbot.db")
        self.outputs: list[str] = []
        self.processes: list[ReelbotProcess] = []

    def start(self, text: str, *options: str, user: str = "x") -> ReelbotProcess:
        process = ReelbotProcess(["console", "--as", user, *options, text], self.env, self.tmp)
        self.processes.append(process)
        return process

    def run(self, text: str, *options: str, user: str = "x", timeout: float = 60) -> Finished:
        done = run_reelbot(["console", "--as", user, *options, text], self.env, self.tmp, timeout=timeout)
        self.outputs.append(done.stdout)
        return done

    def wait_for(self, what: str, predicate: Callable[[dict[str, str]], bool], timeout: float = 30) -> None:
        self.db.wait_for(what, lambda db: predicate(db.states()), timeout=timeout)

    def kill(self, process: ReelbotProcess) -> None:
        process.kill()
        self.outputs.append(process.read_both()[0])

    def expire_leases(self) -> None:
        """What a minute's wait would do: the dead process's leases run out."""
        with sqlite3.connect(self.db.path) as db:
            db.execute("UPDATE jobs SET lease_expires = 0 WHERE lease_owner IS NOT NULL")

    def restart(self, timeout: float = 60, *, user: str = "x") -> Finished:
        """``/video jobs`` as ``user``: a terminal resumes and waits for that person's jobs only."""
        done = self.run("/video jobs", user=user, timeout=timeout)
        assert done.returncode == 0, done
        return done

    def close(self) -> None:
        for process in self.processes:
            process.close()

    def assert_every_job_delivered_once(self, *, extra_posts: tuple[str, ...] = ()) -> None:
        jobs = self.db.jobs()
        assert jobs, "no jobs"
        assert {job["state"] for job in jobs.values()} == {"delivered"}, self.db.states()
        posts = Counter([*(p for out in self.outputs for p in delivered_posts(out)), *extra_posts])
        for job in jobs.values():
            clip = Path(job["clip_path"])
            assert posts[str(clip)] == 1, f"job {job['id']} posted {posts[str(clip)]} times: {posts}"
            assert Path(f"{clip}.delivered").read_text() == f"file:{clip}"
            assert inspect_clip(clip).duration > 3  # a whole, playable clip
        assert sum(posts.values()) == len(jobs)
        self.db.assert_balanced()


@pytest.fixture
def make_bot(tmp_path: Path) -> Iterator[Callable[..., Bot]]:
    made: list[Bot] = []

    def factory(**env: object) -> Bot:
        bot = Bot(tmp_path, **env)
        made.append(bot)
        return bot

    yield factory
    for bot in made:
        bot.close()


def openai_env(fake: FakeVideosProcess, **extra: object) -> dict[str, object]:
    return {"REELBOT_PROVIDER": "openai", "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url, **extra}


def only_state(state: str) -> Callable[[dict[str, str]], bool]:
    return lambda states: bool(states) and set(states.values()) == {state}


# --- one job, killed in each state ------------------------------------------------------------------------


@pytest.mark.parametrize("reached_the_service", [True, False], ids=["create-processed", "create-not-processed"])
def test_killed_while_submitting(make_bot, videos: FakeVideosProcess, reached_the_service: bool) -> None:
    bot = make_bot(**openai_env(videos))
    videos.inject("create", delay=5, process=reached_the_service)
    process = bot.start("/video a paper boat")
    bot.wait_for("submitting", only_state("submitting"))
    bot.db.wait_for("the create to arrive", lambda _db: videos.counts().get("create", 0) == 1)
    bot.kill(process)
    assert set(bot.db.states().values()) == {"submitting"}
    bot.expire_leases()
    bot.restart()
    bot.assert_every_job_delivered_once()
    assert videos.video_count() == 1, "a render was started (and would be billed) twice"
    assert videos.counts()["list"] == 1  # the restart first looked for a render it may have started


def test_killed_while_rendering(make_bot, videos: FakeVideosProcess) -> None:
    bot = make_bot(**openai_env(videos))
    videos.plan(render_seconds=4)
    process = bot.start("/video a paper boat")
    bot.wait_for("rendering", only_state("rendering"))
    bot.kill(process)
    assert set(bot.db.states().values()) == {"rendering"}
    bot.expire_leases()
    bot.restart()
    bot.assert_every_job_delivered_once()
    assert videos.counts()["create"] == 1


def test_killed_while_rendering_on_the_local_renderer(make_bot) -> None:
    bot = make_bot()
    process = bot.start("/video a lighthouse --model ltx-2-fast --seconds 10")
    bot.wait_for("rendering", only_state("rendering"))
    bot.kill(process)
    assert set(bot.db.states().values()) == {"rendering"}
    bot.expire_leases()
    bot.restart()
    bot.assert_every_job_delivered_once()
    assert len(list((bot.data / "renders").glob("local_*.json"))) == 1  # the same render, resumed


@pytest.mark.parametrize("crash_at", ["downloading", "delivering", "posted_not_recorded"])
def test_killed_while_downloading_or_delivering(
    make_bot, fake_videos: tuple[FakeVideosProcess, bytes], videos: FakeVideosProcess, crash_at: str
) -> None:
    """Downloading is a real kill during a slow download. Delivering is too short to hit from outside
    (a file write), so after the real kill the test writes what a crash there leaves behind: the clip
    downloaded and the job ``delivering`` and, for ``posted_not_recorded``, the clip already posted
    (its marker written) but the delivery not yet recorded."""
    _, clip_bytes = fake_videos
    bot = make_bot(**openai_env(videos))
    videos.inject("content", delay=5)
    process = bot.start("/video a paper boat")
    bot.wait_for("downloading", only_state("downloading"))
    bot.db.wait_for("the download to start", lambda _db: videos.counts().get("content", 0) == 1)
    bot.kill(process)
    assert set(bot.db.states().values()) == {"downloading"}
    bot.expire_leases()
    extra_posts: tuple[str, ...] = ()
    if crash_at != "downloading":
        (job_id,) = bot.db.states()
        clip = bot.data / "clips" / f"{job_id}.mp4"
        clip.write_bytes(clip_bytes)
        with sqlite3.connect(bot.db.path) as db:
            db.execute("UPDATE jobs SET state = 'delivering', clip_path = ? WHERE id = ?", (str(clip), job_id))
        if crash_at == "posted_not_recorded":
            Path(f"{clip}.delivered").write_text(f"file:{clip}")
            extra_posts = (str(clip),)
    restart = bot.restart()
    bot.assert_every_job_delivered_once(extra_posts=extra_posts)
    assert len(delivered_posts(restart.stdout)) == (0 if crash_at == "posted_not_recorded" else 1)
    assert videos.counts()["create"] == 1
    assert videos.counts()["content"] == (2 if crash_at == "downloading" else 1)


def test_killed_before_admission(make_bot, videos: FakeVideosProcess) -> None:
    """A crash between writing the job and reserving its cost leaves it ``received`` with nothing
    reserved. Too short a window to hit from outside, and the ledger is append-only (a reservation
    cannot be taken back), so the test writes what that crash leaves: a ``received`` row a minute
    old, through the store, in a data dir a real run created."""
    bot = make_bot(**openai_env(videos))
    bot.restart()  # a real run makes the data dir and its schema; it has nothing to resume
    assert bot.db.jobs() == {}
    job_id = asyncio.run(_write_received_job(bot.data / "reelbot.db", user="x", age=60))
    assert bot.db.states() == {job_id: "received"} and bot.db.ledger() == []
    bot.db.assert_balanced()
    restart = bot.restart()
    assert "Resuming 1 unfinished job(s) of yours" in restart.stderr, restart
    bot.assert_every_job_delivered_once()
    assert [kind for job, kind, _ in bot.db.ledger() if job == job_id] == ["reserve", "settle"]
    assert videos.video_count() == 1


async def _write_received_job(path: Path, *, user: str, age: float) -> str:
    """The row ``ReelBot.handle`` writes before admission, as a crash right after it leaves it."""
    store = await Store.open(path)
    try:
        now = time.time() - age
        job, created = await store.insert_job(
            Job(
                id=new_job_id(),
                request_key=f"console:local:{user}:before-admission",
                platform="console",
                workspace_id="local",
                user_id=user,
                user_name=f"@{user}",
                channel_id="terminal",
                thread_id=None,
                prompt="a paper boat",
                options=JobOptions(model="sora-2", size="1280x720", seconds=4, aspect="16:9", resolution="720p"),
                state=JobState.RECEIVED,
                cost_micros=400_000,
                created_at=now,
                updated_at=now,
                provider="openai",
            )
        )
        assert created
        return job.id
    finally:
        await store.close()


# --- several jobs, several processes --------------------------------------------------------------------------


def test_two_processes_killed_with_one_job_rendering_and_one_queued(make_bot, videos: FakeVideosProcess) -> None:
    bot = make_bot(**openai_env(videos, REELBOT_MAX_JOBS_IN_FLIGHT=1))
    videos.plan(render_seconds=5)
    first = bot.start("/video the first boat")
    bot.wait_for("the first job rendering", only_state("rendering"))
    second = bot.start("/video the second boat", user="y")
    bot.wait_for("the second job queued", lambda s: sorted(s.values()) == ["queued", "rendering"])
    time.sleep(0.3)  # the second process has resumed the first job too (waiting on its lease)
    bot.kill(first)
    bot.kill(second)
    assert sorted(bot.db.states().values()) == ["queued", "rendering"]
    bot.expire_leases()
    first_restart = bot.restart()  # x's terminal waits for x's job only, and never calls y's "resumed"
    assert "Resuming 1 unfinished job(s) of yours" in first_restart.stderr, first_restart
    bot.restart(user="y")
    bot.assert_every_job_delivered_once()
    assert videos.counts()["create"] == 2 and videos.video_count() == 2


def test_concurrent_terminals_on_one_data_dir_share_one_budget(make_bot) -> None:
    """Three ``reelbot console`` processes at once, one person, a budget that fits exactly two clips:
    exactly two are admitted and delivered once each, the third is refused, and SQLite never reports
    "database is locked"."""
    bot = make_bot(REELBOT_USER_BUDGET_USD="0.80")
    processes = [bot.start(f"/video boat number {i}", "--json") for i in range(3)]
    results = [process.wait(90) for process in processes]
    bot.outputs += [r.stdout for r in results]
    for result in results:
        assert "database is locked" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 0, 1], results
    refused = next(r for r in results if r.returncode == 1)
    assert refused.json["state"] == "refused"
    assert [line for line in refused.error_lines if line.startswith("reelbot:")] == [
        "reelbot: " + refused.json["error"]
    ] and "Not enough budget" in refused.json["error"]
    states = Counter(bot.db.states().values())
    assert states == {"delivered": 2, "refused": 1}
    delivered = {job_id: job for job_id, job in bot.db.jobs().items() if job["state"] == "delivered"}
    posts = Counter(p for out in bot.outputs for p in delivered_posts(out))
    assert sorted(posts.values()) == [1, 1] and set(posts) == {j["clip_path"] for j in delivered.values()}
    bot.db.assert_balanced()
    assert sum(spent for _, spent, _ in bot.db.usage()) == 800_000


# --- what a person waits after a crash -------------------------------------------------------------------------


def test_a_restart_after_sigkill_resumes_promptly(make_bot, videos: FakeVideosProcess) -> None:
    bot = make_bot(**openai_env(videos))
    videos.plan(render_seconds=3)
    process = bot.start("/video a paper boat")
    bot.wait_for("rendering", only_state("rendering"))
    bot.kill(process)
    bot.restart(timeout=10)  # the render needs ~3 s more; 10 s is ample without the lease wait
    bot.assert_every_job_delivered_once()
