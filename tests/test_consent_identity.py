"""A cameo bound to its person (issue 12, item 9) and stored per owner (issue 11).

Faces are scikit-image's public-domain pictures: the astronaut (Eileen Collins) and the cameraman,
two different people; ``coffee`` has nobody in it. The embeddings are ``bot.faces``' real model.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.app import App
from bot.config import Settings
from bot.consent import enable_cameos
from bot.consent.registration import TAKEN
from bot.jobs import InputFile, JobState, Requester
from tests.test_consent import FACE, NO_FACE, SAMPLES, press, register, say, start

pytestmark = pytest.mark.timeout(240)


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).resize((360, 360)).save(out, "JPEG", quality=70)
    return out.getvalue()


def _pixels(name: str) -> np.ndarray:
    """A scikit-image sample's pixels, as ``skimage.data`` gives them (its reader takes ~0.3 s to load, in every
    xdist worker that collects this module)."""
    with Image.open(SAMPLES / name) as image:
        return np.asarray(image)


SAME_FACE_OTHER_FILE = _jpeg(np.ascontiguousarray(_pixels("astronaut.png")[:, ::-1]))  # mirrored, smaller, JPEG
OTHER_PERSON = _png(_pixels("camera.png"))


def upload(data: bytes, name: str = "me.png") -> tuple[InputFile, ...]:
    return (InputFile(name, "image/jpeg" if name.endswith(".jpg") else "image/png", data),)


def owner_files(app: App, owner_key: str) -> list[Path]:
    directory = app.bot.cameos.files.owner_dir(owner_key)
    return sorted(directory.iterdir()) if directory.is_dir() else []


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    application = await start(make_settings(REELBOT_ADMIN_IDS="root"))
    yield application
    await application.close()


async def test_a_face_that_is_someone_elses_cameo_is_refused(app: App) -> None:
    await register(app, "alice")
    for data, name in ((FACE, "me.png"), (SAME_FACE_OTHER_FILE, "me.jpg")):
        reply = await say(app, "mallory", "cameo register", attachments=upload(data, name))
        assert not reply.ok and reply.text == TAKEN
        assert owner_files(app, "console:w1:mallory") == []  # nothing of hers was stored
    assert await app.bot.cameos.store.get("console:w1:mallory") is None
    history = await say(app, "alice", "cameo history")
    assert history.text.count("registration refused by @mallory") == 2
    # Another person's face registers.
    await register(app, "mallory", OTHER_PERSON)


async def test_registration_needs_a_face(app: App) -> None:
    for data in (NO_FACE, _png(np.full((480, 640, 3), 200, np.uint8))):
        reply = await say(app, "bob", "cameo register", attachments=upload(data))
        assert not reply.ok and "can't find a face" in reply.text
    assert not (app.settings.data_dir / "cameos").exists() or not any((app.settings.data_dir / "cameos").iterdir())


async def test_two_owners_uploading_the_same_bytes_get_separate_files(app: App) -> None:
    for user in ("alice", "bob", "carol"):  # nobody has confirmed yet, so nobody owns the face yet
        assert (await say(app, user, "cameo register", attachments=upload(FACE))).ok
    files = {user: owner_files(app, f"console:w1:{user}") for user in ("alice", "bob", "carol")}
    assert all(len(paths) == 2 for paths in files.values())
    assert len({p for paths in files.values() for p in paths}) == 6  # six files, none shared
    assert all(p.stat().st_mode & 0o077 == 0 for paths in files.values() for p in paths)

    revoked = await say(app, "alice", "cameo revoke")
    assert revoked.ok
    assert not any(p.exists() for p in files["alice"])
    assert all(p.exists() for p in files["bob"] + files["carol"])
    assert any(p.read_bytes() == FACE for p in files["bob"])

    assert (await say(app, "bob", "cameo confirm")).ok
    late = await say(app, "carol", "cameo confirm")  # bob's face now: carol's upload is refused and deleted
    assert not late.ok and late.text == TAKEN
    assert not any(p.exists() for p in files["carol"])
    assert all(p.exists() for p in files["bob"])


async def test_a_new_registration_deletes_the_earlier_ones_files(app: App) -> None:
    await register(app, "alice")
    first = owner_files(app, "console:w1:alice")
    await register(app, "alice", SAME_FACE_OTHER_FILE, filename="me.jpg")
    second = owner_files(app, "console:w1:alice")
    assert len(second) == 2 and not set(first) & set(second)
    assert not any(p.exists() for p in first)
    await say(app, "alice", "cameo revoke")
    assert owner_files(app, "console:w1:alice") == []
    cameo = await app.bot.cameos.store.get("console:w1:alice")
    assert cameo.status == "revoked" and cameo.embedding is None and cameo.verified_by is None
    assert await app.bot.cameos.store.files("console:w1:alice") == []


async def test_an_admin_verifies_before_anyone_can_use_it(app: App) -> None:
    await register(app, "alice", verify=False)
    dms = [p for p in app.bot.deliveries["console"].posts if p.startswith("(direct message to @root)")]
    assert len(dms) == 1 and "[Verify @alice]" in dms[0]
    await say(app, "alice", "cameo audience everyone")
    for user in ("alice", "bob"):
        reply = await say(app, user, "a walk --cameo @alice")
        assert not reply.ok and "waiting for a workspace admin to verify" in reply.text and reply.job is None
    own_face = await say(app, "alice", "me on the moon", attachments=upload(FACE))
    assert not own_face.ok and "waits for a workspace admin" in own_face.text
    await say(app, "alice", "cameo audience approved")
    asked = await say(app, "bob", "a walk --cameo @alice")
    assert not asked.ok and asked.job is None and await app.bot.cameos.store.pending("console:w1:alice") == []
    status = await say(app, "alice", "cameo status")
    assert "waits for a workspace admin" in status.text

    stranger = await press(app, "bob", "cameo_verify:alice")
    assert not stranger.ok and "Only workspace admins" in stranger.text
    own = await press(app, "alice", "cameo_verify:alice", admin=True)
    assert not own.ok and "Another admin" in own.text
    assert not (await press(app, "root", "cameo_verify:nobody", admin=True)).ok
    verified = await press(app, "root", "cameo_verify:alice", admin=True)
    assert verified.ok and "Verified" in verified.text
    assert any(
        "(direct message to @alice) A workspace admin verified" in p for p in app.bot.deliveries["console"].posts
    )

    reply = await say(app, "alice", "a walk --cameo @alice")
    assert reply.ok, reply.text
    done = await app.worker.wait_for(reply.job.id, timeout=60)
    assert done.state is JobState.DELIVERED
    history = await say(app, "alice", "cameo history")
    assert "verified by @root" in history.text


class Photos:
    """Profile photos as a platform adapter would fetch them (our own seam, no protocol behind it)."""

    def __init__(self, photos: dict[str, bytes]) -> None:
        self.photos = photos
        self.asked: list[str] = []

    async def profile_photo(self, requester: Requester) -> bytes | None:
        self.asked.append(requester.user_id)
        return self.photos.get(requester.user_id)


async def test_a_profile_photo_verifies_or_refuses_the_registration(app: App) -> None:
    photos = Photos({"alice": SAME_FACE_OTHER_FILE, "bob": FACE, "carol": NO_FACE})
    enable_cameos(
        app.bot, data_dir=app.settings.data_dir, admin_verify="unverified", profile_photos={"console": photos}
    )

    await register(app, "alice", verify=False)  # her profile photo shows her: verified, no admin needed
    assert (await app.bot.cameos.store.get("console:w1:alice")).verified_by == "profile"
    assert (await say(app, "alice", "me --cameo @alice")).ok

    # Bob's profile photo is the astronaut; his upload is the cameraman: not him.
    refused = await say(app, "bob", "cameo register", attachments=upload(OTHER_PERSON))
    assert not refused.ok and "does not match your profile photo" in refused.text
    assert owner_files(app, "console:w1:bob") == []

    # Carol's profile photo has no face: an admin must verify.
    await register(app, "carol", OTHER_PERSON, verify=False)
    assert (await app.bot.cameos.store.get("console:w1:carol")).verified_by is None
    assert photos.asked == ["alice", "bob", "carol"]


async def test_verification_modes(app: App) -> None:
    photos = Photos({"alice": FACE})
    enable_cameos(app.bot, data_dir=app.settings.data_dir, admin_verify="always", profile_photos={"console": photos})
    await register(app, "alice", verify=False)
    # A matching profile photo is not enough when every cameo needs an admin.
    assert "verify" in (await say(app, "alice", "me --cameo @alice")).text
    assert (await press(app, "root", "cameo_verify:alice", admin=True)).ok
    assert (await say(app, "alice", "me --cameo @alice")).ok

    enable_cameos(app.bot, data_dir=app.settings.data_dir, admin_verify="never")
    await register(app, "bob", OTHER_PERSON, verify=False)
    assert (await app.bot.cameos.store.get("console:w1:bob")).verified_by == "not_required"
    assert (await say(app, "bob", "me --cameo @bob")).ok
    # Turning verification on later does not count "not required" as verified.
    enable_cameos(app.bot, data_dir=app.settings.data_dir, admin_verify="unverified")
    assert "verify" in (await say(app, "bob", "me --cameo @bob")).text
