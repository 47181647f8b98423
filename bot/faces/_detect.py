"""Finding faces at any roll: dlib's HOG face detector run over rotated copies of the working image.

dlib's frontal detector (five HOG filters: frontal, turned left, turned right, and frontal rolled either way)
finds a face rolled up to about 40 degrees either side (measured on scikit-image's astronaut in 5-degree steps),
and a mirrored face as well as the original. Running it over copies turned by ``ANGLES`` therefore covers every
roll with margin, including upside down and mirrored faces (a vertical flip is a half turn plus a mirror). Small
faces are found because the decoder enlarges small images to the working size first (see ``_decode``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import dlib
import numpy as np

#: The turns (degrees, counter-clockwise) the image is screened at: 60-degree steps, each covering +-30 degrees,
#: upright first (``has_face`` stops at the first face found).
ANGLES: tuple[int, ...] = (0, 60, 300, 180, 120, 240)
#: dlib's detection score must exceed this (dlib's own default is 0).
MIN_SCORE = 0.0
#: A turned copy is searched at most this many times the working image's area. Turning a photo of ordinary
#: shape (up to about 2.4:1) stays under it; turning a thin strip (4000x90) by 60 degrees would make a canvas
#: twenty times larger, mostly margin, and cost seconds of CPU per picture: such a copy is searched scaled down.
MAX_TURNED_AREA = 2.5


@dataclass(frozen=True, slots=True)
class Hit:
    """One detection, in working-image pixels."""

    angle: int  # the turn of the working image the face was found in (so the face was rolled by -angle)
    rect: dlib.rectangle  # in the turned copy's pixels, as searched (see ``scale``)
    corners: np.ndarray  # (4, 2) float: the rectangle's corners in the unturned working image
    score: float
    scale: float = 1.0  # the turned copy was searched at this scale (below 1 for thin pictures' turned copies)


def turned(image: np.ndarray, angle: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``angle`` degrees on a canvas large enough to keep every pixel, and the 2x3 matrix
    mapping the turned copy's pixels back to ``image``'s."""
    if angle % 360 == 0:
        return image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    height, width = image.shape[:2]
    forward = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    cos, sin = abs(forward[0, 0]), abs(forward[0, 1])
    new_w, new_h = math.ceil(height * sin + width * cos), math.ceil(height * cos + width * sin)
    forward[0, 2] += new_w / 2 - width / 2
    forward[1, 2] += new_h / 2 - height / 2
    # Mirrored margins rather than a flat colour add no straight edges; faces mirrored into them are dropped later.
    out = cv2.warpAffine(image, forward, (new_w, new_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, cv2.invertAffineTransform(forward)


def searched_copy(image: np.ndarray, angle: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``turned(image, angle)``, scaled down to at most ``MAX_TURNED_AREA`` times ``image``'s area.

    Returns the copy, the 2x3 matrix mapping its pixels back to ``image``'s, and the scale it was made at.
    """
    copy, back = turned(image, angle)
    limit = MAX_TURNED_AREA * image.shape[0] * image.shape[1]
    area = copy.shape[0] * copy.shape[1]
    if area <= limit:
        return copy, back, 1.0
    scale = math.sqrt(limit / area)
    height, width = copy.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(copy, size, interpolation=cv2.INTER_AREA)
    back = back.copy()
    back[:, :2] /= scale  # a pixel of the small copy is 1/scale pixels of the turned one
    return small, back, scale


def _corners(rect: dlib.rectangle, back: np.ndarray) -> np.ndarray:
    points = np.array(
        [
            [rect.left(), rect.top()],
            [rect.right(), rect.top()],
            [rect.right(), rect.bottom()],
            [rect.left(), rect.bottom()],
        ],
        dtype=np.float64,
    )
    return points @ back[:, :2].T + back[:, 2]


def detect(
    detector: dlib.fhog_object_detector,
    gray: np.ndarray,
    *,
    angles: Iterable[int] = ANGLES,
    min_score: float = MIN_SCORE,
    first_only: bool = False,
) -> list[Hit]:
    """Every detection over the turned copies (duplicates of one face found at several turns included)."""
    hits: list[Hit] = []
    height, width = gray.shape[:2]
    for angle in angles:
        image, back, scale = searched_copy(gray, angle)
        rects, scores, _kinds = detector.run(image, 0, min_score)
        for rect, score in zip(rects, scores, strict=True):
            corners = _corners(rect, back)
            x, y = corners.mean(axis=0)
            if 0 <= x < width and 0 <= y < height:  # not a reflection of a face in the turned copy's margin
                hits.append(Hit(angle=angle, rect=rect, corners=corners, score=float(score), scale=scale))
        if first_only and hits:
            break
    return hits


def detect_faces(detector: dlib.fhog_object_detector, rgb: np.ndarray, *, first_only: bool = False) -> list[Hit]:
    """One hit per face in an RGB working image (only the first face found, with ``first_only``)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return distinct(detect(detector, gray, first_only=first_only))


def distinct(hits: list[Hit]) -> list[Hit]:
    """One hit per face: the best-scoring of hits whose centres are closer than half their size.

    The same face is often found at two neighbouring turns; boxes turned 60 degrees apart overlap too little
    for an IoU test, but their centres nearly coincide.
    """
    kept: list[Hit] = []
    for hit in sorted(hits, key=lambda h: -h.score):
        centre, side = hit.corners.mean(axis=0), _side(hit)
        if all(np.linalg.norm(centre - k.corners.mean(axis=0)) >= 0.5 * max(side, _side(k)) for k in kept):
            kept.append(hit)
    return kept


def _side(hit: Hit) -> float:
    return float(np.linalg.norm(hit.corners[1] - hit.corners[0]))
