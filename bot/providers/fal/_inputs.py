"""Which fal endpoint a render goes to, and its input JSON, per model family.

fal fronts every model behind one queue, but each family spells its inputs differently (reference
§9 and trap 8): Veo wants ``duration`` as ``"8s"``, Kling and Seedance a numeric string ``"5"``, LTX
an integer; Wan takes no duration at all; Kling v3 names its first frame ``start_image_url``. One
row of ``FAMILIES`` per family keeps that in one place. A field the spec leaves empty (``audio is
None``, no seed, no negative prompt) is left out, so the model's own default applies.

Fields marked UNVERIFIED in the reference (Seedance and Wan fields, Kling v3 image names, Veo's
``reference-to-video`` ``image_urls``) follow it as written; check a model's ``llms.txt`` first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.providers.base import ErrorKind, ProviderError, RenderSpec


@dataclass(frozen=True, slots=True)
class FamilyInputs:
    """How one family writes a render's options.

    Attributes:
        duration: turns seconds into the wire value; None when the family takes no duration.
        aspect / resolution / audio / negative_prompt / seed: whether the family takes
            ``aspect_ratio`` / ``resolution`` / ``generate_audio`` / ``negative_prompt`` / ``seed``.
        image_field: the first-frame field (image-to-video).
        reference_field: the subject-reference field of the reference-to-video endpoint (a list).
        typical_render_s: rough wall-clock seconds of a short render, for the time-based progress.
    """

    duration: Callable[[int], str | int] | None
    aspect: bool
    resolution: bool
    audio: bool
    negative_prompt: bool
    seed: bool
    image_field: str = "image_url"
    reference_field: str = "image_urls"
    typical_render_s: float = 90.0


FAMILIES: dict[str, FamilyInputs] = {
    "veo": FamilyInputs(
        duration=lambda s: f"{s}s",
        aspect=True,
        resolution=True,
        audio=True,
        negative_prompt=True,
        seed=True,
        typical_render_s=60.0,
    ),
    "kling": FamilyInputs(
        duration=str,
        aspect=True,
        resolution=False,
        audio=True,
        negative_prompt=True,
        seed=False,
        typical_render_s=120.0,
    ),
    "seedance": FamilyInputs(
        duration=str, aspect=True, resolution=True, audio=True, negative_prompt=False, seed=True, typical_render_s=90.0
    ),
    "ltx": FamilyInputs(
        duration=int,
        aspect=False,
        resolution=True,
        audio=True,
        negative_prompt=False,
        seed=False,
        typical_render_s=45.0,
    ),
    "wan": FamilyInputs(
        duration=None,
        aspect=True,
        resolution=True,
        audio=False,
        negative_prompt=True,
        seed=True,
        typical_render_s=120.0,
    ),
}


def family_of(spec: RenderSpec, model_id: str) -> str:
    """The spec's family, or the one its fal model id names (``fal-ai/veo3.1/fast`` is ``veo``)."""
    if spec.family:
        return spec.family.lower()
    lowered = model_id.lower()
    for name in FAMILIES:
        if name in lowered:
            return name
    return ""


def choose_model_id(spec: RenderSpec) -> str:
    """The endpoint for this render: text-to-video, image-to-video for a first frame, or reference-to-video for a cameo.

    Raises:
        ProviderError: BAD_REQUEST when the route lacks the id this kind of render needs.
    """
    route = spec.route
    if route is None or not route.model_id:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"no fal model id is configured for {spec.model!r}")
    reference = spec.reference
    if reference is None:
        return route.model_id
    if reference.is_likeness:
        if not route.reference_model_id:
            raise ProviderError(
                ErrorKind.BAD_REQUEST, f"{spec.model} on fal does not take a cameo (no reference-to-video endpoint)"
            )
        return route.reference_model_id
    if not route.image_model_id:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{spec.model} on fal does not take a first frame")
    return route.image_model_id


def data_uri(data: bytes, content_type: str) -> str:
    """An image as a ``data:`` URI, which every fal image field accepts instead of an https URL."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _aspect(spec: RenderSpec) -> str:
    if spec.aspect:
        return spec.aspect
    width, _, height = spec.size.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        return ""
    w, h = int(width), int(height)
    return "16:9" if w > h else "9:16" if w < h else "1:1"


def _resolution(spec: RenderSpec) -> str:
    if spec.resolution:
        return spec.resolution
    width, _, height = spec.size.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        return ""
    return f"{min(int(width), int(height))}p"


def build_input(spec: RenderSpec, model_id: str) -> dict[str, Any]:
    """The submit body for ``model_id`` (as chosen by ``choose_model_id``).

    Raises:
        ProviderError: BAD_REQUEST for a family fal has no mapping for here.
    """
    family = family_of(spec, model_id)
    row = FAMILIES.get(family)
    if row is None:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"reelbot has no fal input mapping for model family {family!r}")
    body: dict[str, Any] = {"prompt": spec.prompt}
    if row.duration is not None:
        body["duration"] = row.duration(spec.seconds)
    if row.aspect and (aspect := _aspect(spec)):
        body["aspect_ratio"] = aspect
    if row.resolution and (resolution := _resolution(spec)):
        body["resolution"] = resolution
    if row.audio and spec.audio is not None:
        body["generate_audio"] = spec.audio
    if row.negative_prompt and spec.negative_prompt:
        body["negative_prompt"] = spec.negative_prompt
    if row.seed and spec.seed is not None:
        body["seed"] = spec.seed
    reference = spec.reference
    if reference is not None:
        uri = data_uri(reference.data, reference.content_type)
        if reference.is_likeness:
            body[row.reference_field] = [uri]
        else:
            body[image_field(family, model_id)] = uri
    return body


def image_field(family: str, model_id: str) -> str:
    """The first-frame field: Kling v3 names it ``start_image_url`` (UNVERIFIED), the rest ``image_url``."""
    if family == "kling" and "/v3/" in f"{model_id}/":
        return "start_image_url"
    return FAMILIES[family].image_field if family in FAMILIES else "image_url"


def typical_render_seconds(spec: RenderSpec, model_id: str) -> float:
    row = FAMILIES.get(family_of(spec, model_id))
    return row.typical_render_s if row is not None else 90.0
