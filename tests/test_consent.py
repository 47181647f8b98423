"""Likeness consent: registration, the audience matrix, approval, expiry, revocation, faces, history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import skimage

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.core import Reply
from bot.jobs import ChatRequest, InputFile, JobState, Requester
from bot.providers.local import LocalRenderer
from bot.providers.openai_videos import OpenAIVideosProvider
from tests.media_factory import image_bytes, make_clip

pytestmark = pytest.mark.timeout(90)

SAMPLES = Path(skimage.__file__).parent / "data"
FACE = (SAMPLES / "astronaut.png").read_bytes()  # ships inside scikit-image: nothing downloaded
NO_FACE = (SAMPLES / "coffee.png").read_bytes()


def who(user: str, workspace: str = "w1", *, admin: bool = False) -> Requester:
    return Requester("console", workspace, user, f"@{user}", is_admin=admin)


# The catalog's default model (sora-2) takes no subject reference; cameo clips ask for one that does.
CAMEO_MODEL = "veo-3.1"


async def say(
    app: App, user: str, text: str, *, workspace: str = "w1", attachments: tuple[InputFile, ...] = ()
) -> Reply:
    """Sends ``/video TEXT`` as ``user``; a clip with ``--cameo`` (and no ``--model``) asks for ``CAMEO_MODEL``."""
    if "--cameo" in text and "--model" not in text:
        text += f" --model {CAMEO_MODEL}"
    request = ChatRequest(
        requester=who(user, workspace),
        request_key=f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
        attachments=attachments,
    )
    return await app.bot.handle(request)


async def press(app: App, user: str, action_id: str, workspace: str = "w1", *, admin: bool = False) -> Reply:
    return await app.bot.press_action(who(user, workspace, admin=admin), action_id)


async def register(
    app: App, user: str, data: bytes = FACE, workspace: str = "w1", *, verify: bool = True, filename: str = "me.png"
) -> None:
    """Registers and confirms ``user``'s cameo; ``verify``: a workspace admin then verifies it."""
    kind = "video/mp4" if filename.endswith(".mp4") else "image/png"
    reply = await say(app, user, "cameo register", workspace=workspace, attachments=(InputFile(filename, kind, data),))
    assert reply.ok and "consent" in reply.text.lower(), reply.text
    assert reply.actions == (("cameo_confirm", "I consent: confirm my cameo"),)
    confirmed = await say(app, user, "cameo confirm", workspace=workspace)
    assert confirmed.ok and "active" in confirmed.text
    if verify and "admin must verify" in confirmed.text:
        verified = await press(app, "root", f"cameo_verify:{user}", workspace, admin=True)
        assert verified.ok and "Verified" in verified.text, verified.text


def face_clip(path: Path, *, seconds: float) -> bytes:
    """A real H.264 MP4 of the astronaut's face, ``seconds`` long."""
    import av
    import numpy as np
    import skimage.data

    frame = np.ascontiguousarray(skimage.data.astronaut()[:256, 96:352])
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for _ in range(round(seconds * 8)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path.read_bytes()


async def start(settings: Settings, min_render: float = 0.0, *, worker: bool = True) -> App:
    provider = LocalRenderer(work_dir=settings.data_dir / "renders", fps=12, min_render_seconds=min_render)
    app = await build_app(settings, provider=provider)
    app.bot.register(ConsoleDelivery(quiet=True))
    app.worker.tick_seconds = 0.1
    if worker:
        await app.worker.start()
    return app


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    application = await start(make_settings())
    yield application
    await application.close()


@pytest.fixture
async def admission(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    """The core with its worker not started: for what is decided when a request arrives (the jobs admitted
    stay queued instead of rendering in the background while the test goes on)."""
    application = await start(make_settings(), worker=False)
    yield application
    await application.close()


async def test_register_needs_an_attachment_and_an_explicit_confirmation(app: App) -> None:
    none = await say(app, "alice", "cameo register")
    assert not none.ok and "Attach exactly one image" in none.text
    reply = await say(app, "alice", "cameo register", attachments=(InputFile("me.png", "image/png", FACE),))
    assert reply.ok
    early = await say(app, "bob", "a walk --cameo @alice")
    assert not early.ok and "no active cameo" in early.text
    confirmed = await press(app, "alice", "cameo_confirm")
    assert confirmed.ok and "active" in confirmed.text
    status = await say(app, "alice", "cameo status")
    assert "active" in status.text and "only you" in status.text


async def test_register_with_a_short_video(app: App, tmp_path: Path) -> None:
    clip = face_clip(tmp_path / "me.mp4", seconds=3)
    reply = await say(app, "alice", "cameo register", attachments=(InputFile("me.mp4", "video/mp4", clip),))
    assert reply.ok, reply.text
    too_long = face_clip(tmp_path / "long.mp4", seconds=6)
    refused = await say(app, "bob", "cameo register", attachments=(InputFile("long.mp4", "video/mp4", too_long),))
    assert not refused.ok and "2 to 4 seconds" in refused.text
    faceless = make_clip(tmp_path / "faceless.mp4", seconds=3, width=320, height=240).read_bytes()
    refused = await say(app, "bob", "cameo register", attachments=(InputFile("f.mp4", "video/mp4", faceless),))
    assert not refused.ok and "can't find a face in that video" in refused.text


@pytest.mark.parametrize(
    ("audience", "owner", "approved", "same_workspace", "other_workspace"),
    [
        ("only-me", True, False, False, False),
        ("approved", True, True, "ask", "ask"),
        ("workspace", True, True, True, False),
        ("everyone", True, True, True, True),
    ],
)
async def test_audience_matrix(
    admission: App, audience: str, owner: bool, approved: bool, same_workspace: object, other_workspace: object
) -> None:
    app = admission
    await register(app, "alice")
    assert (await say(app, "alice", f"cameo audience {audience}")).ok
    assert (await say(app, "alice", "cameo allow @bob")).ok

    async def outcome(user: str, workspace: str) -> object:
        reply = await say(app, user, "a walk on the beach --cameo @alice", workspace=workspace)
        if not reply.ok:
            assert "Nothing was charged" in reply.text
            return False
        if reply.job is not None and reply.job.state is JobState.PENDING_CONSENT:
            return "ask"
        return True

    assert await outcome("alice", "w1") == owner
    assert await outcome("bob", "w1") == (approved if audience != "approved" else True)
    assert await outcome("carol", "w1") == same_workspace
    assert await outcome("dave", "w2") == other_workspace


async def test_approval_by_direct_message_buttons_then_delivery(app: App) -> None:
    await register(app, "alice")
    await say(app, "alice", "cameo audience approved")
    reply = await say(app, "bob", "a dance --cameo @alice")
    assert reply.ok and reply.job.state is JobState.PENDING_CONSENT and "waits" in reply.text
    assert (await app.store.ledger_totals()).reserved == 0  # nothing reserved while waiting
    delivery = app.bot.deliveries["console"]
    dm = next(p for p in delivery.posts if p.startswith("(direct message to @alice)") and "Request " in p)
    request_id = dm.split("Request ")[1].split(".")[0]
    stranger = await press(app, "bob", f"cameo_approve:{request_id}")
    assert not stranger.ok and "Only the cameo's owner" in stranger.text
    approved = await press(app, "alice", f"cameo_approve:{request_id}")
    assert approved.ok
    job = await app.worker.wait_for(reply.job.id, timeout=30)
    assert job.state is JobState.DELIVERED
    again = await say(app, "bob", "another dance --cameo @alice")
    assert again.job.state is JobState.PENDING_CONSENT  # approved once, not always
    history = await say(app, "alice", "cameo history")
    assert f"used in job {job.id} asked by @bob" in history.text


async def test_always_allow_and_deny(app: App) -> None:
    await register(app, "alice")
    await say(app, "alice", "cameo audience approved")
    first = await say(app, "bob", "a dance --cameo @alice")
    status = await say(app, "alice", "cameo status")
    request_id = next(a for a, _ in status.actions if a.startswith("cameo_always:")).split(":")[1]
    assert (await say(app, "alice", f"cameo approve {request_id} --always")).ok
    assert (await app.store.get_job(first.job.id)).state is not JobState.PENDING_CONSENT
    second = await say(app, "bob", "another --cameo @alice")
    assert second.job.state is not JobState.PENDING_CONSENT

    carol = await say(app, "carol", "a dance --cameo @alice")
    status = await say(app, "alice", "cameo status")
    deny = next(a for a, _ in status.actions if a.startswith("cameo_deny:"))
    assert (await press(app, "alice", deny)).ok
    job = await app.store.get_job(carol.job.id)
    assert job.state is JobState.REFUSED and "declined" in job.error
    assert await app.store.ledger_for(job.id) == []


async def test_consent_request_expires_with_a_clear_message(make_settings: Callable[..., Settings]) -> None:
    app = await start(make_settings(REELBOT_CONSENT_TIMEOUT_S=0.3))
    try:
        await register(app, "alice")
        await say(app, "alice", "cameo audience approved")
        reply = await say(app, "bob", "a dance --cameo @alice")
        deadline = time.monotonic() + 10
        while (await app.store.get_job(reply.job.id)).state is JobState.PENDING_CONSENT:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        job = await app.store.get_job(reply.job.id)
        assert job.state is JobState.REFUSED and "did not answer in time" in job.error
        assert any("expired" in p for p in app.bot.deliveries["console"].posts)
    finally:
        await app.close()


async def test_forbidden_words_are_refused(admission: App) -> None:
    app = admission
    await register(app, "alice")
    await say(app, "alice", "cameo audience everyone")
    assert (await say(app, "alice", "cameo forbid politics Beer")).ok
    refused = await say(app, "bob", "alice drinking beer --cameo @alice")
    assert not refused.ok and "does not allow" in refused.text and "beer" not in refused.text.lower()
    plural = await say(app, "bob", "alice drinking beers --cameo @alice")  # word forms count
    assert not plural.ok and "does not allow" in plural.text
    assert (await say(app, "bob", "alice eating beetroot --cameo @alice")).ok  # whole words only
    own = await say(app, "alice", "me talking politics --cameo @alice")
    assert not own.ok


async def test_revocation_stops_queued_and_rendering_jobs_and_lists_posts(
    make_settings: Callable[..., Settings],
) -> None:
    app = await start(make_settings(REELBOT_MAX_JOBS_IN_FLIGHT=1), min_render=4)
    try:
        await register(app, "alice")
        await say(app, "alice", "cameo audience everyone")
        delivered = (await say(app, "bob", "first --cameo @alice")).job
        await app.worker.wait_for(delivered.id, timeout=30)
        rendering = (await say(app, "bob", "second --cameo @alice")).job
        queued = (await say(app, "carol", "third --cameo @alice")).job
        while (await app.store.get_job(rendering.id)).state is not JobState.RENDERING:
            await asyncio.sleep(0.05)
        reply = await say(app, "alice", "cameo revoke")
        assert reply.ok and delivered.id in reply.text, reply.text
        # The queued job ends at once; the rendering one when its worker has stopped it (perhaps later).
        assert "2 unposted clip(s) stopped" in reply.text or (
            "1 unposted clip(s) stopped" in reply.text and "1 clip(s) being made" in reply.text
        )
        assert reply.actions and reply.actions[0][0] == "cameo_delete_posts"
        for job_id in (rendering.id, queued.id):
            done = await app.worker.wait_for(job_id, timeout=20)
            assert done.state is JobState.REFUSED and "revoked" in done.error
            ((reserve, amount), (close, back)) = await app.store.ledger_for(job_id)
            assert (reserve, close, back) == ("reserve", "release", amount)
        assert not list((app.settings.data_dir / "cameos").glob("*"))
        later = await say(app, "bob", "fourth --cameo @alice")
        assert not later.ok and "no active cameo" in later.text
        deleted = await press(app, "alice", "cameo_delete_posts")
        assert deleted.ok and "Deleted 1 post" in deleted.text
        history = await say(app, "alice", "cameo history")
        assert "revoked" in history.text and "post deleted" in history.text
    finally:
        await app.close()


async def test_a_face_in_a_plain_reference_is_refused_before_spending(admission: App) -> None:
    app = admission
    face = InputFile("person.png", "image/png", FACE)
    reply = await say(app, "bob", "a walk", attachments=(face,))
    assert not reply.ok and "face" in reply.text and "/video cameo register" in reply.text
    assert reply.job is None
    for data in (NO_FACE, image_bytes("PNG", 640, 480)):
        fine = await say(app, "bob", "a walk", attachments=(InputFile("x.png", "image/png", data),))
        assert fine.ok, fine.text


async def test_own_registered_image_may_be_used_as_a_reference(app: App) -> None:
    await register(app, "alice")
    reply = await say(app, "alice", "me on the moon", attachments=(InputFile("me.png", "image/png", FACE),))
    assert reply.ok
    job = await app.worker.wait_for(reply.job.id, timeout=30)
    assert job.state is JobState.DELIVERED and job.options.cameo == "console:w1:alice"


async def test_the_videos_protocol_refuses_cameos_before_spending(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    local = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders"))
    await register(local, "alice")
    await say(local, "alice", "cameo audience everyone")
    await local.close()
    # No server is listening: a refusal must come before any request is made.
    provider = OpenAIVideosProvider(api_key="sk-test-unused-000000", base_url="http://127.0.0.1:9/v1")
    remote = await build_app(settings, provider=provider)
    remote.bot.register(ConsoleDelivery(quiet=True))
    try:
        reply = await say(remote, "bob", "a walk --cameo @alice --model sora-2")
        # The catalog (sora-2 takes no subject reference) or the protocol check refuses it first.
        assert not reply.ok and ("can't use a cameo" in reply.text or "rejects images of real people" in reply.text)
        assert (await remote.store.ledger_totals()).reserved == 0
    finally:
        await remote.close()


async def test_the_audit_is_append_only(app: App) -> None:
    await register(app, "alice")
    with pytest.raises(Exception, match="append-only"):
        await app.store._db.execute("UPDATE cameo_audit SET action = 'nothing'")
    with pytest.raises(Exception, match="append-only"):
        await app.store._db.execute("DELETE FROM cameo_audit")


async def test_revocation_removes_every_copy_of_the_likeness(app: App) -> None:
    await register(app, "alice")
    job = (await say(app, "alice", "me dancing --cameo @alice")).job
    done = await app.worker.wait_for(job.id, timeout=30)
    assert done.state is JobState.DELIVERED
    assert Path(done.reference_path).exists()
    assert list((app.settings.data_dir / "renders").glob(f"{done.provider_video_id}*"))
    await say(app, "alice", "cameo revoke")
    assert not Path(done.reference_path).exists()
    assert not list((app.settings.data_dir / "renders").glob(f"{done.provider_video_id}*"))
    assert Path(done.clip_path).exists()  # the post and its clip go when the owner presses the button
    deleted = await press(app, "alice", "cameo_delete_posts")
    assert deleted.ok and not Path(done.clip_path).exists()
