"""Binding a cameo to the person in it: one face per owner, a profile-photo check, admin verification.

Three checks, each with a different strength (the README's cameo section says what they prove):

- A face that is already another person's active cameo is refused (face embeddings compared with
  ``bot.faces.same_person``). This stops the plain theft of a registered likeness, not the first
  registration of someone who never registered.
- Where the platform gives a profile photo (an adapter registers a ``ProfilePhotos`` source for
  its platform), a registration whose face is not the profile photo's face is refused, and one that
  matches counts as verified.
- Otherwise, as ``REELBOT_CAMEO_ADMIN_VERIFY`` says (``never`` | ``unverified`` | ``always``), a
  workspace admin verifies the registration before anyone can use it or ask to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Literal, Protocol

from bot.faces import EMBEDDING_MODEL, face_embedding, same_person
from bot.jobs import Requester
from bot.store import Cameo

AdminVerify = Literal["never", "unverified", "always"]
MODEL = EMBEDDING_MODEL
NOT_REQUIRED = "not_required"
BY_PROFILE = "profile"


class ProfilePhotos(Protocol):
    """A platform's profile pictures (Slack ``users.info`` ``image_512``, a Discord avatar)."""

    async def profile_photo(self, requester: Requester) -> bytes | None:
        """The person's profile picture, or None when they have none or it cannot be fetched."""
        ...


def embedding_of(picture: bytes) -> bytes | None:
    """The face embedding of the largest face in ``picture``, as float64 bytes (None: no face found).

    Stored with ``MODEL`` beside it: embeddings are compared only within one model's space.
    """
    import numpy as np

    vector = face_embedding(picture)
    return None if vector is None else np.asarray(vector, dtype=np.float64).tobytes()


def same_face(a: bytes, b: bytes) -> bool:
    import numpy as np

    first, second = np.frombuffer(a, dtype=np.float64), np.frombuffer(b, dtype=np.float64)
    return first.shape == second.shape and bool(same_person(first, second))


def owner_of_face(embedding: bytes, registered: list[tuple[str, bytes]]) -> str | None:
    """The owner key of the registered cameo showing the same person, if any."""
    return next((owner for owner, other in registered if same_face(embedding, other)), None)


async def profile_match(sources: Mapping[str, ProfilePhotos], requester: Requester, embedding: bytes) -> bool | None:
    """True or False when the requester's profile photo shows a face to compare with; None otherwise."""
    source = sources.get(requester.platform)
    if source is None:
        return None
    photo = await source.profile_photo(requester)
    if not photo:
        return None
    theirs = await asyncio.to_thread(embedding_of, photo)
    if theirs is None:
        return None
    return same_face(embedding, theirs)


def verified_at_registration(mode: AdminVerify, matched_profile: bool | None) -> str | None:
    """Who vouches for a new registration before any admin looked at it (None: an admin must)."""
    if mode == "never":
        return NOT_REQUIRED
    if mode == "unverified" and matched_profile:
        return BY_PROFILE
    return None


def is_verified(cameo: Cameo, mode: AdminVerify) -> bool:
    """Whether the cameo may be used (or asked for) under ``mode``."""
    if mode == "never":
        return True
    by = cameo.verified_by
    if by is None:
        return False
    if mode == "always":
        return by.startswith("admin:")
    return by != NOT_REQUIRED
