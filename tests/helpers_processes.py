"""Real processes for the reliability tests and the benchmarks: ``reelbot`` itself, and the fake
``/v1/videos`` server in a child process, scripted over a JSON-lines pipe.

- ``reelbot_env`` / ``run_reelbot`` / ``ReelbotProcess``: ``python -m adapters.cli ...`` with a clean
  environment (no developer configuration, no proxies), output captured in files (a full pipe can
  never block the child), killed in ``close()`` whatever happened.
- ``FakeVideosProcess``: ``FakeVideosServer`` on the real clock in another process, so a bot killed
  with SIGKILL does not take the server with it and a benchmark measures only the bot. Errors,
  plans and outages are scripted at run time: ``inject``, ``plan``, ``counts``, ``down``, ``up``.
- ``Db``: a read-only look at a data dir's SQLite file while the bot writes it (job states, the
  ledger, and the balance the reliability suite asserts).

Run as ``python -m tests.helpers_processes fake-videos '{"render_seconds": 5}'`` to get the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REELBOT = (sys.executable, "-m", "adapters.cli")
_ENV_PREFIXES = ("REELBOT_", "OPENAI_", "SLACK_", "DISCORD_", "FAL_", "OPENROUTER_")
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


# --- reelbot as a subprocess --------------------------------------------------------------------


def reelbot_env(data_dir: Path, **variables: object) -> dict[str, str]:
    """The environment for a ``reelbot`` child: this one minus any reelbot/platform settings and
    proxies, plus ``REELBOT_DATA_DIR`` and ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES) and k not in _PROXIES}
    env["REELBOT_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal; keep one post per line
    env.update({k: str(v) for k, v in variables.items()})
    return env


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        """The last stdout line, parsed (``--json``)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no output; stderr: {self.stderr}"
        return json.loads(lines[-1])

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class ReelbotProcess:
    """``reelbot ARGS`` running in its own session; ``kill()`` sends SIGKILL to it.

    Use as a context manager: the process is killed on exit if it is still running.
    """

    def __init__(self, args: list[str], env: Mapping[str, str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.stdout_path = workdir / f"reelbot-{stamp}.out"
        self.stderr_path = workdir / f"reelbot-{stamp}.err"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [*REELBOT, *args],
            env=dict(env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )

    def __enter__(self) -> ReelbotProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would; waits until it is gone."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> Finished:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"reelbot did not finish within {timeout} s:\n{self.read()}") from None
        return self.finished()

    def finished(self) -> Finished:
        assert self.proc.returncode is not None
        self._out.flush()
        self._err.flush()
        return Finished(self.proc.returncode, *self.read_both())

    def read_both(self) -> tuple[str, str]:
        return (
            self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            self.stderr_path.read_text(encoding="utf-8", errors="replace"),
        )

    def read(self) -> str:
        out, err = self.read_both()
        return f"--- stdout\n{out}\n--- stderr\n{err}"

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.kill()
        finally:
            self._out.close()
            self._err.close()


def run_reelbot(args: list[str], env: Mapping[str, str], workdir: Path, *, timeout: float = 60) -> Finished:
    """Runs ``reelbot ARGS`` to the end (killed after ``timeout``)."""
    with ReelbotProcess(args, env, workdir) as process:
        return process.wait(timeout)


# --- the fake /v1/videos server in a child process -------------------------------------------------


class FakeVideosProcess:
    """``FakeVideosServer`` (real clock) in a child process, scripted over stdin/stdout.

    Args:
        config: keyword arguments for ``FakeVideosServer`` (JSON-able), plus ``"encode": [w, h, s]``
            to serve one real MP4 of that size and length for every video (``video_bytes``), or
            ``"video_file": path`` to serve that file's bytes.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.base_url = ""
        self.api_key = ""

    def __enter__(self) -> FakeVideosProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _PROXIES}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers_processes", "fake-videos", json.dumps(self.config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        hello = self._next(timeout)
        self.base_url, self.api_key = hello["base_url"], hello["api_key"]

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the fake videos server did not answer") from None
        if line is None:
            raise AssertionError("the fake videos server exited")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"the fake videos server refused a command: {answer['error']}")
        return answer

    def call(self, cmd: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._next(timeout)

    def inject(self, op: str, **kwargs: Any) -> None:
        self.call("inject", op=op, **kwargs)

    def plan(self, **kwargs: Any) -> None:
        self.call("plan", **kwargs)

    def reset(self) -> None:
        """Forgets every request, video, plan and injection (for a server shared between tests)."""
        self.call("reset")

    def counts(self) -> dict[str, int]:
        """Requests seen so far, by operation (``create``, ``retrieve``, ``list``, ``content``...)."""
        return self.call("counts")["counts"]

    def requests(self) -> list[tuple[str, str, str, float]]:
        """Every request so far as (op, method, path, unix time it arrived)."""
        return [tuple(r) for r in self.call("requests")["requests"]]

    def video_count(self) -> int:
        """Videos the service holds (each one a render it would bill)."""
        return self.call("counts")["videos"]

    def down(self) -> None:
        """Stops listening (connections are refused) until ``up()``; videos are kept."""
        self.call("down")

    def up(self) -> None:
        self.call("up")

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        finally:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None


async def _serve_fake_videos(config: dict[str, Any]) -> None:
    from tests.fakes.videos_server import FakeVideosServer, encode_mp4

    encode = config.pop("encode", None)
    video_file = config.pop("video_file", None)
    if encode is not None:
        config["video_bytes"] = encode_mp4(*encode)
    elif video_file is not None:
        config["video_bytes"] = Path(video_file).read_bytes()
    fake = FakeVideosServer(**config)
    await fake.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    say({"base_url": fake.base_url, "api_key": fake.api_key})
    try:
        while line := await reader.readline():
            order = json.loads(line)
            cmd = order.pop("cmd")
            try:
                if cmd == "inject":
                    fake.inject(order.pop("op"), **order)
                elif cmd == "plan":
                    fake.plan(**order)
                elif cmd == "reset":  # forget every request, video, plan and injection
                    fake.requests.clear()
                    fake.videos.clear()
                    fake.clear_injections()
                    fake._plans.clear()
                elif cmd == "requests":
                    say({"requests": [[r.op, r.method, r.path, r.at] for r in fake.requests]})
                    continue
                elif cmd == "counts":
                    counts: dict[str, int] = {}
                    for request in fake.requests:
                        counts[request.op] = counts.get(request.op, 0) + 1
                    say({"counts": counts, "videos": len(fake.videos)})
                    continue
                elif cmd == "down":
                    await fake.stop()
                elif cmd == "up":
                    await fake.start()  # the same port (fake.port was set by the first start)
                else:
                    raise ValueError(f"unknown command {cmd!r}")
            except Exception as exc:
                say({"error": f"{type(exc).__name__}: {exc}"})
                continue
            say({"ok": True})
    finally:
        await fake.stop()


# --- a read-only look at the store ----------------------------------------------------------------


class Db:
    """Reads a data dir's ``reelbot.db`` without writing to it (the bot may be running)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)) as db:
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # the bot has not created the schema yet
                raise

    def jobs(self) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT id, state, cost_micros, clip_path, error, user_id, request_key FROM jobs")
        keys = ("id", "state", "cost_micros", "clip_path", "error", "user_id", "request_key")
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def states(self) -> dict[str, str]:
        return {job_id: job["state"] for job_id, job in self.jobs().items()}

    def ledger(self) -> list[tuple[str, str, int]]:
        return [(r[0], r[1], r[2]) for r in self._query("SELECT job_id, kind, amount_micros FROM ledger ORDER BY id")]

    def usage(self) -> list[tuple[str, int, int]]:
        rows = self._query("SELECT user_key, spent_micros, reserved_micros FROM budget_usage")
        return [(r[0], r[1], r[2]) for r in rows]

    def wait_for(
        self, what: str, predicate: Callable[[Db], bool], *, timeout: float = 30, interval: float = 0.02
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError):  # e.g. locked for a moment
                if predicate(self):
                    return
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; jobs: {self.states()}")

    def assert_balanced(self) -> None:
        """The ledger balances: one reserve per admitted job; delivered jobs settled at their cost,
        other finished jobs released; open jobs hold exactly the reserved budget."""
        jobs = self.jobs()
        by_job: dict[str, dict[str, int]] = {}
        for job_id, kind, amount in self.ledger():
            entry = by_job.setdefault(job_id, {})
            assert kind not in entry, f"job {job_id} has two {kind} rows"
            entry[kind] = amount
        open_reserved = 0
        for job_id, entry in by_job.items():
            job = jobs[job_id]
            assert entry.get("reserve") == job["cost_micros"], (job_id, entry, job)
            closing = {k: v for k, v in entry.items() if k != "reserve"}
            if job["state"] == "delivered":
                assert closing == {"settle": job["cost_micros"]}, (job_id, entry)
            elif job["state"] in ("failed", "cancelled", "refused"):
                assert closing == {"release": job["cost_micros"]}, (job_id, entry)
            else:
                assert not closing, (job_id, entry, job["state"])
                open_reserved += entry["reserve"]
        for job_id, job in jobs.items():
            if job["state"] == "delivered":
                assert "settle" in by_job.get(job_id, {}), f"delivered job {job_id} was not settled"
        spent = sum(s for _, s, _ in self.usage())
        reserved = sum(r for _, _, r in self.usage())
        settled = sum(amount for _, kind, amount in self.ledger() if kind == "settle")
        assert spent == settled, (spent, settled)
        assert reserved == open_reserved, (reserved, open_reserved)


def delivered_posts(text: str) -> list[str]:
    """The clip paths the terminal adapter posted (``📎 PATH`` lines)."""
    return [line.split("📎", 1)[1].strip() for line in text.splitlines() if "📎" in line]


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "fake-videos":
        for name in _PROXIES:
            os.environ.pop(name, None)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_fake_videos(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
    else:
        raise SystemExit("usage: python -m tests.helpers_processes fake-videos [CONFIG_JSON]")
