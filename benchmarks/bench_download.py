"""Memory of a 200 MB download through ``OpenAIVideosProvider.download`` (aim: < 32 MB growth).

The fake server streams an MP4-looking body (``ftyp`` + ``mdat``) of the requested size over
loopback. Two runs:

- **server in a child process**: the RSS figures are the client's alone (the provider, httpx,
  the file writes);
- **server in this process**: client and server together, as in the test suite.

"Peak growth" is VmHWM after the download minus VmRSS before it (VmHWM is reset through
``/proc/self/clear_refs`` when the kernel allows, otherwise it is the lifetime peak and the
figure is an upper bound). A small warm-up download runs first so one-off imports and buffers
are not counted.

Run: ``python benchmarks/bench_download.py [--mb 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.providers.base import RenderSpec, VideoStatus  # noqa: E402
from bot.providers.openai_videos import OpenAIVideosProvider  # noqa: E402
from tests.fakes.videos_server import FakeVideosServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_download.json"
MB = 1024 * 1024
TARGET_MB = 32.0
SPEC = RenderSpec("bench", "sora-2", "1280x720", 4)


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def serve(size: int) -> None:
    """Child mode: a fake server that serves ``size``-byte clips, until stdin closes."""
    async with FakeVideosServer(render_seconds=0.0) as fake:
        fake.plan(content_size=1024 * 1024, render_seconds=0.0)  # warm-up clip
        fake.plan(content_size=size, render_seconds=0.0)
        print(json.dumps({"base_url": fake.base_url, "api_key": fake.api_key}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def fetch(provider: OpenAIVideosProvider, dest: Path) -> int:
    video = await provider.create(SPEC)
    while video.status is not VideoStatus.COMPLETED:
        await asyncio.sleep(0.01)
        video = await provider.retrieve(video.id)
    return await provider.download(video.id, dest)


async def measure(base_url: str, api_key: str, size: int, workdir: Path) -> dict[str, object]:
    async with OpenAIVideosProvider(api_key=api_key, base_url=base_url) as provider:
        await fetch(provider, workdir / "warmup.mp4")
        gc.collect()
        peak_reset = reset_peak()
        rss_before = proc_status_kb("VmRSS")
        hwm_before = proc_status_kb("VmHWM")
        started = time.perf_counter()
        written = await fetch(provider, workdir / "clip.mp4")
        seconds = time.perf_counter() - started
        rss_after = proc_status_kb("VmRSS")
        hwm_after = proc_status_kb("VmHWM")
    assert written == size == (workdir / "clip.mp4").stat().st_size
    growth = (hwm_after - rss_before) / 1024
    return {
        "bytes": written,
        "seconds": round(seconds, 2),
        "mb_per_s": round(written / MB / seconds, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_mb": round(rss_after / 1024, 1),
        "hwm_before_mb": round(hwm_before / 1024, 1),
        "hwm_after_mb": round(hwm_after / 1024, 1),
        "peak_growth_mb": round(growth, 1),
        "peak_reset": peak_reset,
        "under_target": growth < TARGET_MB,
    }


async def in_process(size: int, workdir: Path) -> dict[str, object]:
    async with FakeVideosServer(render_seconds=0.0) as fake:
        fake.plan(content_size=1024 * 1024, render_seconds=0.0)
        fake.plan(content_size=size, render_seconds=0.0)
        return await measure(fake.base_url, fake.api_key, size, workdir)


def with_child_server(size: int, workdir: Path) -> dict[str, object]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        return asyncio.run(measure(info["base_url"], info["api_key"], size, workdir))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return

    size = args.mb * MB
    rows: list[dict[str, object]] = []
    for mode in ("server in a child process", "server in this process"):
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            workdir = Path(tmp)
            result = (
                with_child_server(size, workdir)
                if mode.endswith("child process")
                else asyncio.run(in_process(size, workdir))
            )
        rows.append({"mode": mode, **result})

    print("| mode | size | time | throughput | RSS before | RSS after | peak growth (VmHWM - RSS before) | < 32 MB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {args.mb} MB | {row['seconds']} s | {row['mb_per_s']} MB/s | {row['rss_before_mb']} MB "
            f"| {row['rss_after_mb']} MB | {row['peak_growth_mb']} MB | {'yes' if row['under_target'] else 'NO'} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"benchmark": "bench_download", "mb": args.mb, "target_mb": TARGET_MB, "rows": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
