"""Decoding untrusted image bytes for face screening, at the size the detector needs and never more.

Pillow reads only the header first, so a decompression bomb (a small file whose header claims billions of pixels)
is turned away before any pixel is decoded. JPEGs are decoded straight at a reduced scale (``Image.draft``, the
DCT scaling), so a large JPEG never costs its full size in memory. Anything Pillow cannot read, and any image too
thin to hold a face, gives ``None``: screening never raises on odd input.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

# numpy loads with the first picture decoded (start-up never needs it).
if TYPE_CHECKING:
    import numpy as np


#: The formats screened (what a reference image or a cameo can be, and the PNG frames taken from videos). Others,
#: such as EPS (which Pillow hands to Ghostscript), are never opened.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
#: Refuse to decode more than this many pixels (the same figure as ``bot.media.MAX_IMAGE_PIXELS``; larger images
#: are refused before screening, so this is a second line only).
MAX_PIXELS = 50_000_000
#: The detector's working image holds about this many pixels: smaller images are enlarged (so small faces reach
#: the size dlib's detector finds, from about 55 px wide in the working image: see benchmarks/bench_faces.py), larger
#: ones reduced (so the search costs the same for every image, whatever its size).
WORK_PIXELS = 1_000_000
#: Never enlarge more than this: beyond it, a face has too few real pixels to be anyone.
MAX_UPSCALE = 4.0
#: Images over this many pixels in a format Pillow cannot decode at a reduced scale (PNG, WebP, GIF...) are decoded
#: at full size, so one at a time per process: a 49-megapixel PNG costs about 215 MB while it is decoded.
BIG_PIXELS = 12_000_000
_one_big_decode = threading.BoundedSemaphore(1)
#: A side shorter than this (in the working image) cannot hold a face the detector can find.
MIN_SIDE = 40


@dataclass(frozen=True, slots=True)
class Working:
    """An RGB working copy of an image and the factor from working pixels back to the original's pixels."""

    rgb: np.ndarray  # (height, width, 3) uint8, C-contiguous
    to_original: float  # original pixels per working pixel
    original_size: tuple[int, int]  # (width, height) of the stored image


def working_image(data: bytes, *, work_pixels: int = WORK_PIXELS) -> Working | None:
    """The image scaled to about ``work_pixels`` pixels, or None if it cannot or need not be screened."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning and decoder chatter: we check sizes
            return _decode(data, work_pixels)
    except Exception:  # any decoder failure on hostile bytes means "nothing to screen here"
        return None


_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit or float grey, stretched to 8 bits."""
    import numpy as np

    values = np.asarray(image, dtype=np.float32)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return Image.new("L", image.size)
    return Image.fromarray(np.nan_to_num((values - low) * (255.0 / (high - low))).astype(np.uint8), "L")


def _decode(data: bytes, work_pixels: int) -> Working | None:
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        width, height = image.size
        if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
            return None
        scale = min(MAX_UPSCALE, math.sqrt(work_pixels / (width * height)))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(target) < MIN_SIDE:
            return None
        big = width * height > BIG_PIXELS and image.format != "JPEG"
        with _one_big_decode if big else nullcontext():
            return _load(image, target, scale, width)


def _load(image: Image.Image, target: tuple[int, int], scale: float, width: int) -> Working:
    import numpy as np

    size = image.size
    if scale < 1.0:
        image.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still at least ``target``
        image.thumbnail(target, Image.Resampling.BILINEAR, reducing_gap=2.0)  # a truncated file raises here
    if image.mode in _WIDE_MODES:
        image = _to_8_bits(image)  # Pillow's convert would clip 16-bit grey to white and hide the face
    rgb = image.convert("RGB")  # the first frame only; alpha is dropped, as a video service would
    if scale > 1.0:
        rgb = rgb.resize(target, Image.Resampling.BILINEAR)
    array = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return Working(rgb=array, to_original=width / array.shape[1], original_size=size)
