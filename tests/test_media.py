"""bot.media: reference pictures are checked and fitted; clips are proven whole; clips shrink to fit."""

from __future__ import annotations

import dataclasses
import io
import random
import resource
import struct
import time
from pathlib import Path

import av
import pytest
from PIL import Image

from bot import media, mp4_index
from bot.media import ClipInfo, MediaError, fit_reference, inspect_clip, probe_clip, shrink_to_fit, sniff_image_type
from tests.media_factory import (
    BLUE,
    GREEN,
    RED,
    decode_frame,
    first_packet,
    image_bytes,
    make_clip,
    make_encoded_clip,
    png_bomb,
    remux_clip,
    stream_facts,
    top_level_boxes,
)

pytestmark = pytest.mark.timeout(30)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", None),
        ("PDF", None),
        ("BMP", None),
        ("TIFF", None),
    ],
)
def test_sniff_image_type_reads_magic_bytes(fmt: str, expected: str | None) -> None:
    assert sniff_image_type(image_bytes(fmt, 8, 8)) == expected


def test_sniff_image_type_of_nothing_and_text() -> None:
    assert sniff_image_type(b"") is None
    assert sniff_image_type(b"hello, I am a PNG") is None


# --------------------------------------------------------------------------- fit_reference


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(
    ("src", "size"),
    [((333, 777), "1280x720"), ((4000, 3000), "720x1280"), ((17, 9), "1792x1024"), ((1024, 1792), "1024x1792")],
)
def test_fit_reference_gives_exact_size_png(fmt: str, src: tuple[int, int], size: str) -> None:
    ref = fit_reference(
        image_bytes(fmt, *src), declared_type="application/octet-stream", filename="holiday photo.final.jpeg", size=size
    )
    img = _open(ref.data)
    assert img.size == tuple(int(v) for v in size.split("x"))
    assert img.mode == "RGB"
    assert (img.format, ref.content_type) == ("PNG", "image/png")
    assert ref.filename == "holiday_photo.final.png"
    assert ref.is_likeness is False


def test_fit_reference_keeps_the_colours_and_likeness_flag() -> None:
    ref = fit_reference(
        image_bytes("PNG", 300, 200, color=RED),
        declared_type="image/png",
        filename="r.png",
        size="64x36",
        is_likeness=True,
    )
    assert ref.is_likeness is True
    assert _open(ref.data).getpixel((32, 18)) == RED


def test_fit_reference_crops_around_the_centre() -> None:
    """A wide red|blue picture cropped to a square keeps the middle: both colours, split centrally."""
    ref = fit_reference(
        image_bytes("PNG", 400, 100, color=RED, right_color=BLUE), declared_type=None, filename="a.png", size="100x100"
    )
    img = _open(ref.data)
    assert img.getpixel((10, 50)) == RED
    assert img.getpixel((90, 50)) == BLUE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_fit_reference_applies_exif_orientation(fmt: str) -> None:
    """Orientation 6 means "rotate 90° clockwise to show": the left (red) half ends up on top."""
    data = image_bytes(fmt, 200, 100, color=RED, right_color=BLUE, orientation=6, quality=95)
    ref = fit_reference(data, declared_type=None, filename="phone.jpg", size="100x200")
    img = _open(ref.data)
    assert img.size == (100, 200)
    top, bottom = img.getpixel((50, 20)), img.getpixel((50, 180))
    assert top[0] > 150 and top[2] < 100, top
    assert bottom[2] > 150 and bottom[0] < 100, bottom


def test_fit_reference_flattens_transparency_onto_white() -> None:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = io.BytesIO()
    img.save(out, "PNG")
    ref = fit_reference(out.getvalue(), declared_type="image/png", filename="t.png", size="32x32")
    assert _open(ref.data).getpixel((5, 5)) == (255, 255, 255)


def test_fit_reference_falls_back_to_jpeg_when_png_is_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media, "PNG_MAX_BYTES", 100)
    ref = fit_reference(image_bytes("PNG", 300, 200), declared_type=None, filename="x.png", size="320x180")
    img = _open(ref.data)
    assert (ref.content_type, img.format, img.size) == ("image/jpeg", "JPEG", (320, 180))
    assert ref.filename == "x.jpg"


@pytest.mark.parametrize(("fmt", "word"), [("GIF", "GIF"), ("PDF", "PDF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_fit_reference_refuses_other_formats_whatever_the_name(fmt: str, word: str) -> None:
    with pytest.raises(MediaError) as err:
        fit_reference(image_bytes(fmt, 50, 50), declared_type="image/png", filename="cat.png", size="1280x720")
    message = str(err.value)
    assert word in message and "JPEG, PNG or WEBP" in message and "cat.png" in message


def test_fit_reference_refuses_text_named_png() -> None:
    with pytest.raises(MediaError, match="JPEG, PNG or WEBP"):
        fit_reference(b"just some words\n", declared_type="image/png", filename="x.png", size="1280x720")


def test_fit_reference_refuses_empty() -> None:
    with pytest.raises(MediaError, match="empty"):
        fit_reference(b"", declared_type="image/png", filename="x.png", size="1280x720")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_fit_reference_refuses_truncated_images(fmt: str) -> None:
    data = image_bytes(fmt, 400, 300, color=RED, right_color=GREEN)
    with pytest.raises(MediaError, match="damaged"):
        fit_reference(data[: len(data) // 2], declared_type=None, filename="cut.img", size="320x180")


def test_fit_reference_refuses_corrupt_header() -> None:
    data = bytearray(image_bytes("PNG", 64, 64))
    data[16:24] = b"\xff" * 8  # IHDR width/height garbage, CRC now wrong
    with pytest.raises(MediaError):
        fit_reference(bytes(data), declared_type=None, filename="bad.png", size="320x180")


def test_fit_reference_refuses_oversize_bytes_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow must not be called for an oversize file")

    monkeypatch.setattr(media.Image, "open", no_decoding)
    data = image_bytes("PNG", 64, 64) + bytes(2000)
    with pytest.raises(MediaError, match="at most 1 KB"):
        fit_reference(data, declared_type="image/png", filename="big.png", size="320x180", max_bytes=1024)


def test_fit_reference_refuses_decompression_bomb_quickly_and_cheaply() -> None:
    bomb = png_bomb(30_000, 30_000)  # 900 megapixels in ~100 KB
    assert len(bomb) < 500_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(MediaError, match="too large in pixels"):
        fit_reference(bomb, declared_type="image/png", filename="bomb.png", size="1280x720")
    assert time.perf_counter() - started < 1.0
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000  # decoding it would need ~900 MB


def test_fit_reference_refuses_pictures_over_our_pixel_limit_below_pillows() -> None:
    """64 MP is under Pillow's own bomb limit (~89 MP) but over ours (50 MP)."""
    with pytest.raises(MediaError, match="too large in pixels"):
        fit_reference(png_bomb(8_000, 8_000), declared_type="image/png", filename="b.png", size="1280x720")


def test_fit_reference_refuses_a_bad_size() -> None:
    with pytest.raises(MediaError):
        fit_reference(image_bytes("PNG", 8, 8), declared_type=None, filename="x.png", size="big")


# --------------------------------------------------------------------------- probe_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clips")
    return {
        "good": make_clip(base / "good.mp4", seconds=2, width=160, height=120),
        "silent": make_clip(base / "silent.mp4", seconds=2, width=160, height=120, audio=False),
    }


def test_probe_clip_accepts_a_whole_clip(clips: dict[str, Path]) -> None:
    info = probe_clip(clips["good"], seconds=2, size="160x120")
    assert (info.width, info.height, info.has_audio) == (160, 120, True)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert abs(info.duration - 2) < 0.1
    assert info.bytes == clips["good"].stat().st_size


def test_probe_clip_refuses_wrong_duration(clips: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match=r"2\.0 seconds long, not 4"):
        probe_clip(clips["good"], seconds=4, size="160x120")


def test_probe_clip_tolerance(clips: dict[str, Path]) -> None:
    probe_clip(clips["good"], seconds=3, size="160x120", tolerance=1.0)
    with pytest.raises(MediaError):
        probe_clip(clips["good"], seconds=3, size="160x120", tolerance=0.5)


def test_probe_clip_refuses_wrong_size(clips: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="160x120, not the 1280x720"):
        probe_clip(clips["good"], seconds=2, size="1280x720")


def test_probe_clip_refuses_no_audio(clips: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="no sound"):
        probe_clip(clips["silent"], seconds=2, size="160x120")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a video at all" * 100, image_bytes("PNG", 64, 64)],
    ids=["empty", "text", "png"],
)
def test_probe_clip_refuses_non_videos(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError):
        probe_clip(path, seconds=2, size="160x120")


def test_probe_clip_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="missing"):
        probe_clip(tmp_path / "nope.mp4", seconds=2, size="160x120")


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.9])
def test_probe_clip_refuses_truncated_clip(clips: dict[str, Path], tmp_path: Path, keep: float) -> None:
    data = clips["good"].read_bytes()  # written without faststart: the index is at the end
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MediaError):
        probe_clip(path, seconds=2, size="160x120")


def test_probe_clip_refuses_faststart_clip_cut_short(tmp_path: Path) -> None:
    """With the index first, the header still promises 2 s: the packets prove otherwise."""
    src = make_clip(tmp_path / "src.mp4", seconds=2, width=160, height=120, texture=True)
    faststart = tmp_path / "fs.mp4"
    shrink_to_fit(src, faststart, max_bytes=src.stat().st_size - 1)  # re-encode with +faststart
    probe_clip(faststart, seconds=2, size="160x120")
    data = faststart.read_bytes()
    for keep in (0.5, 0.97, 0.995):
        cut = tmp_path / f"cut{keep}.mp4"
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(MediaError, match=r"incomplete|seconds long"):
            probe_clip(cut, seconds=2, size="160x120")


# --------------------------------------------------------------------------- inspect_clip from the MP4 index

_INCOMPLETE = "The clip is incomplete (the file was cut off part way)."
_UNREADABLE = "The clip is not a readable video."


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 s 160x120 clips in the MP4 layouts encoders and providers write."""
    base = tmp_path_factory.mktemp("layouts")
    moov_last = make_clip(base / "moov_last.mp4", seconds=2)
    bframes = make_encoded_clip(base / "bframes.mp4", options={"preset": "medium"})
    return {
        "moov_last": moov_last,
        "faststart": remux_clip(moov_last, base / "faststart.mp4", movflags="+faststart"),
        "silent": make_clip(base / "silent.mp4", seconds=2, audio=False),
        "bframes": bframes,
        "bframes_faststart": remux_clip(bframes, base / "bframes_faststart.mp4", movflags="+faststart"),
        "hevc": make_encoded_clip(
            base / "hevc.mp4", codec="libx265", options={"preset": "medium", "x265-params": "log-level=error"}
        ),
    }


def _demuxed(path: Path, monkeypatch: pytest.MonkeyPatch) -> ClipInfo | str:
    """What the full demuxer alone says of ``path``: its ``ClipInfo``, or the sentence it refuses it with."""

    def unsupported(fd: int, size: int) -> mp4_index.Mp4Index:
        raise mp4_index.Unsupported("made to demux")

    with monkeypatch.context() as patch:
        patch.setattr(media.mp4_index, "read_index", unsupported)
        try:
            return inspect_clip(path)
        except MediaError as exc:
            return str(exc)


def _count_demuxer_opens(monkeypatch: pytest.MonkeyPatch, *, allowed: bool = True) -> list[str]:
    """Records every ``av.open``; with ``allowed=False`` each one fails the test instead."""
    opened: list[str] = []
    real_open = av.open

    def spy(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        if not allowed:
            raise AssertionError(f"{file} was demuxed")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", spy)  # bot.media imports av where it opens a file
    return opened


def _verdict(path: Path) -> ClipInfo | str:
    try:
        return inspect_clip(path)
    except MediaError as exc:
        return str(exc)


@pytest.mark.parametrize("layout", ["moov_last", "faststart", "silent", "bframes", "bframes_faststart", "hevc"])
def test_inspect_clip_reads_plain_mp4s_from_the_index_alone(
    layouts: dict[str, Path], layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No container is opened, and the answer is the full demuxer's (the span of the video samples included)."""
    path = layouts[layout]
    expected = _demuxed(path, monkeypatch)
    assert isinstance(expected, ClipInfo), expected
    _count_demuxer_opens(monkeypatch, allowed=False)
    info = inspect_clip(path)
    assert info.duration == pytest.approx(expected.duration, abs=1e-6)
    assert dataclasses.replace(info, duration=0) == dataclasses.replace(expected, duration=0)
    assert (info.width, info.height, info.bytes) == (160, 120, path.stat().st_size)
    assert abs(info.duration - 2) < 0.01
    assert info.has_audio is (layout != "silent")
    assert info.video_codec == ("hevc" if layout == "hevc" else "h264")


def test_probe_clip_of_a_720p_clip_reads_only_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_clip(tmp_path / "hd.mp4", seconds=1, width=1280, height=720, fps=8)
    _count_demuxer_opens(monkeypatch, allowed=False)
    info = probe_clip(path, seconds=1, size="1280x720", tolerance=0.05)
    assert (info.width, info.height, info.has_audio) == (1280, 720, True)


def test_inspect_clip_demuxes_a_fragmented_mp4(
    layouts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fragmented = remux_clip(layouts["moov_last"], tmp_path / "frag.mp4", movflags="frag_keyframe+empty_moov")
    assert b"moof" in fragmented.read_bytes()
    opened = _count_demuxer_opens(monkeypatch)
    info = probe_clip(fragmented, seconds=2, size="160x120")
    assert opened == [str(fragmented)]
    assert (info.has_audio, info.video_codec, info.audio_codec) == (True, "h264", "aac")


def test_inspect_clip_demuxes_a_codec_it_does_not_decode_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_encoded_clip(tmp_path / "mpeg4.mp4", codec="mpeg4")
    opened = _count_demuxer_opens(monkeypatch)
    info = inspect_clip(path)
    assert opened == [str(path)]
    assert (info.video_codec, info.width, info.height, info.has_audio) == ("mpeg4", 160, 120, True)
    assert abs(info.duration - 2) < 0.01


def _cut_points(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    boxes = {kind: (offset, size) for kind, offset, size in top_level_boxes(data)}
    moov, mdat = boxes[b"moov"], boxes[b"mdat"]
    video_at, video_size = first_packet(path)
    return {
        "inside the moov": moov[0] + moov[1] // 2,
        "at the moov's last byte": moov[0] + moov[1] - 1,
        "inside the mdat": mdat[0] + mdat[1] // 2,
        "inside the first frame": video_at + video_size // 2,
        "at the last byte": len(data) - 1,
    }


@pytest.mark.parametrize("layout", ["moov_last", "faststart", "bframes_faststart", "silent"])
def test_inspect_clip_refuses_a_clip_cut_anywhere(
    layouts: dict[str, Path], layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused in the demuxer's own words where it refuses too, else as incomplete.

    The demuxer lets some cuts through: a faststart clip missing its last bytes (the last, partial
    sample still counts as a packet), or a moov missing the end of its metadata.
    """
    data = layouts[layout].read_bytes()
    for where, keep in _cut_points(layouts[layout]).items():
        cut = tmp_path / f"{layout}-{keep}.mp4"
        cut.write_bytes(data[:keep])
        demuxer_says = _demuxed(cut, monkeypatch)
        with pytest.raises(MediaError) as refused:
            inspect_clip(cut)
        expected = demuxer_says if isinstance(demuxer_says, str) else _INCOMPLETE
        assert str(refused.value) == expected, where


def test_inspect_clip_refuses_an_index_promising_more_than_the_file_holds(
    layouts: dict[str, Path], tmp_path: Path
) -> None:
    """The file is cut and its mdat box shortened to match: the boxes fit, the samples don't."""
    data = bytearray(layouts["faststart"].read_bytes())
    (_, mdat_at, mdat_size) = next(box for box in top_level_boxes(bytes(data)) if box[0] == b"mdat")
    keep = mdat_at + mdat_size * 3 // 4
    struct.pack_into(">I", data, mdat_at, keep - mdat_at)
    cut = tmp_path / "short.mp4"
    cut.write_bytes(bytes(data[:keep]))
    with pytest.raises(MediaError, match=r"incomplete \(the file was cut off part way\)"):
        probe_clip(cut, seconds=2, size="160x120")


@pytest.mark.parametrize("kind", ["video", "audio"])
@pytest.mark.parametrize("layout", ["moov_last", "bframes_faststart", "hevc"])
def test_inspect_clip_refuses_a_garbage_first_frame(
    layouts: dict[str, Path], layout: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(layouts[layout].read_bytes())
    at, size = first_packet(layouts[layout], kind)
    data[at : at + size] = random.Random(size).randbytes(size)
    broken = tmp_path / "garbage.mp4"
    broken.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=_UNREADABLE):
        inspect_clip(broken)
    assert _demuxed(broken, monkeypatch) == _UNREADABLE


@pytest.mark.parametrize("edit", ["ends half way", "empty", "starts late"])
def test_inspect_clip_leaves_unusual_edit_lists_to_the_demuxer(
    layouts: dict[str, Path], edit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit list can make FFmpeg drop or move samples, so only the plain ones are read from the index."""
    data = bytearray(layouts["bframes"].read_bytes())
    elst = data.index(b"elst")  # the video track's: it comes first
    duration, media_time = struct.unpack_from(">Ii", data, elst + 12)  # after version, flags and count
    if edit == "ends half way":
        duration //= 2
    elif edit == "empty":
        media_time = -1
    else:
        media_time += 2048
    struct.pack_into(">Ii", data, elst + 12, duration, media_time)
    path = tmp_path / "edited.mp4"
    path.write_bytes(bytes(data))
    expected = _demuxed(path, monkeypatch)
    opened = _count_demuxer_opens(monkeypatch)
    assert _verdict(path) == expected
    assert opened == [str(path)]


# --------------------------------------------------------------------------- shrink_to_fit


@pytest.fixture(scope="module")
def big_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 640x360 grain encoded losslessly: ~9 MB that compresses to little at normal quality."""
    return make_clip(
        tmp_path_factory.mktemp("big") / "big.mp4",
        seconds=2,
        width=640,
        height=360,
        fps=24,
        texture=True,
        lossless=True,
    )


def test_shrink_keeps_resolution_when_bitrate_allows(big_clip: Path, tmp_path: Path) -> None:
    limit = 400_000
    assert big_clip.stat().st_size > limit
    out = shrink_to_fit(big_clip, tmp_path / "small.mp4", max_bytes=limit)
    assert out == tmp_path / "small.mp4"
    assert out.stat().st_size <= limit
    info = probe_clip(out, seconds=2, size="640x360", tolerance=0.1)
    facts = stream_facts(out)
    assert facts["video_codec"] == "h264" and facts["audio_codec"] == "aac" and facts["pix_fmt"] == "yuv420p"
    assert facts["frames"] == 48
    assert abs(float(facts["audio_seconds"]) - 2) < 0.1  # type: ignore[arg-type]
    assert info.has_audio


def test_shrink_scales_down_when_needed(big_clip: Path, tmp_path: Path) -> None:
    limit = 60_000
    out = shrink_to_fit(big_clip, tmp_path / "tiny.mp4", max_bytes=limit)
    assert out.stat().st_size <= limit
    info = inspect_clip(out)
    assert info.width < 640 and info.height < 360
    assert info.width % 2 == 0 and info.height % 2 == 0
    assert abs(info.width / info.height - 640 / 360) < 0.02
    assert abs(info.duration - 2) < 0.1 and info.has_audio
    frame = decode_frame(out, 1.0)
    assert frame.shape == (info.height, info.width, 3)


def test_shrink_raises_when_impossible(big_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="can't fit under 10 KB"):
        shrink_to_fit(big_clip, tmp_path / "never.mp4", max_bytes=10 * 1024)
    assert not (tmp_path / "never.mp4").exists()
    assert list(tmp_path.iterdir()) == []


def test_shrink_copies_a_clip_that_already_fits(clips: dict[str, Path], tmp_path: Path) -> None:
    out = shrink_to_fit(clips["good"], tmp_path / "same.mp4", max_bytes=50 * 1024 * 1024)
    assert out.read_bytes() == clips["good"].read_bytes()


def test_shrink_tries_again_when_the_encoder_overshoots(
    big_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = media._reencode
    calls: list[int] = []

    def overshooting(src: Path, dest: Path, **kwargs: int) -> None:
        calls.append(kwargs["video_bps"])
        if len(calls) == 1:
            dest.write_bytes(bytes(500_000))  # pretend the encoder blew the budget
            return
        real(src, dest, **kwargs)

    monkeypatch.setattr(media, "_reencode", overshooting)
    out = shrink_to_fit(big_clip, tmp_path / "retry.mp4", max_bytes=200_000)
    assert len(calls) == 2 and calls[1] < calls[0]
    assert out.stat().st_size <= 200_000
    probe_clip(out, seconds=2, size=f"{inspect_clip(out).width}x{inspect_clip(out).height}")


def test_shrink_refuses_a_non_video(tmp_path: Path) -> None:
    src = tmp_path / "x.mp4"
    src.write_bytes(b"nope" * 1000)
    with pytest.raises(MediaError):
        shrink_to_fit(src, tmp_path / "y.mp4", max_bytes=100)


# --------------------------------------------------------------------------- memory


def _solid_rgb_png(width: int, height: int, colour: bytes = b"\x1e\x3c\xdc") -> bytes:
    """A valid 8-bit RGB PNG of one colour, built row by row (tiny file, ``width*height*3`` bytes decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + colour * width
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 64) for _ in range(height // 64)]
    parts.append(comp.compress(row * (height % 64)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# The child's own high-water mark (VmHWM): ``ru_maxrss`` would carry the parent's over ``execve``.
_PEAK_SCRIPT = """
import re, sys, threading
from pathlib import Path
from bot.media import fit_reference
def high_water_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
data = Path(sys.argv[1]).read_bytes()
count = int(sys.argv[2])
before = high_water_kb()
def fit():
    fit_reference(data, declared_type="image/png", filename="big.png", size="1280x720")
threads = [threading.Thread(target=fit) for _ in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print((high_water_kb() - before) // 1024)
"""


def _peak_megabytes(path: Path, count: int) -> int:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.timeout(240)
def test_a_small_file_of_a_huge_picture_is_decoded_at_the_size_it_is_used(tmp_path: Path) -> None:
    """A ~150 KB PNG of 7000x7000 (49 MP, under the 50 MP cap) is 196 MB once decoded (Pillow keeps RGB
    in 4 bytes a pixel). Before, every full-size copy (EXIF turn, RGB conversion, resize) stacked: peak
    RSS grew 586 MB for one request and 2.3 GB for four at once (measured with this test on the old
    code). Now the decoded picture is shrunk at once (``reduce``) and decodes queue behind
    ``MAX_CONCURRENT_DECODES``: one costs the decode itself (~211 MB), four at once about two (~414 MB).
    """
    path = tmp_path / "big.png"
    path.write_bytes(_solid_rgb_png(7000, 7000))
    assert path.stat().st_size < 300_000
    one = _peak_megabytes(path, 1)
    four = _peak_megabytes(path, 4)
    print(f"peak RSS growth: one decode {one} MB, four at once {four} MB")
    assert one < 260, one
    assert four < 3 * one, (one, four)  # not four decodes stacked


def test_a_big_sideways_picture_is_turned_after_it_is_shrunk() -> None:
    data = image_bytes("PNG", 4000, 2000, color=RED, right_color=BLUE, orientation=6)
    ref = fit_reference(data, declared_type=None, filename="phone.png", size="100x200")
    img = _open(ref.data)
    assert img.size == (100, 200)
    top, bottom = img.getpixel((50, 20)), img.getpixel((50, 180))
    assert top[0] > 150 and top[2] < 100, top
    assert bottom[2] > 150 and bottom[0] < 100, bottom


@pytest.mark.parametrize("mode", ["P", "L", "RGBA", "LA", "I;16"])
def test_big_pictures_of_every_mode_are_shrunk_and_fitted(mode: str) -> None:
    if mode == "I;16":  # a 16-bit grey: dark left, light right
        img = Image.new("I;16", (3000, 1500), 10_000)
        img.paste(60_000, (1500, 0, 3000, 1500))
    else:
        img = Image.new("RGB", (3000, 1500), RED)
        img.paste(BLUE, (1500, 0, 3000, 1500))
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, "PNG")
    ref = fit_reference(out.getvalue(), declared_type="image/png", filename="m.png", size="320x160")
    fitted = _open(ref.data)
    assert fitted.size == (320, 160) and fitted.mode == "RGB"
    left, right = fitted.getpixel((20, 80)), fitted.getpixel((300, 80))
    assert left != right  # the two halves survive the shrink, whatever the mode
