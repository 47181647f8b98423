"""A cameo's files: reading the likeness out of what a person sent, and storing it per owner.

Files live under ``cameos/<owner>/<registration>.*``: one directory per owner, one name per
registration, never named by content, so two people who upload the same bytes get two files and
revoking one leaves the other's. Every path is also listed in the store (``cameo_files``) so
revocation can delete the files of earlier registrations as well.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bot.faces import has_face
from bot.jobs import InputFile
from bot.media import MediaError, fit_reference

MAX_ASSET_BYTES = 25 * 1024 * 1024
NO_FACE = (
    "I can't find a face in that {what}. A cameo is your likeness: attach a clear, well-lit picture "
    "(or a 2-4 s video) of your own face."
)


@dataclass(frozen=True, slots=True)
class Likeness:
    """What a registration reads out of the attachment: the kind, and the face picture (PNG)."""

    kind: str  # "image" or "video"
    picture: bytes


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def video_frame(data: bytes) -> tuple[bytes, float]:
    """The middle frame of a short video as PNG bytes, and the video's duration in seconds."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = next((s for s in container.streams if s.type == "video"), None)
            if stream is None:
                raise MediaError("That video has no picture track.")
            duration = float(container.duration / 1_000_000) if container.duration else 0.0
            frames = [frame for frame in container.decode(stream)]
    except (av.FFmpegError, StopIteration, ValueError) as exc:
        raise MediaError("That video could not be read; attach an MP4, MOV or WEBM of 2 to 4 seconds.") from exc
    if not frames:
        raise MediaError("That video has no frames.")
    if not duration:
        duration = float(frames[-1].time or 0.0)
    image = frames[len(frames) // 2].to_image()
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue(), duration


def likeness_from(file: InputFile) -> Likeness:
    """Reads the likeness out of an attachment; refuses files that are too big, too long or show no face.

    Raises:
        MediaError: with the sentence to show.
    """
    if len(file.data) > MAX_ASSET_BYTES:
        raise MediaError(f"That file is over {MAX_ASSET_BYTES // (1024 * 1024)} MB; attach a smaller one.")
    head = file.data[:16]
    is_video = file.content_type.startswith("video/") or head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3"
    if is_video:
        frame, duration = video_frame(file.data)
        if not 2.0 - 0.25 <= duration <= 4.0 + 0.25:
            raise MediaError(f"A cameo video must be 2 to 4 seconds long (that one is {duration:.1f} s).")
        if not has_face(frame):
            raise MediaError(NO_FACE.format(what="video"))
        return Likeness("video", frame)
    fitted = fit_reference(
        file.data, declared_type=file.content_type, filename=file.filename, size="1024x1024", max_bytes=MAX_ASSET_BYTES
    )
    # Look at what was sent as well as the square crop: cover-cropping can cut a face in half.
    if not (has_face(fitted.data) or has_face(file.data)):
        raise MediaError(NO_FACE.format(what="picture"))
    return Likeness("image", fitted.data)


class AssetFiles:
    """Owner-only files of the cameos, one directory per owner."""

    def __init__(self, *, root: Path) -> None:
        self.root = root

    def owner_dir(self, owner_key: str) -> Path:
        # Hashed: an owner key holds platform ids, which need not be safe file names.
        return self.root / hashlib.sha256(owner_key.encode()).hexdigest()[:24]

    def write(self, owner_key: str, original: bytes, likeness: Likeness) -> tuple[Path, Path]:
        """Writes one registration's original and likeness picture; returns their paths."""
        directory = self.owner_dir(owner_key)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        registration = secrets.token_hex(8)
        asset = directory / f"{registration}.{'mp4' if likeness.kind == 'video' else 'img'}"
        picture = directory / f"{registration}.likeness.png"
        for path, data in ((asset, original), (picture, likeness.picture)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        return asset, picture

    def delete(self, paths: list[str], owner_key: str) -> list[str]:
        """Deletes the listed files and everything in the owner's directory; returns the listed paths now gone.

        The directory is swept too: a crash between writing a registration and listing it in the
        store would otherwise leave an unlisted copy behind.
        """
        directory = self.owner_dir(owner_key)
        unlisted = [str(p) for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []
        gone = []
        for name in [*paths, *unlisted]:
            path = Path(name)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue
            gone.append(name)
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty (a file we could not delete) or already gone
        return gone
