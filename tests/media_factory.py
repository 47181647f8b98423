"""Builders for test pictures and clips, made in memory or in a temp dir, for any test to reuse.

Everything here is deterministic and small, so tests stay fast:

* ``image_bytes`` - a JPEG/PNG/WEBP/GIF/... of a given size, plain or split into colour halves,
  optionally with an EXIF orientation tag.
* ``png_bomb`` - a valid PNG of a few hundred KB whose header claims a huge pixel count.
* ``make_clip`` - a real H.264 (+ AAC) MP4 written with PyAV, with or without sound.
* ``decode_frame`` / ``stream_facts`` - independent PyAV readers for assertions.
* ``make_encoded_clip`` / ``remux_clip`` - other encoders and MP4 layouts (B-frames, HEVC,
  faststart, fragmented).
* ``first_packet`` / ``top_level_boxes`` - where things are in an MP4, to damage it on purpose.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
from PIL import Image

RED = (220, 30, 30)
BLUE = (30, 60, 220)
GREEN = (30, 180, 60)


def image_bytes(
    fmt: str,
    width: int,
    height: int,
    *,
    color: tuple[int, int, int] = GREEN,
    right_color: tuple[int, int, int] | None = None,
    mode: str = "RGB",
    orientation: int | None = None,
    quality: int = 90,
) -> bytes:
    """An image encoded as ``fmt`` (a Pillow format name: JPEG, PNG, WEBP, GIF, PDF, BMP...).

    With ``right_color`` the right half has that colour (to see rotations and crops).
    ``orientation`` writes that EXIF orientation tag (JPEG, PNG and WEBP all carry EXIF).
    """
    img = Image.new("RGB", (width, height), color)
    if right_color is not None:
        img.paste(right_color, (width // 2, 0, width, height))
    if mode != "RGB":
        img = img.convert(mode)
    out = io.BytesIO()
    kwargs: dict[str, object] = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    if fmt.upper() in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    img.save(out, fmt.upper(), **kwargs)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@cache
def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels.

    Built row by row through a streaming zlib compressor, so it costs a few MB of work and a
    ~100 KB result, while decoding it naively would need ``width * height`` bytes or more.
    """
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 256) for _ in range(height // 256)]
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def make_clip(
    path: Path,
    *,
    seconds: float = 1.0,
    width: int = 160,
    height: int = 120,
    fps: int = 12,
    audio: bool = True,
    texture: bool = False,
    lossless: bool = False,
) -> Path:
    """Writes a real MP4 (H.264 yuv420p, plus AAC stereo 48 kHz when ``audio``) and returns it.

    The picture is a colour gradient with a moving bar; ``texture`` adds fixed-seed grain and
    ``lossless`` encodes at QP 0, which together make a clip that is big for its length (to test
    shrinking) but still compresses well at normal quality.
    """
    frames = round(seconds * fps)
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)
    base[..., 1] = (ys * 255 // max(1, height - 1)).astype(np.uint8)
    base[..., 2] = 128
    with av.open(str(path), mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "qp": "0"} if lossless else {"preset": "ultrafast"}
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=48_000)
            sound.layout = "stereo"
        for i in range(frames):
            img = base.copy()
            x = (i * 7) % max(1, width - 8)
            img[:, x : x + 8] = 255
            if texture:
                img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            total = round(seconds * 48_000)
            t = np.arange(total) / 48_000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = tone[start : start + 1024]
                af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48_000, start, Fraction(1, 48_000)
                out.mux(sound.encode(af))
            out.mux(sound.encode(None))
    return path


def decode_frame(path: Path, at_seconds: float) -> np.ndarray:
    """The RGB frame shown at ``at_seconds`` (the first frame whose time reaches it)."""
    with av.open(str(path)) as container:
        last = None
        for frame in container.decode(video=0):
            last = frame
            if frame.time is not None and frame.time >= at_seconds:
                break
        assert last is not None, "no video frames"
        return last.to_ndarray(format="rgb24")


def stream_facts(path: Path) -> dict[str, object]:
    """Codec names, pixel format, size, frame count and durations, read directly with PyAV."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(video=0))
        return {
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "frames": frames,
            "video_seconds": float(video.duration * video.time_base) if video.duration else None,
            "audio_codec": audio.codec_context.name if audio is not None else None,
            "audio_seconds": float(audio.duration * audio.time_base) if audio and audio.duration else None,
            "container_seconds": (container.duration or 0) / 1_000_000,
        }


def make_encoded_clip(
    path: Path,
    *,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    seconds: float = 2.0,
    width: int = 160,
    height: int = 120,
    fps: int = 12,
    audio: bool = True,
) -> Path:
    """An MP4 of a smoothly panning gradient (+ AAC tone) with any PyAV encoder and options.

    Where ``make_clip`` is fixed to ultrafast H.264, this gives the layouts real encoders write:
    ``options={"preset": "medium"}`` makes H.264 with B-frames (composition offsets and a video
    edit list), ``codec="libx265"`` HEVC.
    """
    frames = round(seconds * fps)
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w", format="mp4") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = options or {}
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=48_000)
            sound.layout = "stereo"
        for i in range(frames):
            img = np.stack([(xs + 3 * i) % 256, (ys + i) % 256, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            total = round(seconds * 48_000)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(total) / 48_000)).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = tone[start : start + 1024]
                af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48_000, start, Fraction(1, 48_000)
                out.mux(sound.encode(af))
            out.mux(sound.encode(None))
    return path


def remux_clip(src: Path, dest: Path, *, movflags: str) -> Path:
    """Copies ``src``'s packets, unchanged, into a new MP4 written with these ``movflags``.

    ``"+faststart"`` puts the index before the media data; ``"frag_keyframe+empty_moov"`` writes a
    fragmented MP4 (an empty index, then a ``moof`` box per keyframe).
    """
    with av.open(str(src)) as inp, av.open(str(dest), mode="w", format="mp4", options={"movflags": movflags}) as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dest


def first_packet(path: Path, kind: str = "video") -> tuple[int, int]:
    """``(byte offset, size)`` in the file of the first ``"video"`` or ``"audio"`` packet, per FFmpeg."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        for packet in container.demux(stream):
            if packet.size:
                return packet.pos, packet.size
    raise AssertionError(f"no {kind} packets in {path}")


def top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of each top-level MP4 box in ``data``."""
    boxes = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:  # a 64-bit size follows the type
            size = struct.unpack_from(">Q", data, offset + 8)[0]
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        boxes.append((kind, offset, size))
        offset += size
    return boxes
