"""bot.faces: rolled, mirrored and small faces are found; pictures without people pass; odd bytes never raise;
embeddings tell the same person from another.

Every picture ships inside scikit-image (public domain: the astronaut is Eileen Collins in a NASA photo), turned,
mirrored and shrunk here with Pillow. The detector and the embedding model are the real dlib models.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import bot.faces
from bot.faces import FaceBox, face_distance, face_embedding, find_faces, has_face, same_person
from tests.media_factory import png_bomb

pytestmark = pytest.mark.timeout(60)

SAMPLES = Path(skimage.__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def picture(name: str) -> Image.Image:
    with Image.open(SAMPLES / name) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def turned(degrees: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True, fillcolor="white")


def shrunk(width: int) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.resize((width, width * image.height // image.width), Image.Resampling.LANCZOS)


ASTRONAUT = picture("astronaut.png")
ASTRONAUT_PNG = encode(ASTRONAUT)


def variant(*steps: Callable[[Image.Image], Image.Image]) -> bytes:
    image = ASTRONAUT
    for step in steps:
        image = step(image)
    return encode(image)


def mirror(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def upside_down(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def head(image: Image.Image) -> Image.Image:
    """Her head, without the background."""
    return image.crop((150, 40, 310, 220))


# --------------------------------------------------------------------------- finding faces


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("turned 30", (turned(30),)),
        ("turned 90", (turned(90),)),
        ("turned 135", (turned(135),)),
        ("turned 180", (turned(180),)),
        ("mirrored", (mirror,)),
        ("mirrored top to bottom", (upside_down,)),
        ("128 px wide", (shrunk(128),)),
        ("128 px wide and turned 90", (shrunk(128), turned(90))),
        ("head only, 64 px", (head, shrunk(64))),
    ],
)
def test_a_turned_mirrored_or_small_face_is_found(
    name: str, steps: tuple[Callable[[Image.Image], Image.Image]]
) -> None:
    assert has_face(variant(*steps)), name


def test_the_old_bypasses_were_missed_by_a_haar_cascade_but_not_now() -> None:
    """The cases issue 12 reported: OpenCV's Haar cascade (the old guard) misses them, the new one does not."""
    import cv2

    haar = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    for data in (variant(turned(90)), variant(turned(180)), variant(shrunk(128))):
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert len(haar.detectMultiScale(cv2.equalizeHist(grey), 1.1, 6, minSize=(24, 24))) == 0
        assert has_face(data)


def test_the_box_is_where_the_face_is_in_the_original_pixels() -> None:
    (upright,) = find_faces(ASTRONAUT_PNG)
    assert upright.roll == 0 and upright.score > 0.5
    centre = np.array([upright.left + upright.width / 2, upright.top + upright.height / 2])
    assert 180 < centre[0] < 280 and 80 < centre[1] < 180  # her face, by eye, in scikit-image's 512x512 picture
    (half_turn,) = find_faces(variant(turned(180)))
    assert half_turn.roll == 180
    other = np.array([half_turn.left + half_turn.width / 2, half_turn.top + half_turn.height / 2])
    assert np.linalg.norm(other - (512 - centre)) < 15  # a half turn maps (x, y) to (512 - x, 512 - y)
    (small,) = find_faces(variant(shrunk(128)))
    assert isinstance(small, FaceBox)
    assert abs(small.left + small.width / 2 - centre[0] / 4) < 6 and small.width < 40  # in the 128-px image's pixels


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg", "coins.png"])
def test_pictures_without_people_pass(name: str) -> None:
    assert find_faces((SAMPLES / name).read_bytes()) == []


# --------------------------------------------------------------------------- odd bytes


def _one_by_50000() -> bytes:
    return encode(Image.new("RGB", (1, 50_000), "white"))


def _header_only(width: int, height: int) -> bytes:
    """The first 33 bytes of a PNG (signature and IHDR) claiming ``width`` x ``height``, and nothing after."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("1x50000 PNG", _one_by_50000),
        ("truncated PNG", lambda: ASTRONAUT_PNG[: len(ASTRONAUT_PNG) // 2]),
        ("truncated JPEG", lambda: encode(ASTRONAUT, "JPEG")[:3000]),
        ("0 bytes", lambda: b""),
        ("decompression bomb, 20000x20000 PNG", lambda: png_bomb(20_000, 20_000)),
        ("header claiming 65535x65535", lambda: _header_only(65_535, 65_535)),
        ("header claiming 0x0", lambda: _header_only(0, 0)),
        ("text", lambda: b"hello, I am a PNG"),
        ("EPS, which Pillow would hand to Ghostscript", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"),
        ("TIFF, not a reference format (bot.media refuses it)", lambda: encode(ASTRONAUT, "TIFF")),
        ("PNG signature then garbage", lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
    ],
)
def test_odd_bytes_give_nothing_quickly_and_never_raise(name: str, make: Callable[[], bytes]) -> None:
    data = make()
    started = time.perf_counter()
    assert find_faces(data) == [], name
    assert has_face(data) is False, name
    assert face_embedding(data) is None, name
    assert time.perf_counter() - started < 3.0, name  # the real work is far under 0.1 s: nothing is decoded


SMALL = {fmt: encode(ASTRONAUT.resize((64, 64)), fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP")}


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(SMALL)),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    keep=st.none() | st.integers(0, 10_000),
)
def test_damaged_pictures_never_raise(fmt: str, cuts: list[tuple[int, int]], keep: int | None) -> None:
    """Real pictures with bytes overwritten (and some cut short): whatever comes out, nothing raises. Most damaged
    JPEG, WebP, GIF and BMP files still decode, so the detector runs on their garbled pixels too."""
    data = bytearray(SMALL[fmt])
    for at, value in cuts:
        data[at % len(data)] = value
    damaged = bytes(data if keep is None else data[: max(1, keep % (len(data) + 1))])
    assert isinstance(find_faces(damaged), list)
    assert isinstance(has_face(damaged), bool)


def test_a_16_bit_grey_png_is_screened_not_clipped_to_white() -> None:
    grey = np.asarray(ASTRONAUT.convert("L")).astype(np.uint16) * 257
    assert has_face(encode(Image.fromarray(grey)))


def test_a_large_jpeg_is_decoded_small(tmp_path: Path) -> None:
    """A 7000x7000 JPEG (issue 12, item 8) is decoded at 1/8 scale: the peak grows by MBs, not the 147 MB a
    full-size decode takes (7000 x 7000 x 3 bytes).

    Measured in a fresh process, as the growth of its peak resident size (VmHWM, restarted through
    /proc/self/clear_refs) over the screening call. ``ru_maxrss`` would not do: it carries the parent's peak over.
    """
    big = tmp_path / "big.jpg"
    ASTRONAUT.resize((7000, 7000), Image.Resampling.BILINEAR).save(big, "JPEG", quality=80)
    script = (
        "import sys\n"
        "from bot.faces import has_face\n"
        "def kb(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))\n"
        "has_face(open(sys.argv[1], 'rb').read())\n"
        "data = open(sys.argv[2], 'rb').read()\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kb('VmRSS')\n"
        "found = has_face(data)\n"
        "print(found, (kb('VmHWM') - before) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(SAMPLES / "coffee.png"), str(big)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found, growth_mb = done.stdout.split()
    assert found == "True"  # the astronaut, enlarged to 7000 px, is still found
    assert int(growth_mb) < 40, done.stdout


# --------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def astronaut_embedding() -> np.ndarray:
    embedding = face_embedding(ASTRONAUT_PNG)
    assert embedding is not None
    return embedding


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("turned 90", (turned(90),)),
        ("mirrored", (mirror,)),
        ("160 px wide and turned 30", (shrunk(160), turned(30))),
        ("head only", (head,)),
    ],
)
def test_the_same_person_turned_mirrored_or_small_is_the_same_person(
    astronaut_embedding: np.ndarray, name: str, steps: tuple[Callable[[Image.Image], Image.Image]]
) -> None:
    other = face_embedding(variant(*steps))
    assert other is not None and other.shape == (128,) and other.dtype == np.float32
    assert same_person(astronaut_embedding, other), (name, face_distance(astronaut_embedding, other))


def test_another_person_is_not_the_same_person(astronaut_embedding: np.ndarray) -> None:
    """The cameraman is the only other real face scikit-image ships."""
    cameraman = face_embedding((SAMPLES / "camera.png").read_bytes())
    assert cameraman is not None
    assert not same_person(astronaut_embedding, cameraman), face_distance(astronaut_embedding, cameraman)


@pytest.mark.parametrize("name", ["chelsea.png"])  # a cat's face
def test_pictures_without_people_have_no_embedding(name: str) -> None:
    assert face_embedding((SAMPLES / name).read_bytes()) is None


def test_embeddings_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        face_distance(np.zeros(128), np.zeros(64))


# --------------------------------------------------------------------------- threads


def test_threads_share_the_detector_safely_and_at_most_max_concurrent_decode_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    coffee = picture("coffee.png")
    small = [variant(shrunk(128)), variant(shrunk(128), turned(90)), encode(shrunk(160)(coffee)), variant(head)]
    inputs = small * 2
    alone = [len(find_faces(data)) for data in small] * 2
    assert alone[:4] == [1, 1, 0, 1]
    inside = 0
    most = 0
    lock = threading.Lock()
    real = bot.faces.working_image

    def counted(data: bytes):  # type: ignore[no-untyped-def]
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            return real(data)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(bot.faces, "working_image", counted)
    monkeypatch.setattr(bot.faces, "_answers", bot.faces._Answers())  # search again, not from the answers above
    results: list[int | None] = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def work(index: int) -> None:
        start.wait(timeout=10)
        results[index] = len(find_faces(inputs[index]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert not any(thread.is_alive() for thread in threads)
    assert results == alone
    assert 1 <= most <= bot.faces.MAX_CONCURRENT


def test_the_same_picture_is_searched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration screens a picture and then takes its embedding: one search, not two."""
    monkeypatch.setattr(bot.faces, "_answers", bot.faces._Answers(size=2))
    searched: list[int] = []
    real = bot.faces.working_image

    def counted(data: bytes):  # type: ignore[no-untyped-def]
        searched.append(len(data))
        return real(data)

    monkeypatch.setattr(bot.faces, "working_image", counted)
    face, other = variant(shrunk(128)), variant(shrunk(160))
    first = face_embedding(face)
    assert first is not None and has_face(face) and len(find_faces(face)) == 1
    again = face_embedding(face)
    assert again is not None and np.array_equal(first, again) and again is not first
    assert len(searched) == 2  # the embedding's search and find_faces' (has_face took the embedding's answer)
    coffee = encode(shrunk(160)(picture("coffee.png")))
    assert face_embedding(coffee) is None and face_embedding(coffee) is None
    assert len(searched) == 3
    face_embedding(other)  # the answers hold two pictures: the oldest is forgotten and searched again
    face_embedding(face)
    assert len(searched) == 5


def test_a_picture_without_a_face_is_searched_once_whatever_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain reference is screened as sent and again when the same picture comes back (a retry, a remix): the
    first full search that finds nothing answers ``has_face``, ``find_faces`` and ``face_embedding`` after it."""
    monkeypatch.setattr(bot.faces, "_answers", bot.faces._Answers())
    searched: list[bool] = []
    real = bot.faces._search

    def counted(data: bytes, slot, *, first_only: bool):  # type: ignore[no-untyped-def]
        searched.append(first_only)
        return real(data, slot, first_only=first_only)

    monkeypatch.setattr(bot.faces, "_search", counted)
    coffee, face = encode(shrunk(160)(picture("coffee.png"))), variant(shrunk(128))
    assert not has_face(coffee) and not has_face(coffee)
    assert find_faces(coffee) == [] and face_embedding(coffee) is None
    assert searched == [True]
    assert has_face(face) and has_face(face)  # a face found by the first-only search: still true when asked again
    assert searched == [True, True]
    assert len(find_faces(face)) == 1  # every face is another question: searched in full
    assert searched == [True, True, False]


def test_a_thin_pictures_turned_copies_are_searched_at_a_bounded_size() -> None:
    """A 4000x90 strip turned 60 degrees would be a canvas twenty times its size, mostly margin."""
    from bot.faces._detect import MAX_TURNED_AREA, searched_copy

    strip = np.zeros((150, 6667), dtype=np.uint8)
    for angle in (60, 120, 240, 300):
        copy, back, scale = searched_copy(strip, angle)
        assert scale < 1 and copy.shape[0] * copy.shape[1] <= MAX_TURNED_AREA * strip.size * 1.01
        centre = back @ np.array([copy.shape[1] / 2, copy.shape[0] / 2, 1.0])
        assert np.allclose(centre, [6667 / 2, 150 / 2], atol=3)  # the copy's pixels still map back onto the strip
    photo = np.zeros((750, 1333), dtype=np.uint8)  # a 16:9 photo's turned copies are searched at full size
    assert all(searched_copy(photo, angle)[2] == 1.0 for angle in (0, 60, 120, 180, 240, 300))


def test_start_up_leaves_dlib_and_opencv_until_the_first_picture() -> None:
    """``reelbot`` loads the app for every command; the face detector's libraries (and numpy and PyAV, for
    pictures, clips and renders) wait until they are needed."""
    script = (
        "import sys\n"
        "import adapters.cli, adapters.console.run, bot.app\n"
        "print(sorted(m for m in ('dlib', 'cv2', 'snowballstemmer', 'numpy', 'av') if m in sys.modules))\n"
        "from bot.faces import has_face\n"
        f"has_face(open({str(SAMPLES / 'coffee.png')!r}, 'rb').read())\n"
        "print(sorted(m for m in ('dlib', 'cv2') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "['cv2', 'dlib']"], done.stdout
