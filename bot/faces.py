"""Screening reference images for human faces, with OpenCV's bundled Haar cascade.

The cascade file ships inside the opencv-python-headless wheel, so nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

_MAX_SIDE = 720


@functools.cache
def _detector() -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise RuntimeError(f"OpenCV's face cascade is missing at {path}")
    return classifier


def count_faces(image_bytes: bytes) -> int:
    """How many frontal human faces the image shows (0 when it cannot be decoded)."""
    array = np.frombuffer(image_bytes, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_GRAYSCALE)
    if image is None:
        return 0
    height, width = image.shape[:2]
    scale = min(1.0, _MAX_SIDE / max(height, width))
    if scale < 1.0:
        image = cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
    image = cv2.equalizeHist(image)
    smallest = max(24, int(min(image.shape[:2]) * 0.08))
    faces = _detector().detectMultiScale(image, scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest))
    return len(faces)


def has_face(image_bytes: bytes) -> bool:
    return count_faces(image_bytes) > 0
