"""The ``POST /videos`` body for one ``RenderSpec``.

Mapping (reference §3):

- ``model``: the route's ``reference_model_id`` for a cameo, ``image_model_id`` for a first frame,
  when set; else ``model_id``; without a route, ``spec.model`` as is.
- ``duration`` is an integer; ``resolution`` and ``aspect_ratio`` are always sent (the defaults are
  undocumented), taken from the spec or derived from its exact ``size``; ``size`` itself is sent
  only when neither can be derived.
- ``generate_audio`` is left out when ``spec.audio is None`` (the model's own default applies).
- A first frame goes in ``frame_images`` (``frame_type: first_frame``); a cameo
  (``reference.is_likeness``) in ``input_references`` (identity guidance, not an exact frame). Both
  are ``data:`` URLs: reelbot has the bytes, not a public HTTPS URL.
- There is no negative prompt field: it goes through provider passthrough, keyed by provider slug
  (``provider.options.<slug>.parameters``), only for families whose key is documented (Veo on
  ``google-vertex``: ``negativePrompt``). Elsewhere it is dropped, as OpenRouter would drop it.
- ``callback_url`` is the spec's webhook URL when set.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from bot.providers.base import RenderSpec

_ASPECTS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
_RESOLUTIONS = {360: "360p", 480: "480p", 720: "720p", 768: "768p", 1080: "1080p"}
# family -> (provider slug, passthrough key for a negative prompt); documented ones only.
_NEGATIVE_PROMPT_KEYS: dict[str, tuple[str, str]] = {"veo": ("google-vertex", "negativePrompt")}


def model_id(spec: RenderSpec) -> str:
    route = spec.route
    if route is None:
        return spec.model
    reference = spec.reference
    if reference is not None and reference.is_likeness and route.reference_model_id:
        return route.reference_model_id
    if reference is not None and not reference.is_likeness and route.image_model_id:
        return route.image_model_id
    return route.model_id


def _dims(size: str) -> tuple[int, int] | None:
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) <= 0 or int(height) <= 0:
        return None
    return int(width), int(height)


def aspect_of(size: str) -> str:
    """``1280x720`` -> ``16:9``; empty when the size is not one of the API's ratios."""
    dims = _dims(size)
    if dims is None:
        return ""
    divisor = math.gcd(*dims)
    ratio = f"{dims[0] // divisor}:{dims[1] // divisor}"
    return ratio if ratio in _ASPECTS else ""


def resolution_of(size: str) -> str:
    """``1280x720`` -> ``720p`` (the short side); empty when it is not one of the API's values."""
    dims = _dims(size)
    return _RESOLUTIONS.get(min(dims), "") if dims is not None else ""


def _family(spec: RenderSpec, model: str) -> str:
    if spec.family:
        return spec.family.lower()
    return "veo" if "/veo" in model.lower() else ""


def _data_url(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def create_body(spec: RenderSpec) -> dict[str, Any]:
    model = model_id(spec)
    body: dict[str, Any] = {"model": model, "prompt": spec.prompt, "duration": int(spec.seconds)}
    resolution = spec.resolution or resolution_of(spec.size)
    aspect = spec.aspect or aspect_of(spec.size)
    if resolution:
        body["resolution"] = resolution
    if aspect:
        body["aspect_ratio"] = aspect
    if (not resolution or not aspect) and _dims(spec.size) is not None:
        body["size"] = spec.size.lower()
    if spec.audio is not None:
        body["generate_audio"] = spec.audio
    if spec.seed is not None:
        body["seed"] = spec.seed
    reference = spec.reference
    if reference is not None:
        image = {"type": "image_url", "image_url": {"url": _data_url(reference.data, reference.content_type)}}
        if reference.is_likeness:
            body["input_references"] = [image]
        else:
            body["frame_images"] = [{**image, "frame_type": "first_frame"}]
    if spec.negative_prompt:
        passthrough = _NEGATIVE_PROMPT_KEYS.get(_family(spec, model))
        if passthrough is not None:
            slug, key = passthrough
            body["provider"] = {"options": {slug: {"parameters": {key: spec.negative_prompt}}}}
    if spec.webhook_url:
        body["callback_url"] = spec.webhook_url
    return body
