"""The embedded renderer: real clips, honest progress, restart recovery, cancellation, failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from bot.media import fit_reference, probe_clip
from bot.providers import local
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec, VideoProvider, VideoStatus
from bot.providers.local import LocalRenderer, compose_still, render_clip, soundtrack
from tests.media_factory import decode_frame, image_bytes, stream_facts

pytestmark = pytest.mark.timeout(40)

PROMPT = "A corgi surfing a giant wave at sunset"
OTHER = "Completely different words: lighthouse, storm, midnight"


def spec(prompt: str = PROMPT, size: str = "320x180", seconds: int = 1, **kwargs: object) -> RenderSpec:
    return RenderSpec(prompt=prompt, model="sora-2", size=size, seconds=seconds, **kwargs)  # type: ignore[arg-type]


async def finish(renderer: LocalRenderer, video_id: str, limit_s: float = 20.0) -> list[ProviderVideo]:
    """Polls until the render is completed or failed; returns every answer seen."""
    seen: list[ProviderVideo] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        video = await renderer.retrieve(video_id)
        seen.append(video)
        if video.status in (VideoStatus.COMPLETED, VideoStatus.FAILED):
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"render {video_id} did not finish in {limit_s} s: {seen[-1]}")


async def wait_for_progress(renderer: LocalRenderer, video_id: str, at_least: int = 1) -> ProviderVideo:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        video = await renderer.retrieve(video_id)
        if video.status is VideoStatus.IN_PROGRESS and video.progress >= at_least:
            return video
        await asyncio.sleep(0.02)
    raise AssertionError("no progress")


@pytest.fixture
async def renderer(tmp_path: Path) -> AsyncIterator[LocalRenderer]:
    provider = LocalRenderer(work_dir=tmp_path / "renders", fps=12)
    try:
        yield provider
    finally:
        await provider.aclose()


def bright_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels that are near white: the prompt text (the backgrounds are dark, the label amber)."""
    return np.all(frame > 200, axis=2)


# --------------------------------------------------------------------------- the clip itself


async def test_is_a_video_provider(renderer: LocalRenderer) -> None:
    assert isinstance(renderer, VideoProvider)
    assert renderer.name == "local" and renderer.accepts_likeness is True


async def test_renders_h264_aac_clip_of_exact_size_and_length(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path / "renders")  # the default 24 fps
    try:
        created = await provider.create(spec(size="1280x720", seconds=4))
        assert created.status is VideoStatus.QUEUED and created.id.startswith("local_")
        started = time.perf_counter()
        seen = await finish(provider, created.id)
        elapsed = time.perf_counter() - started
        assert seen[-1].status is VideoStatus.COMPLETED and seen[-1].progress == 100
        dest = tmp_path / "out" / "clip.mp4"
        size = await provider.download(created.id, dest)
        assert size == dest.stat().st_size > 10_000
    finally:
        await provider.aclose()

    info = probe_clip(dest, seconds=4, size="1280x720", tolerance=0.05)
    assert (info.video_codec, info.audio_codec, info.has_audio) == ("h264", "aac", True)
    facts = stream_facts(dest)  # independently of probe_clip
    assert facts["video_codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert (facts["width"], facts["height"], facts["frames"]) == (1280, 720, 96)
    assert facts["video_seconds"] == pytest.approx(4.0, abs=0.01)
    assert facts["audio_codec"] == "aac"
    assert facts["audio_seconds"] == pytest.approx(4.0, abs=0.05)
    assert elapsed < 15, f"a 4 s 720p render took {elapsed:.1f} s"


async def test_clip_has_audible_sound(renderer: LocalRenderer, tmp_path: Path) -> None:
    created = await renderer.create(spec(seconds=2))
    await finish(renderer, created.id)
    dest = tmp_path / "c.mp4"
    await renderer.download(created.id, dest)
    with av.open(str(dest)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert 0.02 < rms < 0.5


def test_soundtrack_is_full_length_stereo_and_not_clipping() -> None:
    audio = soundtrack(12)
    assert audio.shape == (2, 12 * 48_000) and audio.dtype == np.float32
    assert float(np.abs(audio).max()) <= 0.31
    middle = audio[:, 5 * 48_000 : 6 * 48_000]
    assert float(np.abs(middle).max()) > 0.1  # sound all the way through, not only at the start


def test_prompt_text_is_drawn(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    render_clip(spec(PROMPT, size="640x360", seconds=2), a, fps=12)
    render_clip(spec(OTHER, size="640x360", seconds=2), b, fps=12)
    frame_a, frame_b = decode_frame(a, 1.0), decode_frame(b, 1.0)
    text_a, text_b = bright_mask(frame_a), bright_mask(frame_b)
    # The gradient backgrounds are dark: near-white pixels are the prompt's letters.
    assert text_a.sum() > 1500 and text_b.sum() > 1500
    assert (text_a ^ text_b).sum() > 1500  # different words, different pixels
    # The label pill (amber) is in the top-left corner.
    corner = frame_a[:60, :260].reshape(-1, 3).astype(int)
    amber = (corner[:, 0] > 200) & (corner[:, 1] > 150) & (corner[:, 2] < 110)
    assert amber.sum() > 500


def test_the_picture_moves(tmp_path: Path) -> None:
    path = tmp_path / "m.mp4"
    render_clip(spec(size="320x180", seconds=2), path, fps=12)
    early, late = decode_frame(path, 0.25).astype(int), decode_frame(path, 1.5).astype(int)
    assert np.abs(early - late).mean() > 1.0
    bottom_early, bottom_late = early[-2:, :, :].mean(), late[-2:, :, :].mean()
    assert bottom_late > bottom_early + 20  # the progress bar has filled further


def test_long_prompts_are_cut_to_fit_quickly() -> None:
    started = time.perf_counter()
    still = compose_still(spec("word " * 6_400, size="1792x1024", seconds=12))
    assert time.perf_counter() - started < 3
    assert still.base.size == (1792, 1024)


def test_unbreakable_prompt_wraps() -> None:
    still = compose_still(spec("x" * 3_000, size="720x1280"))
    assert bright_mask(np.asarray(still.base)).sum() > 5_000


def test_reference_is_the_background(tmp_path: Path) -> None:
    colour = (200, 40, 40)
    ref = fit_reference(
        image_bytes("PNG", 400, 300, color=colour), declared_type="image/png", filename="r.png", size="640x360"
    )
    path = tmp_path / "r.mp4"
    render_clip(spec(size="640x360", seconds=2, reference=ref), path, fps=12)
    for at in (0.0, 1.0):
        frame = decode_frame(path, at).astype(int)
        upper_right = frame[30:140, 400:620].reshape(-1, 3).mean(axis=0)  # away from label and text
        assert np.abs(upper_right - colour).max() < 30, (at, upper_right)


def test_likeness_is_a_framed_portrait(tmp_path: Path) -> None:
    colour = (40, 170, 220)
    ref = fit_reference(
        image_bytes("JPEG", 500, 500, color=colour),
        declared_type="image/jpeg",
        filename="me.jpg",
        size="640x360",
        is_likeness=True,
    )
    path = tmp_path / "c.mp4"
    render_clip(spec(size="640x360", seconds=1, reference=ref), path, fps=12)
    frame = decode_frame(path, 0.0).astype(int)
    close = np.abs(frame - colour).max(axis=2) < 25
    share = close.mean()
    assert 0.08 < share < 0.5, share  # the portrait, not the whole frame
    ys, xs = np.nonzero(close)
    assert xs.mean() < 320  # on the left, text to its right
    border = frame[ys.min() - 2, xs.min() + 5 : xs.max() - 5]  # the white frame just above it
    assert border.mean(axis=1).min() > 200  # (by brightness: 4:2:0 chroma bleeds blue into it)
    background = frame[-40:-10, -60:-10].mean()
    assert background < np.mean(colour)  # the blurred, darkened background


def test_portrait_likeness_layout(tmp_path: Path) -> None:
    ref = fit_reference(
        image_bytes("PNG", 300, 400, color=(230, 200, 40)),
        declared_type=None,
        filename="me.png",
        size="360x640",
        is_likeness=True,
    )
    still = compose_still(spec(size="360x640", reference=ref))
    frame = np.asarray(still.base).astype(int)
    close = np.abs(frame - (230, 200, 40)).max(axis=2) < 10
    ys, _ = np.nonzero(close)
    assert 0.05 < close.mean() < 0.6 and ys.mean() < 320  # portrait above the text


# --------------------------------------------------------------------------- the provider lifecycle


async def test_progress_rises_then_completes(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=1.5)
    try:
        created = await provider.create(spec(size="160x120", seconds=4))
        seen = await finish(provider, created.id)
    finally:
        await provider.aclose()
    progress = [v.progress for v in seen]
    assert progress == sorted(progress)
    middle = {v.progress for v in seen if v.status is VideoStatus.IN_PROGRESS}
    assert len([p for p in middle if 0 < p < 100]) >= 3
    assert seen[-1].status is VideoStatus.COMPLETED and seen[-1].progress == 100


async def test_only_max_parallel_renders_run_the_rest_queue(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=1.0, max_parallel=1)
    try:
        first = await provider.create(spec(size="160x120", seconds=2))
        second = await provider.create(spec(size="160x120", seconds=2))
        await wait_for_progress(provider, first.id)
        assert (await provider.retrieve(second.id)).status is VideoStatus.QUEUED
        assert (await finish(provider, second.id))[-1].status is VideoStatus.COMPLETED
    finally:
        await provider.aclose()


async def test_restart_resumes_a_half_done_render(tmp_path: Path) -> None:
    work = tmp_path / "renders"
    colour = (30, 200, 90)
    ref = fit_reference(
        image_bytes("PNG", 320, 180, color=colour), declared_type=None, filename="r.png", size="320x180"
    )
    first = LocalRenderer(work_dir=work, fps=12, min_render_seconds=5)
    created = await first.create(spec(seconds=2, reference=ref))
    await wait_for_progress(first, created.id, at_least=5)
    await first.aclose()  # the process goes away half way...
    (work / f"{created.id}.part.mp4").write_bytes(b"half a file from the dead process")
    assert not (work / f"{created.id}.mp4").exists()

    second = LocalRenderer(work_dir=work, fps=12)  # ...and a new one is asked about the job
    try:
        resumed = await second.retrieve(created.id)
        assert resumed.status is VideoStatus.IN_PROGRESS
        assert (await finish(second, created.id))[-1].status is VideoStatus.COMPLETED
        dest = tmp_path / "resumed.mp4"
        await second.download(created.id, dest)
    finally:
        await second.aclose()
    probe_clip(dest, seconds=2, size="320x180")
    upper_right = decode_frame(dest, 0.0)[20:80, 200:300].reshape(-1, 3).mean(axis=0)
    assert np.abs(upper_right - colour).max() < 30  # the reference came back from its sidecar
    assert not (work / f"{created.id}.part.mp4").exists()

    third = LocalRenderer(work_dir=work, fps=12)
    try:
        assert (await third.retrieve(created.id)).status is VideoStatus.COMPLETED
        assert third.progress_of(created.id) is None  # answered from disk, nothing re-rendered
    finally:
        await third.aclose()


async def test_delete_cancels_a_running_render(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=20)
    try:
        created = await provider.create(spec(seconds=4))
        before = await wait_for_progress(provider, created.id)
        assert before.progress < 50
        started = time.monotonic()
        await provider.delete(created.id)
        assert time.monotonic() - started < 2
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        await asyncio.sleep(0.3)
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # the thread stopped writing
        with pytest.raises(ProviderError) as err:
            await provider.retrieve(created.id)
        assert err.value.kind is ErrorKind.NOT_FOUND
    finally:
        await provider.aclose()


async def test_delete_of_a_queued_render_does_not_wait_for_a_slot(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=20, max_parallel=1)
    try:
        running = await provider.create(spec(seconds=2))
        queued = await provider.create(spec(seconds=2))
        await wait_for_progress(provider, running.id)
        started = time.monotonic()
        await provider.delete(queued.id)
        assert time.monotonic() - started < 1
        assert not list(tmp_path.glob(f"{queued.id}*"))
        assert (await provider.retrieve(running.id)).status is VideoStatus.IN_PROGRESS
    finally:
        await provider.aclose()


async def test_delete_removes_a_finished_clip(renderer: LocalRenderer) -> None:
    created = await renderer.create(spec())
    await finish(renderer, created.id)
    await renderer.delete(created.id)
    assert list(renderer.work_dir.iterdir()) == []
    with pytest.raises(ProviderError) as err:
        await renderer.download(created.id, renderer.work_dir / "x.mp4")
    assert err.value.kind is ErrorKind.NOT_FOUND


async def test_a_failing_render_fails_and_stays_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(local, "compose_still", boom)
    provider = LocalRenderer(work_dir=tmp_path, fps=12)
    try:
        created = await provider.create(spec())
        seen = await finish(provider, created.id)
    finally:
        await provider.aclose()
    assert all(v.status is not VideoStatus.COMPLETED for v in seen)
    last = seen[-1]
    assert last.status is VideoStatus.FAILED and last.error is not None
    assert last.error.kind is ErrorKind.SERVER and "GPU caught fire" in last.error.detail
    assert not (tmp_path / f"{created.id}.mp4").exists()
    assert not (tmp_path / f"{created.id}.part.mp4").exists()

    monkeypatch.undo()
    again = LocalRenderer(work_dir=tmp_path, fps=12)  # after a restart it is still failed
    try:
        video = await again.retrieve(created.id)
        assert video.status is VideoStatus.FAILED and video.error is not None
        assert "GPU caught fire" in video.error.detail
    finally:
        await again.aclose()


async def test_download_before_the_end_is_refused(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=5)
    try:
        created = await provider.create(spec(seconds=2))
        with pytest.raises(ProviderError) as err:
            await provider.download(created.id, tmp_path / "early.mp4")
        assert err.value.kind is ErrorKind.BAD_REQUEST
    finally:
        await provider.aclose()


@pytest.mark.parametrize("video_id", ["local_0123456789abcdef", "../../etc/passwd", "local_../x", "", "video_1"])
async def test_unknown_ids_are_not_found(renderer: LocalRenderer, video_id: str) -> None:
    for call in (
        renderer.retrieve(video_id),
        renderer.download(video_id, renderer.work_dir / "x.mp4"),
        renderer.delete(video_id),
        renderer.remix(video_id, "again"),
    ):
        with pytest.raises(ProviderError) as err:
            await call
        assert err.value.kind is ErrorKind.NOT_FOUND


@pytest.mark.parametrize(
    ("size", "seconds"), [("321x180", 4), ("1280", 4), ("8x8", 4), ("320x180", 0), ("320x180", 999)]
)
async def test_bad_specs_are_bad_requests(renderer: LocalRenderer, size: str, seconds: int) -> None:
    with pytest.raises(ProviderError) as err:
        await renderer.create(spec(size=size, seconds=seconds))
    assert err.value.kind is ErrorKind.BAD_REQUEST
    assert list(renderer.work_dir.iterdir()) == []


async def test_remix_renders_the_same_spec_with_a_new_prompt(renderer: LocalRenderer, tmp_path: Path) -> None:
    original = await renderer.create(spec(seconds=2, size="320x180"))
    await finish(renderer, original.id)
    remixed = await renderer.remix(original.id, OTHER)
    assert remixed.id != original.id and remixed.status is VideoStatus.QUEUED
    assert (await finish(renderer, remixed.id))[-1].status is VideoStatus.COMPLETED
    sidecar = json.loads((renderer.work_dir / f"{remixed.id}.json").read_text())
    assert sidecar["prompt"] == OTHER and sidecar["remix_of"] == original.id
    assert (sidecar["size"], sidecar["seconds"], sidecar["model"]) == ("320x180", 2, "sora-2")
    dest = tmp_path / "remix.mp4"
    await renderer.download(remixed.id, dest)
    probe_clip(dest, seconds=2, size="320x180")


async def test_sidecar_is_written_before_create_returns(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12, min_render_seconds=5)
    ref = fit_reference(
        image_bytes("WEBP", 50, 50), declared_type=None, filename="w.webp", size="320x180", is_likeness=True
    )
    try:
        created = await provider.create(spec(reference=ref))
        doc = json.loads((tmp_path / f"{created.id}.json").read_text())
        assert doc["prompt"] == PROMPT and doc["reference"]["is_likeness"] is True
        assert (tmp_path / f"{created.id}.ref").read_bytes() == ref.data
    finally:
        await provider.aclose()
    assert (tmp_path / f"{created.id}.json").exists()  # shutting down keeps it for the next process


async def test_a_damaged_sidecar_is_a_server_error_not_a_crash(tmp_path: Path) -> None:
    provider = LocalRenderer(work_dir=tmp_path, fps=12)
    try:
        (tmp_path / "local_0123456789abcdef.json").write_text("{not json")
        (tmp_path / "local_fedcba9876543210.json").write_text(json.dumps({"prompt": "x"}))
        for video_id in ("local_0123456789abcdef", "local_fedcba9876543210"):
            with pytest.raises(ProviderError) as err:
                await provider.retrieve(video_id)
            assert err.value.kind is ErrorKind.SERVER
    finally:
        await provider.aclose()
