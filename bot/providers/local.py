"""The embedded renderer: real MP4 "preview" clips made on this machine, no account needed.

``LocalRenderer`` behaves like a remote video service (create, poll, download, delete, remix),
so the whole bot can run and be tested end to end without a key. Each clip is a real H.264
(yuv420p) + AAC MP4 of exactly the asked size and length that shows the prompt, the model, size
and length, and an "AI-generated (local preview)" label over a gradient or the reference image,
with a light sweep and a progress bar moving, and a soft chord progression as sound (no sound track at all
when ``spec.audio`` is False: the local renderer stands in for silent models too).

Crash safety: ``create`` writes a sidecar ``<id>.json`` (and ``<id>.ref`` with the reference
bytes) before it answers; the clip is rendered into ``<id>.part.mp4``, fsynced and atomically
renamed to ``<id>.mp4``. A new process asked about an id it has no task for reports it
completed when ``<id>.mp4`` exists, failed when ``<id>.error.json`` exists, and otherwise
restarts the render from the sidecar.

Speed: everything static (background, text, label, portrait) is drawn once with Pillow and
converted once to YUV; each frame is a copy of that plus two cheap numpy edits, encoded by
libx264 ``ultrafast`` (CRF 23). Measured on a loaded 2-core machine: 4 s at 1280x720 in 0.7 s
(0.5 MB), 12 s at 1792x1024 in 2.5 s (2.4 MB), 20 s at 1080x1920 in 5 s (4.6 MB); ``veryfast``
makes files ~2.5x smaller but takes ~2.5x as long. Renders run in worker threads, at most
``max_parallel`` at a time.
"""

from __future__ import annotations

import asyncio
import colorsys
import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from bot.clip_stream import ClipStream
from bot.providers.base import (
    ErrorKind,
    ProviderError,
    ProviderVideo,
    ReferenceImage,
    RenderSpec,
    VideoStatus,
)

# PyAV and numpy load with the first render: most `reelbot` commands never need their ~0.25 s.
if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

LABEL = "AI-generated (local preview)"
SAMPLE_RATE = 48_000
MAX_SIDE = 4096
MAX_SECONDS = 60
_ID = re.compile(r"local_[0-9a-f]{8,64}")
_SIDECAR_VERSION = 1
_MAX_PROMPT_SHOWN = 2_500
_SWEEP_PERIOD_S = 3.0
_SWEEP_WIDTH = 0.2  # of the frame width
#: libx264 speed/size trade-off; see the module docstring for measured times.
X264_PRESET = "ultrafast"
_FONT_FILES = {
    False: (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/Library/Fonts/Arial Unicode.ttf",
        "C:/Windows/Fonts/arial.ttf",
    ),
    True: (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
        "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
        "C:/Windows/Fonts/arialbd.ttf",
    ),
}


class RenderCancelled(Exception):
    """Raised inside a render thread when its stop event is set; the part file is removed."""


# --------------------------------------------------------------------------- drawing


@functools.lru_cache(maxsize=64)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font: DejaVu Sans when installed (wide Unicode coverage), else Pillow's own."""
    for candidate in _FONT_FILES[bold]:
        if os.path.exists(candidate):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size=size)


def _even(value: float) -> int:
    return max(2, round(value) // 2 * 2)


def _wrap(text: str, font: Any, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap, breaking over-long words by character; stops after ``max_lines + 1``."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
                line = ""
            while font.getlength(word) > max_width and len(word) > 1:
                cut = 1
                while cut < len(word) and font.getlength(word[: cut + 1]) <= max_width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
                if len(lines) > max_lines:
                    return lines
            line = word
            if len(lines) > max_lines:
                return lines
        if line:
            lines.append(line)
        if len(lines) > max_lines:
            return lines
    return lines


def _fit_text(text: str, width: float, height: float, max_size: int, min_size: int) -> tuple[list[str], Any, int]:
    """The biggest font size (down to ``min_size``) whose wrapped lines fit the box.

    At the smallest size whatever does not fit is cut, with an ellipsis on the last line.
    Returns (lines, font, line height).
    """
    size = max_size
    while True:
        font = _font(size)
        line_h = round(size * 1.25)
        max_lines = max(0, int(height // line_h))
        lines = _wrap(text, font, width, max_lines)
        if len(lines) <= max_lines or size <= min_size:
            break
        size = max(min_size, int(size * 0.88))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        if lines:
            last = lines[-1]
            while last and font.getlength(last + " …") > width:
                last = last[:-1]
            lines[-1] = last.rstrip() + " …"
    return lines, font, line_h


def _palette(spec: RenderSpec) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Two dark background colours and a bright accent, derived from the prompt (deterministic)."""
    digest = hashlib.sha256(f"{spec.model}\n{spec.prompt}".encode()).digest()
    hue = digest[0] / 255

    def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
        return round(r * 255), round(g * 255), round(b * 255)

    return rgb(hue, 0.6, 0.42), rgb(hue + 0.15, 0.7, 0.16), rgb(hue + 0.5, 0.55, 0.95)


def _gradient(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    import numpy as np

    t = np.linspace(0, 0.65, width, dtype=np.float32)[None, :] + np.linspace(0, 0.35, height, dtype=np.float32)[:, None]
    a = np.array(top, np.float32)
    b = np.array(bottom, np.float32)
    pixels = a + (b - a) * t[..., None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _reference_image(ref: ReferenceImage, width: int, height: int) -> Image.Image:
    """The reference as RGB at exactly the clip size (it should already be; this is defensive)."""
    with Image.open(io.BytesIO(ref.data)) as img:
        img.load()
        rgb = img.convert("RGB")
    return rgb if rgb.size == (width, height) else ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)


@dataclass(frozen=True, slots=True)
class _Still:
    """The static picture every frame starts from, plus where the moving parts go."""

    base: Image.Image  # RGB, the progress bar track empty
    full: Image.Image  # the same with the progress bar completely filled
    bar_top: int  # first row of the progress bar (even)


def compose_still(spec: RenderSpec, *, remix_of: str | None = None) -> _Still:
    """Draws the static layers of a clip: background, label, prompt panel, meta line, portrait."""
    width, height = (int(v) for v in spec.size.split("x"))
    unit = min(width, height)
    margin = round(unit * 0.06)
    top_colour, bottom_colour, accent = _palette(spec)
    reference = _reference_image(spec.reference, width, height) if spec.reference is not None else None
    likeness = reference is not None and spec.reference is not None and spec.reference.is_likeness

    if reference is None:
        background = _gradient(width, height, top_colour, bottom_colour)
    elif likeness:
        small = reference.resize((max(8, width // 8), max(8, height // 8)), Image.Resampling.BILINEAR)
        blurred = small.filter(ImageFilter.GaussianBlur(3)).resize((width, height), Image.Resampling.BILINEAR)
        background = Image.blend(blurred, Image.new("RGB", (width, height), (0, 0, 0)), 0.55)
    else:
        background = reference
    canvas = background.convert("RGBA")
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)

    # The label, top left, always readable: dark text on an amber pill.
    label_font = _font(max(10, round(unit * 0.038)), bold=True)
    pad = round(label_font.size * 0.5)
    label_w = label_font.getlength(LABEL)
    pill = (margin, margin, margin + label_w + 2 * pad, margin + label_font.size + 2 * pad)
    draw.rounded_rectangle(pill, radius=(pill[3] - pill[1]) // 2, fill=(255, 200, 40, 240))
    draw.text((margin + pad, (pill[1] + pill[3]) / 2), LABEL, font=label_font, fill=(20, 20, 20, 255), anchor="lm")

    bar_h = _even(max(4, unit * 0.014))
    bar_top = height - bar_h
    area_top = pill[3] + round(margin * 0.6)
    area_bottom = bar_top - round(margin * 0.6)

    portrait_box: tuple[int, int, int, int] | None = None
    if likeness:
        if width >= height:
            ph = area_bottom - area_top
            pw = min(round(ph * 3 / 4), round(width * 0.4))
            portrait_box = (margin, area_top, margin + pw, area_top + ph)
            panel = [margin * 2 + pw, area_top, width - margin, area_bottom]
        else:
            pw = round((width - 2 * margin) * 0.7)
            ph = min(round(pw * 4 / 3), round((area_bottom - area_top) * 0.55))
            left = (width - pw) // 2
            portrait_box = (left, area_top, left + pw, area_top + ph)
            panel = [margin, area_top + ph + margin, width - margin, area_bottom]
    elif reference is not None:
        panel = [margin, area_top + round((area_bottom - area_top) * 0.45), width - margin, area_bottom]
    else:
        panel = [margin, area_top, width - margin, area_bottom]

    inner = round(unit * 0.035)
    meta_font = _font(max(10, round(unit * 0.034)))
    meta = f"{spec.model} · {width}x{height} · {spec.seconds} s" + (" · silent" if spec.audio is False else "")
    if remix_of:
        meta += f" · remix of {remix_of}"
    meta_gap = round(meta_font.size * 0.8)
    text_w = panel[2] - panel[0] - 2 * inner
    text_h = panel[3] - panel[1] - 2 * inner - meta_font.size - meta_gap
    prompt = spec.prompt[:_MAX_PROMPT_SHOWN].strip() or "(no prompt)"
    lines, font, line_h = _fit_text(
        prompt, text_w, text_h, max_size=max(12, round(unit * 0.075)), min_size=max(10, round(unit * 0.03))
    )
    content_h = len(lines) * line_h + meta_gap + meta_font.size
    if reference is not None and not likeness:  # hug the text, keep the picture visible above
        panel[1] = max(panel[1], panel[3] - content_h - 2 * inner)
    draw.rounded_rectangle(panel, radius=round(unit * 0.025), fill=(0, 0, 0, 70 if reference is None else 150))
    y = panel[1] + inner + max(0, (panel[3] - panel[1] - 2 * inner - content_h) // 2)
    shadow = max(1, round(font.size / 18))
    for line in lines:
        draw.text((panel[0] + inner + shadow, y + shadow), line, font=font, fill=(0, 0, 0, 160))
        draw.text((panel[0] + inner, y), line, font=font, fill=(250, 250, 250, 255))
        y += line_h
    draw.text((panel[0] + inner, y + meta_gap), meta, font=meta_font, fill=(200, 200, 200, 255))

    draw.rectangle((0, bar_top, width, height), fill=(0, 0, 0, 170))
    canvas.alpha_composite(overlay)

    if portrait_box is not None and reference is not None:
        left, top, right, bottom = portrait_box
        border = max(3, round(unit * 0.008))
        shade = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        ImageDraw.Draw(shade).rectangle(
            (left + 2 * border, top + 2 * border, right + 2 * border, bottom + 2 * border), fill=(0, 0, 0, 120)
        )
        canvas.alpha_composite(shade)
        frame_draw = ImageDraw.Draw(canvas)
        frame_draw.rectangle(
            (left - border, top - border, right + border - 1, bottom + border - 1), fill=(245, 245, 245, 255)
        )
        portrait = ImageOps.fit(reference, (right - left, bottom - top), Image.Resampling.LANCZOS)
        canvas.paste(portrait, (left, top))

    base = canvas.convert("RGB")
    full = base.copy()
    ImageDraw.Draw(full).rectangle((0, bar_top, width, height), fill=accent)
    return _Still(base=base, full=full, bar_top=bar_top)


def _to_yuv(img: Image.Image) -> np.ndarray:
    """RGB -> planar yuv420p (BT.709, limited range) as PyAV's flat ``(H*3/2, W)`` array."""
    import av
    import numpy as np
    from av.video.reformatter import Colorspace

    frame = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
    return frame.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU709).to_ndarray()


def _planes(flat: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes inside PyAV's flat yuv420p array."""
    data = flat.reshape(-1)
    y_size, c_size = width * height, (width // 2) * (height // 2)
    return (
        data[:y_size].reshape(height, width),
        data[y_size : y_size + c_size].reshape(height // 2, width // 2),
        data[y_size + c_size : y_size + 2 * c_size].reshape(height // 2, width // 2),
    )


_CHORDS = (  # I - V - vi - IV in C, with a bass note an octave down
    (130.81, 261.63, 329.63, 392.00),
    (98.00, 246.94, 293.66, 392.00),
    (110.00, 261.63, 329.63, 440.00),
    (87.31, 261.63, 349.23, 440.00),
)


def soundtrack(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A soft chord progression (two seconds a chord, crossfaded), stereo float32 ``(2, n)``."""
    import numpy as np

    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = np.zeros((2, n), np.float64)
    chord_s, fade_s = 2.0, 0.35
    for k in range(math.ceil(seconds / chord_s)):
        start, end = k * chord_s, (k + 1) * chord_s
        lo, hi = max(0, round((start - fade_s) * sample_rate)), min(n, round((end + fade_s) * sample_rate))
        seg = t[lo:hi]
        env = np.clip((seg - (start - fade_s)) / fade_s, 0, 1) * np.clip(((end + fade_s) - seg) / fade_s, 0, 1)
        env = np.sin(env * np.pi / 2) ** 2  # smooth crossfade
        env *= 0.85 + 0.15 * np.sin(2 * np.pi * 0.5 * seg)  # slow swell
        for j, freq in enumerate(_CHORDS[k % len(_CHORDS)]):
            gain = 0.5 if j == 0 else 0.3
            for channel, detune in ((0, -0.4), (1, 0.4)):
                tone = np.sin(2 * np.pi * (freq + detune) * seg) + 0.2 * np.sin(4 * np.pi * (freq + detune) * seg)
                out[channel, lo:hi] += gain * env * tone
    peak = float(np.abs(out).max()) or 1.0
    out *= 0.3 / peak
    edge = min(n // 2, round(0.3 * sample_rate))
    if edge:
        ramp = np.linspace(0.0, 1.0, edge)
        out[:, :edge] *= ramp
        out[:, n - edge :] *= ramp[::-1]
    return out.astype(np.float32)


def render_clip(
    spec: RenderSpec,
    dest: Path,
    *,
    fps: int = 24,
    remix_of: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    min_seconds: float = 0.0,
) -> None:
    """Renders ``spec`` into the MP4 file ``dest`` (synchronous; run it in a thread).

    Args:
        spec: what to show; ``spec.size`` must be even numbers (yuv420p).
        dest: the file to write (overwritten).
        fps: frames per second.
        remix_of: the id this is a remix of, shown in the meta line.
        on_progress: called with (frames done, total frames) after every frame.
        stop: when set, the render stops before the next frame with ``RenderCancelled``.
        min_seconds: make the render take at least this long (for tests of slow renders).

    Raises:
        RenderCancelled: ``stop`` was set.
    """
    import av
    import numpy as np

    width, height = (int(v) for v in spec.size.split("x"))
    total = spec.seconds * fps
    started = time.monotonic()
    still = compose_still(spec, remix_of=remix_of)
    base, full = _to_yuv(still.base), _to_yuv(still.full)
    full_y, full_u, full_v = _planes(full, width, height)
    buf = np.empty_like(base)
    ys, us, vs = _planes(buf, width, height)
    bar_top, bar_c = still.bar_top, still.bar_top // 2

    band = max(8, round(width * _SWEEP_WIDTH))
    profile = (np.sin(np.linspace(0, np.pi, band)) ** 2 * 28).astype(np.uint8)
    ceiling = 255 - profile
    # A silent model's clip has no sound track at all; None (the model decides) means sound.
    audio = soundtrack(spec.seconds) if spec.audio is not False else None

    with av.open(str(dest), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_count = 0
        video.codec_context.colorspace = 1  # BT.709, matching _to_yuv
        video.codec_context.color_primaries = 1
        video.codec_context.color_trc = 1
        video.codec_context.color_range = 1  # limited ("tv") range
        video.options = {"preset": X264_PRESET, "crf": "23", "g": str(fps * 2)}
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=SAMPLE_RATE)
            sound.layout = "stereo"
            sound.bit_rate = 128_000
        time_base = Fraction(1, fps)
        for i in range(total):
            if stop is not None and stop.is_set():
                raise RenderCancelled
            np.copyto(buf, base)
            # A soft light band sweeping left to right, on the picture above the progress bar.
            phase = ((i / fps) % _SWEEP_PERIOD_S) / _SWEEP_PERIOD_S
            x0 = round(-band + phase * (width + band))
            lo, hi = max(0, x0), min(width, x0 + band)
            if hi > lo:
                region = ys[:bar_top, lo:hi]
                np.minimum(region, ceiling[lo - x0 : hi - x0], out=region)
                region += profile[lo - x0 : hi - x0]
            # The progress bar, filled up to this frame.
            filled = _even(width * (i + 1) / total) if i + 1 < total else width
            ys[bar_top:, :filled] = full_y[bar_top:, :filled]
            us[bar_c:, : filled // 2] = full_u[bar_c:, : filled // 2]
            vs[bar_c:, : filled // 2] = full_v[bar_c:, : filled // 2]

            frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
            frame.pts, frame.time_base = i, time_base
            out.mux(video.encode(frame))
            a0, a1 = round(i * SAMPLE_RATE / fps), round((i + 1) * SAMPLE_RATE / fps)
            if sound is not None and audio is not None and a1 > a0:
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[:, a0:a1]), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, a0, Fraction(1, SAMPLE_RATE)
                out.mux(sound.encode(chunk))
            if on_progress is not None:
                on_progress(i + 1, total)
            if min_seconds > 0:
                wait = started + min_seconds * (i + 1) / total - time.monotonic()
                if wait > 0 and stop is not None and stop.wait(wait):
                    raise RenderCancelled
                if wait > 0 and stop is None:
                    time.sleep(wait)
        out.mux(video.encode(None))
        if sound is not None:
            out.mux(sound.encode(None))


# --------------------------------------------------------------------------- the provider


@dataclass(slots=True)
class _Render:
    id: str
    spec: RenderSpec
    remix_of: str | None
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    started: bool = False
    done: bool = False
    frames_done: int = 0
    frames_total: int = 1
    error: ProviderError | None = None


class LocalRenderer:
    """A ``VideoProvider`` that renders preview clips on this machine (see the module docstring).

    Args:
        work_dir: where sidecars, references and clips live; survives restarts.
        fps: frames per second of the clips.
        min_render_seconds: make every render take at least this long, so tests can poll,
            cancel or "crash" a render half way. 0 renders as fast as the machine can.
        max_parallel: renders encoding at the same time; the rest report ``queued``.
    """

    name = "local"
    accepts_likeness = True

    def __init__(
        self,
        *,
        work_dir: Path,
        fps: int = 24,
        min_render_seconds: float = 0.0,
        max_parallel: int = 2,
    ) -> None:
        if fps < 1 or fps > 120:
            raise ValueError("fps must be between 1 and 120")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # holds cameo pictures
        self.fps = fps
        self.min_render_seconds = min_render_seconds
        self._slots = asyncio.Semaphore(max(1, max_parallel))
        self._renders: dict[str, _Render] = {}
        self._closed = False

    # ---- paths

    def _path(self, video_id: str, suffix: str) -> Path:
        return self.work_dir / f"{video_id}{suffix}"

    def _files(self, video_id: str) -> list[Path]:
        return [self._path(video_id, s) for s in (".json", ".ref", ".part.mp4", ".mp4", ".error.json")]

    @staticmethod
    def _check_id(video_id: str) -> None:
        """Ids become file names, so anything not shaped like ours is simply unknown."""
        if not isinstance(video_id, str) or not _ID.fullmatch(video_id):
            raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {str(video_id)[:80]!r}")

    # ---- sidecars

    def _write_sidecar(self, video_id: str, spec: RenderSpec, remix_of: str | None) -> None:
        reference = None
        if spec.reference is not None:
            ref_path = self._path(video_id, ".ref")
            _write_atomic(ref_path, spec.reference.data)
            reference = {
                "file": ref_path.name,
                "content_type": spec.reference.content_type,
                "filename": spec.reference.filename,
                "is_likeness": spec.reference.is_likeness,
            }
        doc = {
            "version": _SIDECAR_VERSION,
            "id": video_id,
            "prompt": spec.prompt,
            "model": spec.model,
            "size": spec.size,
            "seconds": spec.seconds,
            "audio": spec.audio,
            "fps": self.fps,
            "remix_of": remix_of,
            "reference": reference,
            "created_at": time.time(),
        }
        _write_atomic(self._path(video_id, ".json"), json.dumps(doc, ensure_ascii=False).encode())

    def _read_sidecar(self, video_id: str) -> tuple[RenderSpec, str | None] | None:
        """The spec saved at create time (None when there is no sidecar)."""
        try:
            doc = json.loads(self._path(video_id, ".json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProviderError(ErrorKind.SERVER, f"unreadable sidecar for {video_id}: {exc!r}") from exc
        try:
            reference = None
            if doc.get("reference"):
                ref = doc["reference"]
                reference = ReferenceImage(
                    data=self._path(video_id, ".ref").read_bytes(),
                    content_type=ref["content_type"],
                    filename=ref["filename"],
                    is_likeness=bool(ref.get("is_likeness")),
                )
            spec = RenderSpec(
                prompt=doc["prompt"],
                model=doc["model"],
                size=doc["size"],
                seconds=int(doc["seconds"]),
                reference=reference,
                audio=doc.get("audio"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(ErrorKind.SERVER, f"unreadable sidecar for {video_id}: {exc!r}") from exc
        return spec, doc.get("remix_of")

    def _read_error(self, video_id: str) -> ProviderError | None:
        try:
            doc = json.loads(self._path(video_id, ".error.json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return ProviderError(ErrorKind.SERVER, "the render failed")
        return ProviderError(ErrorKind.SERVER, str(doc.get("detail", "the render failed")))

    # ---- rendering

    @staticmethod
    def _validate(spec: RenderSpec) -> None:
        match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", spec.size)
        if not match:
            raise ProviderError(ErrorKind.BAD_REQUEST, f"size must be WIDTHxHEIGHT, got {spec.size!r}")
        width, height = int(match.group(1)), int(match.group(2))
        if width % 2 or height % 2 or not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
            raise ProviderError(
                ErrorKind.BAD_REQUEST, f"size must be even numbers between 16 and {MAX_SIDE}, got {spec.size}"
            )
        if not 1 <= spec.seconds <= MAX_SECONDS:
            raise ProviderError(ErrorKind.BAD_REQUEST, f"seconds must be 1 to {MAX_SECONDS}, got {spec.seconds}")

    def _start(self, video_id: str, spec: RenderSpec, remix_of: str | None) -> _Render:
        render = _Render(id=video_id, spec=spec, remix_of=remix_of)
        self._renders[video_id] = render
        render.task = asyncio.create_task(self._run(render), name=f"local-render-{video_id}")
        return render

    async def _run(self, render: _Render) -> None:
        async with self._slots:
            if render.stop.is_set():
                return
            render.started = True
            try:
                await asyncio.to_thread(self._render_sync, render)
            except RenderCancelled:
                log.info("local render %s stopped", render.id)
            except Exception as exc:
                log.exception("local render %s failed", render.id)
                render.error = ProviderError(ErrorKind.SERVER, f"local render failed: {type(exc).__name__}: {exc}")
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(
                        _write_atomic,
                        self._path(render.id, ".error.json"),
                        json.dumps({"detail": render.error.detail}).encode(),
                    )
            else:
                render.done = True

    def _render_sync(self, render: _Render) -> None:
        part, final = self._path(render.id, ".part.mp4"), self._path(render.id, ".mp4")

        def progress(done: int, total: int) -> None:
            render.frames_done, render.frames_total = done, total

        try:
            render_clip(
                render.spec,
                part,
                fps=self.fps,
                remix_of=render.remix_of,
                on_progress=progress,
                stop=render.stop,
                min_seconds=self.min_render_seconds,
            )
            if render.stop.is_set():
                raise RenderCancelled
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(part, final)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise

    # ---- the VideoProvider interface

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        """Writes the sidecar and starts rendering in the background; answers ``queued`` at once."""
        return await self._create(spec, remix_of=None)

    async def _create(self, spec: RenderSpec, *, remix_of: str | None) -> ProviderVideo:
        if self._closed:
            raise ProviderError(ErrorKind.UNAVAILABLE, "the local renderer is shut down")
        self._validate(spec)
        video_id = f"local_{secrets.token_hex(12)}"
        await asyncio.to_thread(self._write_sidecar, video_id, spec, remix_of)
        self._start(video_id, spec, remix_of)
        return ProviderVideo(id=video_id, status=VideoStatus.QUEUED, progress=0)

    async def retrieve(self, video_id: str) -> ProviderVideo:
        """The render's state; after a restart, an unfinished render is started again."""
        self._check_id(video_id)
        render = self._renders.get(video_id)
        if render is not None and render.task is not None and render.task.done() and not (render.done or render.error):
            self._renders.pop(video_id, None)  # stopped by aclose(): treat like after a restart
            render = None
        if render is not None:
            if render.error is not None:
                return ProviderVideo(id=video_id, status=VideoStatus.FAILED, error=render.error)
            if render.done:
                return ProviderVideo(id=video_id, status=VideoStatus.COMPLETED, progress=100)
            if not render.started:
                return ProviderVideo(id=video_id, status=VideoStatus.QUEUED, progress=0, poll_after=1.0)
            progress = min(99, render.frames_done * 100 // max(1, render.frames_total))
            return ProviderVideo(id=video_id, status=VideoStatus.IN_PROGRESS, progress=progress, poll_after=1.0)
        if self._path(video_id, ".mp4").exists():
            return ProviderVideo(id=video_id, status=VideoStatus.COMPLETED, progress=100)
        error = await asyncio.to_thread(self._read_error, video_id)
        if error is not None:
            return ProviderVideo(id=video_id, status=VideoStatus.FAILED, error=error)
        found = await asyncio.to_thread(self._read_sidecar, video_id)
        if found is None:
            raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {video_id}")
        if self._closed:
            raise ProviderError(ErrorKind.UNAVAILABLE, "the local renderer is shut down")
        log.info("local render %s resumed after a restart", video_id)
        self._start(video_id, *found)
        return ProviderVideo(id=video_id, status=VideoStatus.IN_PROGRESS, progress=0, poll_after=1.0)

    async def download(self, video_id: str, dest: Path, *, stream: ClipStream | None = None) -> int:
        """Copies the finished clip to ``dest`` (via a temp file and rename) and returns its size.

        A local copy takes no time worth overlapping: ``stream`` is left alone (the worker aborts it).
        """
        self._check_id(video_id)
        source = self._path(video_id, ".mp4")
        if not source.exists():
            if video_id in self._renders or self._path(video_id, ".json").exists():
                raise ProviderError(ErrorKind.BAD_REQUEST, f"video {video_id} is not finished")
            raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {video_id}")

        def copy() -> int:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".download")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            return dest.stat().st_size

        try:
            return await asyncio.to_thread(copy)
        except FileNotFoundError as exc:  # deleted while we copied
            raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {video_id}") from exc

    async def delete(self, video_id: str) -> None:
        """Stops a running render (before its next frame) and removes all of its files."""
        self._check_id(video_id)
        render = self._renders.pop(video_id, None)
        if render is not None:
            render.stop.set()
            if render.task is not None:
                if not render.started:  # still waiting for a slot: no thread to wait for
                    render.task.cancel()
                await asyncio.wait({render.task}, timeout=30)  # never raises the task's error
        removed = await asyncio.to_thread(self._remove_files, video_id)
        if render is None and not removed:
            raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {video_id}")

    def _remove_files(self, video_id: str) -> int:
        count = 0
        for path in self._files(video_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
        return count

    async def remix(self, video_id: str, prompt: str) -> ProviderVideo:
        """A new render with the original's model, size, length and reference and the new prompt."""
        self._check_id(video_id)
        render = self._renders.get(video_id)
        if render is not None:
            spec = render.spec
        else:
            found = await asyncio.to_thread(self._read_sidecar, video_id)
            if found is None:
                raise ProviderError(ErrorKind.NOT_FOUND, f"no local video {video_id}")
            spec = found[0]
        return await self._create(replace(spec, prompt=prompt), remix_of=video_id)

    async def retrieve_many(self, video_ids: Collection[str], *, since: float) -> dict[str, ProviderVideo]:
        """The renders this process is running, from memory (others are asked one by one)."""
        found: dict[str, ProviderVideo] = {}
        for video_id in video_ids:
            render = self._renders.get(video_id)
            if render is not None and (render.task is None or not render.task.done() or render.done or render.error):
                with contextlib.suppress(ProviderError):
                    found[video_id] = await self.retrieve(video_id)
        return found

    async def find_recent(self, spec: RenderSpec, since: float) -> ProviderVideo | None:
        """A render of this spec whose sidecar was written since ``since`` (after a crash)."""
        found = await asyncio.to_thread(self._find_sidecar, spec, since)
        return None if found is None else await self.retrieve(found)

    def _find_sidecar(self, spec: RenderSpec, since: float) -> str | None:
        for path in self.work_dir.glob("local_*.json"):
            try:
                if path.stat().st_mtime < since - 5:
                    continue
                doc = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if (doc.get("prompt"), doc.get("model"), doc.get("size"), doc.get("seconds")) == (
                spec.prompt,
                spec.model,
                spec.size,
                spec.seconds,
            ) and not doc.get("remix_of"):
                return str(doc.get("id"))
        return None

    async def aclose(self) -> None:
        """Stops running renders; their sidecars stay, so the next process resumes them."""
        self._closed = True
        renders = list(self._renders.values())
        for render in renders:
            render.stop.set()
            if render.task is not None and not render.started:
                render.task.cancel()
        tasks = [r.task for r in renders if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    # ---- for tests and diagnostics

    def progress_of(self, video_id: str) -> tuple[int, int] | None:
        """(frames done, total frames) of a render running in this process, else None."""
        render = self._renders.get(video_id)
        return None if render is None else (render.frames_done, render.frames_total)


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a crash leaves either the old file or the whole new one."""
    tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:  # owner-only
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
