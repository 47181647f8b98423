"""Checks and conversions for the pictures and clips that pass through reelbot.

Three jobs, all synchronous and CPU-bound (Pillow and PyAV hold the GIL only part of the time):
callers run them in a thread with ``asyncio.to_thread``.

* ``fit_reference`` turns an attached picture into a ``ReferenceImage`` of exactly the clip size,
  refusing anything that is not really a JPEG, PNG or WEBP, and refusing decompression bombs
  before any pixel is decoded. Pictures are decoded at about the size they are used (JPEG
  ``draft``, else ``reduce`` straight after decoding) and at most ``MAX_CONCURRENT_DECODES`` at
  once, so a small file of a huge picture cannot multiply into gigabytes.
* ``probe_clip`` proves a finished clip is a whole, playable video of the size and length that
  was paid for, with sound, so a broken clip is never delivered.
* ``shrink_to_fit`` re-encodes a clip under an upload limit (Discord's, for one).

Every refusal is a ``MediaError`` whose text is one sentence fit to show the person who asked.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from bot import mp4_index
from bot.providers.base import ReferenceImage

# PyAV loads with the first clip checked or re-encoded: most `reelbot` commands never need its ~0.1 s.
if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

#: Pictures above this many pixels are refused before decoding (a 50 MP photo is already huge;
#: anything bigger is far more likely a decompression bomb than a photo someone took).
MAX_IMAGE_PIXELS = 50_000_000
#: A fitted reference stays PNG (lossless) up to this size, else becomes a high-quality JPEG.
PNG_MAX_BYTES = 8 * 1024 * 1024
#: zlib level for fitted PNGs. Level 1 encodes a 1280x720 photo in ~70 ms against ~320 ms at the
#: default 6, for ~13% more bytes; the picture is sent once, the CPU is spent on every request.
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 92

ALLOWED_IMAGE_TYPES: dict[str, str] = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_ALLOWED_WORDS = "JPEG, PNG or WEBP"

#: Below this many bits per pixel per frame, H.264 at these sizes turns to mush; shrink instead.
MIN_BITS_PER_PIXEL = 0.04
#: Audio bitrate used when re-encoding, and the floor under which a clip is "impossible".
SHRINK_AUDIO_BPS = 64_000
SHRINK_LOW_AUDIO_BPS = 32_000
MIN_VIDEO_BPS = 40_000
#: The smallest short side a shrunk clip may have; smaller is not worth delivering.
MIN_SHORT_SIDE = 144
_SHRINK_ATTEMPTS = 3


class MediaError(ValueError):
    """A picture or clip that reelbot can't use. ``str(error)`` is one sentence for a chat user."""


# --------------------------------------------------------------------------- sizes


def parse_size(size: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``.

    Raises:
        MediaError: when ``size`` is not two positive whole numbers joined by ``x``.
    """
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*", size or "")
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise MediaError(f"The size {size!r} is not WIDTHxHEIGHT, such as 1280x720.")
    return int(match.group(1)), int(match.group(2))


def _megabytes(n: int) -> str:
    """A byte count for people: ``"8 MB"``, ``"2.5 MB"``, ``"300 KB"``."""
    if n < 1024 * 1024:
        return f"{max(1, round(n / 1024))} KB"
    value = n / (1024 * 1024)
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text} MB"


# --------------------------------------------------------------------------- images


def sniff_image_type(data: bytes) -> str | None:
    """The content type of a JPEG, PNG or WEBP image judged from its first bytes, else None.

    Only the magic bytes are looked at, so this is cheap and never decodes anything; it is the
    gate before Pillow is allowed near the data. Anything else (GIF, HEIC, PDF, text...) is None.
    """
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _describe_other(data: bytes) -> str | None:
    """A few words naming what a refused file really is, when it is something recognisable."""
    head = bytes(data[:64])
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith(b"BM"):
        return "a BMP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC photo"
        if brand in (b"avif", b"avis"):
            return "an AVIF picture"
        return "a video"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<svg", b"<?xml")):
        return "an SVG or XML file"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "a web page"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a text file"


def _display_name(filename: str) -> str:
    name = Path(filename or "").name.strip() or "The picture"
    return name if len(name) <= 60 else name[:57] + "..."


def _output_name(filename: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "").stem).strip("._-")[:60]
    return f"{stem or 'reference'}.{suffix}"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels, with transparency composited onto white and 16-bit greys scaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def _cover(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scales and centre-crops ``img`` to exactly ``width`` x ``height`` (CSS ``object-fit: cover``).

    Same result as ``ImageOps.fit(..., centering=(0.5, 0.5))`` but done as one ``resize`` with a
    sub-pixel source box and ``reducing_gap``, which is much faster for big photos.
    """
    src_w, src_h = img.size
    scale = max(width / src_w, height / src_h)
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    return img.resize(
        (width, height),
        Image.Resampling.LANCZOS,
        box=(left, top, left + box_w, top + box_h),
        reducing_gap=3.0,
    )


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a reason to refuse the picture
        return 1


#: Decodes of big pictures at once, across every thread of the process: a 50 MP picture needs its
#: full decoded size in memory (150-200 MB) for a moment, so a burst of them must queue, not stack.
MAX_CONCURRENT_DECODES = 2
_DECODES = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
#: How to turn a picture upright for each EXIF orientation (as ``ImageOps.exif_transpose`` does).
_ORIENTATION_FIX: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Shrink the decoded picture by a whole factor first while it stays at least this many times the clip
#: size: the final LANCZOS resize then has enough detail, and no other full-size copy is ever made.
_REDUCE_MARGIN = 1


def _decode_fitted(img: Image.Image, width: int, height: int) -> Image.Image:
    """Decodes ``img`` at about the size it will be used and fits it to ``width`` x ``height``.

    Memory is the point: a small file can hold a huge picture (a 143 KB PNG of 7000x7000 is 147 MB
    of RGB pixels). JPEG is decoded at 1/2, 1/4 or 1/8 scale (``draft``); other formats are decoded
    once and immediately shrunk by a whole factor (``reduce``, or nearest-neighbour for palettes),
    before the EXIF turn, the RGB conversion and the cover crop, each of which would otherwise copy
    the full-size picture.
    """
    src_w, src_h = img.size
    sideways = _exif_orientation(img) in (5, 6, 7, 8)
    # The clip's frame in the picture's own (not yet turned) orientation.
    want_w, want_h = (height, width) if sideways else (width, height)
    scale = max(want_w / src_w, want_h / src_h)
    if img.format in ("JPEG", "MPO"):
        # Let the JPEG decoder skip detail we would throw away anyway (1/2, 1/4, 1/8 scale).
        img.draft("RGB", (math.ceil(src_w * scale), math.ceil(src_h * scale)))
    img.load()
    factor = int(min(img.size[0] / (src_w * scale), img.size[1] / (src_h * scale)) / _REDUCE_MARGIN)
    small: Image.Image = img
    if factor >= 2:
        reduced = (max(1, img.size[0] // factor), max(1, img.size[1] // factor))
        if img.mode in ("1", "P"):
            small = img.resize(reduced, Image.Resampling.NEAREST)  # palette indices cannot be averaged
        else:
            try:
                small = img.reduce(factor)
            except ValueError:  # a mode ``reduce`` does not take (some 16-bit greys): resize as before
                small = img
    method = _ORIENTATION_FIX.get(_exif_orientation(img))
    upright = small.transpose(method) if method is not None else small
    return _cover(_to_rgb(upright), width, height)


def fit_reference(
    data: bytes,
    *,
    declared_type: str | None,
    filename: str,
    size: str,
    max_bytes: int = 20 * 1024 * 1024,
    is_likeness: bool = False,
) -> ReferenceImage:
    """Checks an attached picture and fits it to exactly ``size`` for use as a reference.

    What the bytes are is decided by their magic bytes and by Pillow, never by ``filename`` or
    ``declared_type`` (a GIF named ``cat.png`` is still a GIF). The picture is turned upright
    (EXIF orientation), made RGB (transparency over white), cover-cropped around its centre to
    the clip size and stored as PNG, or as a high-quality JPEG when the PNG would be too big.

    Args:
        data: the file as downloaded.
        declared_type: the platform's content type, only used for logging.
        filename: the name it was sent with, used in messages and for the output name.
        size: the clip size, ``"WxH"``.
        max_bytes: files bigger than this are refused before anything is decoded.
        is_likeness: marks a registered cameo rather than a plain reference.

    Raises:
        MediaError: not a JPEG/PNG/WEBP, too big in bytes or in pixels, damaged or truncated.
    """
    width, height = parse_size(size)
    shown = _display_name(filename)
    if not data:
        raise MediaError(f"{shown} is empty.")
    if len(data) > max_bytes:
        raise MediaError(f"{shown} is {_megabytes(len(data))}; pictures may be at most {_megabytes(max_bytes)}.")
    content_type = sniff_image_type(data)
    if content_type is None:
        what = _describe_other(data)
        found = f"is {what}, not" if what else "is not"
        raise MediaError(f"{shown} {found} a picture reelbot can use; please send a {_ALLOWED_WORDS} image.")
    if declared_type and declared_type.split(";")[0].strip().lower() != content_type:
        log.info("picture %r was declared %s but is %s", filename, declared_type, content_type)

    try:
        img = Image.open(io.BytesIO(data), formats=[ALLOWED_IMAGE_TYPES[content_type]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(shown) from exc
    except Exception as exc:  # Pillow raises many kinds of error for hostile or broken files
        raise MediaError(f"{shown} is damaged or not really a {_ALLOWED_WORDS} image.") from exc
    with img:
        src_w, src_h = img.size
        if src_w <= 0 or src_h <= 0 or src_w * src_h > MAX_IMAGE_PIXELS:
            raise _too_many_pixels(shown)
        try:
            with _DECODES:
                fitted = _decode_fitted(img, width, height)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(shown) from exc
        except MemoryError as exc:
            raise _too_many_pixels(shown) from exc
        except Exception as exc:  # truncated data, bad chunks, bad EXIF...
            raise MediaError(f"{shown} is damaged or incomplete; please send the picture again.") from exc

    out = io.BytesIO()
    fitted.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    if out.tell() <= min(PNG_MAX_BYTES, max_bytes):
        return ReferenceImage(out.getvalue(), "image/png", _output_name(filename, "png"), is_likeness)
    out = io.BytesIO()
    fitted.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    return ReferenceImage(out.getvalue(), "image/jpeg", _output_name(filename, "jpg"), is_likeness)


def _too_many_pixels(shown: str) -> MediaError:
    return MediaError(
        f"{shown} is too large in pixels (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels); "
        "please send a smaller picture."
    )


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """What a clip really holds, measured from its sample index (or its packets) rather than its header.

    ``duration`` is the span of the video samples in seconds, first start to last end (a clip cut
    short in the middle has fewer samples than its header promises, so this catches truncation).
    """

    duration: float
    width: int
    height: int
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    bytes: int


_UNREADABLE = "The clip is not a readable video."
_INCOMPLETE = "The clip is incomplete (the file was cut off part way)."
_MAX_PROBE_DECODE_PACKETS = 64


class _Refused(Exception):
    """The index reader found the clip broken; ``str(self)`` is the sentence to refuse it with."""


def _packet_span(first: float | None, last: float | None) -> float:
    if first is None or last is None:
        return 0.0
    return max(0.0, last - first)


def inspect_clip(path: Path) -> ClipInfo:
    """Measures a clip without judging it: proves it whole and decodes its first frames.

    Every clip is checked before it is posted, so this is on the path from a provider finishing to
    the clip appearing in chat. A plain MP4 (H.264 or HEVC, AAC) is read from its index
    (``bot.mp4_index``): every sample's bytes must lie inside the file, and the first video and
    audio samples are decoded on their own. That costs a few kilobytes of reading and one frame of
    decoding (~1-2 ms for 4 s of 720p, more when the first frame is big), where opening the clip
    with PyAV and demuxing every packet cost 4-60 ms. Anything the index reader does not understand
    (fragmented MP4, other codecs, other containers, odd tables or edit lists) is demuxed packet by
    packet as before. A clip the index shows broken is also given to the demuxer, for the sentence
    it would refuse it with; the clip is refused even when the demuxer would let it through (a
    faststart clip missing its last bytes, whose partial last sample still counts as a packet).

    Raises:
        MediaError: the file is missing, empty, not a video, cut short, or its first frames don't decode.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaError("The clip file is missing.") from exc
    if size == 0:
        raise MediaError("The clip file is empty.")
    try:
        return _inspect_index(path, size)
    except mp4_index.Unsupported as exc:
        log.debug("clip %s: reading every packet (%s)", path.name, exc)
    except _Refused as refusal:
        _inspect_packets(path, size)  # raises, with the demuxer's own words, in all but odd cases
        raise MediaError(str(refusal)) from refusal
    return _inspect_packets(path, size)


def _inspect_index(path: Path, size: int) -> ClipInfo:
    """``inspect_clip`` from the MP4 index and the first samples alone.

    Raises:
        mp4_index.Unsupported: not a clip this path understands; demux it instead.
        _Refused: the clip is cut short, or its first frame does not decode.
    """
    import av

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise mp4_index.Unsupported(str(exc)) from exc
    try:
        index = mp4_index.read_index(fd, size)
        video_sample = os.pread(fd, index.video.first_size, index.video.first_offset)
        audio_sample = os.pread(fd, index.audio.first_size, index.audio.first_offset) if index.audio else b""
    except mp4_index.Truncated as exc:
        raise _Refused(_INCOMPLETE) from exc
    finally:
        os.close(fd)
    video = index.video
    frame = _decode_first(video.codec, video.config, video_sample)
    if not isinstance(frame, av.VideoFrame) or (frame.width, frame.height) != (video.width, video.height):
        raise mp4_index.Unsupported("the first video sample gave no frame, or not of the sample entry's size")
    has_audio = False
    if index.audio is not None:
        has_audio = _decode_first(index.audio.codec, index.audio.config, audio_sample) is not None
        if not has_audio:
            raise mp4_index.Unsupported("the first sound sample gave no frame")
    return ClipInfo(
        duration=video.span / video.timescale,
        width=video.width,
        height=video.height,
        has_audio=has_audio,
        video_codec=video.codec,
        audio_codec=index.audio.codec if index.audio else None,
        bytes=size,
    )


def _decode_first(codec: str, config: bytes, sample: bytes) -> av.VideoFrame | av.AudioFrame | None:
    """Decodes one sample with a fresh decoder, draining it (B-frame delay); None if no frame comes.

    Raises:
        _Refused: the decoder rejects the data.
    """
    import av

    try:
        context = av.CodecContext.create(codec, "r")
        context.extradata = config
        context.thread_count = 1  # one frame: more threads only add start-up cost
        frames = context.decode(av.Packet(sample)) or context.decode(None)
    except av.FFmpegError as exc:
        raise _Refused(_UNREADABLE) from exc
    return frames[0] if frames else None


def _inspect_packets(path: Path, size: int) -> ClipInfo:
    """``inspect_clip`` for any container: demuxes every packet and decodes the first frames.

    Reading all packets (without decoding them) proves the file is whole; decoding the first video
    and audio frames proves the streams are really decodable.
    """
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise MediaError("The clip has no picture (no video track).")
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            if video.codec_context is None or (audio is not None and audio.codec_context is None):
                raise MediaError(_UNREADABLE)  # a stream FFmpeg has no decoder for (or a damaged header)
            width, height = video.codec_context.width, video.codec_context.height
            video_codec = video.codec_context.name
            audio_codec = audio.codec_context.name if audio is not None else None
            rate = video.average_rate or video.guessed_rate or Fraction(24)
            v_first: float | None = None
            v_last: float | None = None
            video_packets = audio_packets = 0
            video_decoded = audio_decoded = False
            v_tries = a_tries = 0
            streams = [video] if audio is None else [video, audio]
            for packet in container.demux(*streams):
                if packet.size == 0 or packet.pts is None:
                    continue
                tb = packet.time_base
                if packet.stream.index == video.index:
                    video_packets += 1
                    start = float(packet.pts * tb)
                    length = float(packet.duration * tb) if packet.duration else float(1 / rate)
                    v_first = start if v_first is None else min(v_first, start)
                    v_last = start + length if v_last is None else max(v_last, start + length)
                    if not video_decoded and v_tries < _MAX_PROBE_DECODE_PACKETS:
                        v_tries += 1
                        video_decoded = bool(packet.decode())
                else:
                    audio_packets += 1
                    if not audio_decoded and a_tries < _MAX_PROBE_DECODE_PACKETS:
                        a_tries += 1
                        audio_decoded = bool(packet.decode())
            if not video_decoded and v_first is not None:
                # A decoder with frame delay (B-frames) may hold frames until flushed.
                video_decoded = bool(video.codec_context.decode(None))
            # The index says how many samples there are; fewer means the file was cut short.
            cut_short = video_packets < (video.frames or 0) or (
                audio is not None and audio_packets < (audio.frames or 0)
            )
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise MediaError(_UNREADABLE) from exc
    if v_first is None or not width or not height:
        raise MediaError("The clip has no pictures in it.")
    if cut_short:
        raise MediaError(_INCOMPLETE)
    if not video_decoded:
        raise MediaError(_UNREADABLE)
    return ClipInfo(
        duration=_packet_span(v_first, v_last),
        width=width,
        height=height,
        has_audio=audio_packets > 0 and audio_decoded,
        video_codec=video_codec,
        audio_codec=audio_codec,
        bytes=size,
    )


def probe_clip(
    path: Path,
    *,
    seconds: int,
    size: str,
    tolerance: float = 0.5,
    sound: bool = True,
    exact_size: bool = True,
    aspect_tolerance: float = 0.03,
) -> ClipInfo:
    """Proves a finished clip is what the model promised, or raises.

    The arguments for a job come from ``Catalog.promise_for(job)`` (``probe_clip(path, **asdict(promise))``).

    Args:
        path: the downloaded MP4.
        seconds: the length that was asked (and paid) for.
        size: the ``"WxH"`` that was asked for.
        tolerance: how far, in seconds, the length may be off.
        sound: the model promised a sound track (a silent model's clip without one is fine; a clip that
            should have sound and has none is not).
        exact_size: the provider renders exactly ``size`` (the local renderer, /v1/videos); otherwise the
            aggregators' models pick their own frame for an aspect, so only the aspect ratio is checked.
        aspect_tolerance: how far the width/height ratio may be off, relative to the asked one.

    Raises:
        MediaError: unreadable, wrong size or aspect, wrong length, or without the promised sound.
    """
    width, height = parse_size(size)
    info = inspect_clip(path)
    if exact_size and (info.width, info.height) != (width, height):
        raise MediaError(f"The clip is {info.width}x{info.height}, not the {size} that was asked for.")
    if not exact_size and abs(info.width * height / (info.height * width) - 1) > aspect_tolerance:
        raise MediaError(f"The clip is {info.width}x{info.height}, not the shape of the {size} that was asked for.")
    if abs(info.duration - seconds) > tolerance:
        raise MediaError(f"The clip is {info.duration:.1f} seconds long, not {seconds}.")
    if sound and not info.has_audio:
        raise MediaError("The clip has no sound track.")
    return info


# --------------------------------------------------------------------------- shrinking


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _plan_dimensions(width: int, height: int, fps: float, video_bps: float) -> tuple[int, int]:
    """The largest size (same aspect, even sides) where ``video_bps`` gives enough bits per pixel."""
    pixels_affordable = video_bps / (MIN_BITS_PER_PIXEL * fps)
    if width * height <= pixels_affordable:
        return width, height
    scale = math.sqrt(pixels_affordable / (width * height))
    scale = max(scale, MIN_SHORT_SIDE / min(width, height))
    scale = min(scale, 1.0)
    return _even(width * scale), _even(height * scale)


def _container_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return (container.duration or 0) / 1_000_000


def _reencode(src: Path, dest: Path, *, width: int, height: int, video_bps: int, audio_bps: int) -> None:
    """One libx264 + AAC pass over ``src`` into ``dest`` at the given size and bitrates."""
    import av

    with (
        av.open(str(src)) as inp,
        av.open(str(dest), mode="w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        in_v = inp.streams.video[0]
        in_v.thread_type = "AUTO"
        in_a = inp.streams.audio[0] if inp.streams.audio else None
        rate = in_v.average_rate or in_v.guessed_rate or Fraction(24)
        out_v = out.add_stream("libx264", rate=rate)
        out_v.width, out_v.height, out_v.pix_fmt = width, height, "yuv420p"
        out_v.bit_rate = video_bps
        out_v.options = {
            "preset": "veryfast",
            "maxrate": str(int(video_bps * 1.25)),
            "bufsize": str(int(video_bps * 2)),
        }
        out_a = None
        if in_a is not None:
            channels = in_a.codec_context.channels or 2
            out_a = out.add_stream("aac", rate=in_a.codec_context.sample_rate or 48_000)
            out_a.layout = "mono" if channels == 1 else "stereo"
            out_a.bit_rate = audio_bps
        streams = [in_v] if in_a is None else [in_v, in_a]
        for packet in inp.demux(*streams):
            if packet.stream.index == in_v.index:
                for frame in packet.decode():
                    scaled = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                    scaled.pts, scaled.time_base = frame.pts, frame.time_base
                    out.mux(out_v.encode(scaled))
            elif out_a is not None:
                for frame in packet.decode():
                    out.mux(out_a.encode(frame))
        out.mux(out_v.encode(None))
        if out_a is not None:
            out.mux(out_a.encode(None))


def shrink_to_fit(src: Path, dest: Path, *, max_bytes: int) -> Path:
    """Re-encodes ``src`` into ``dest`` so it is at most ``max_bytes``, keeping length and sound.

    Synchronous and CPU-heavy (a full decode and libx264 encode): call it through
    ``asyncio.to_thread``. A clip already small enough is copied as it is.

    The video bitrate is what is left of ``max_bytes`` over the clip's duration after a safety
    margin for container overhead and the audio (64 kb/s, 32 kb/s when tight). The resolution is
    kept while that bitrate gives at least ``MIN_BITS_PER_PIXEL`` per pixel per frame, else the
    clip is scaled down (same aspect, even sides). The result is measured; when the encoder
    overshot, it tries again with a proportionally lower bitrate, a few times.

    Returns:
        ``dest``.

    Raises:
        MediaError: ``src`` is not a readable clip, or it can't get under ``max_bytes``.
    """
    import av

    info = inspect_clip(src)
    if info.bytes <= max_bytes:
        if src.resolve() != dest.resolve():
            shutil.copyfile(src, dest)
        return dest
    impossible = MediaError(f"The clip can't fit under {_megabytes(max_bytes)}, even at low quality.")
    try:
        seconds = max(info.duration, _container_seconds(src), 0.1)
        with av.open(str(src)) as probe:
            stream = probe.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(_UNREADABLE) from exc

    budget_bits = (max_bytes * 0.93 - 16 * 1024) * 8
    total_bps = budget_bits / seconds
    audio_bps = 0
    if info.has_audio:
        audio_bps = SHRINK_AUDIO_BPS if total_bps >= 4 * SHRINK_AUDIO_BPS else SHRINK_LOW_AUDIO_BPS
    video_bps = total_bps - audio_bps
    tmp = dest.with_name(dest.name + ".shrinking.mp4")
    try:
        for attempt in range(_SHRINK_ATTEMPTS):
            if video_bps < MIN_VIDEO_BPS:
                raise impossible
            width, height = _plan_dimensions(info.width, info.height, fps, video_bps)
            log.info(
                "shrink %s try %d: %dx%d at %d kb/s video, %d kb/s audio for %.1f s",
                src.name,
                attempt + 1,
                width,
                height,
                video_bps // 1000,
                audio_bps // 1000,
                seconds,
            )
            try:
                _reencode(src, tmp, width=width, height=height, video_bps=int(video_bps), audio_bps=audio_bps)
            except (av.FFmpegError, OSError, ValueError) as exc:
                raise MediaError("The clip could not be re-encoded to make it smaller.") from exc
            got = tmp.stat().st_size
            if got <= max_bytes:
                os.replace(tmp, dest)
                return dest
            video_bps *= 0.9 * max_bytes / got
        raise impossible
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "ALLOWED_IMAGE_TYPES",
    "MAX_IMAGE_PIXELS",
    "ClipInfo",
    "MediaError",
    "fit_reference",
    "inspect_clip",
    "parse_size",
    "probe_clip",
    "shrink_to_fit",
    "sniff_image_type",
]
