"""Reads an MP4 clip's index (its ``moov`` box) to prove the clip is whole without demuxing it.

Why: ``bot.media.inspect_clip`` runs between a provider finishing a clip and the clip appearing in
chat. Opening the clip with PyAV runs ``avformat_find_stream_info``, and demuxing every packet reads
the whole file: 4 to 60 ms for a few seconds of video, depending on size and load. The MP4's sample
tables already say where every sample's bytes lie, so checking those byte ranges against the file
proves the same thing ("nothing was cut off") from a few kilobytes, in a fraction of a millisecond.

What ``read_index`` checks, and raises ``Truncated`` for:

* the top-level boxes tile the file: one that runs past the end means the file was cut;
* every sample's bytes (stsz sizes laid into chunks by stsc at the stco/co64 offsets) lie inside
  the file.

What it gives, for the first video track and the first audio track (the streams FFmpeg would
number first): the decoder's name and configuration (avcC, hvcC, or AAC's AudioSpecificConfig from
esds), the sample entry's width and height, the sample count, where the first sample is, and the
span of the video samples' presentation times (first start to last end, as FFmpeg's packets span).

Anything outside the plain, non-fragmented layout that encoders and FFmpeg write raises
``Unsupported``: fragments (moof, mvex), several sample descriptions, zero-size samples, samples
outside any ``mdat``, tables that disagree on the sample count, edit lists that would make FFmpeg
drop or move samples, negative composition offsets, stz2, codecs other than H.264, HEVC and AAC,
tracks that are neither video nor sound, boxes that don't nest. The caller then falls back to the
full demuxer, so this reader only speeds up the common case and never decides a case it does not
understand.

Hand-written rather than a library: pymp4 pins construct 2.8.8 (2016) and builds a Python object
per box, hachoir is a generic and slow parser, mutagen reads tags but not sample tables, and
pith-mp4 is a 0.1 release. The dozen box types needed here are a few ``struct`` calls each.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, pairwise, repeat
from operator import add

__all__ = ["Mp4Index", "Track", "Truncated", "Unsupported", "read_index"]


class Unsupported(Exception):
    """The file uses something this reader does not handle: ask the full demuxer instead."""


class Truncated(Exception):
    """The boxes or the sample tables show that the file was cut off."""


@dataclass(frozen=True, slots=True)
class Track:
    """One track's facts from its index. Times are in ``timescale`` units (the track's own clock)."""

    codec: str  # FFmpeg decoder name: "h264", "hevc", "aac"
    config: bytes  # the decoder's extradata
    width: int  # from the sample entry; 0 for sound
    height: int
    timescale: int
    samples: int
    span: int  # first sample's start to the last sample's end, in presentation time
    first_offset: int  # where the first sample's bytes are in the file
    first_size: int


@dataclass(frozen=True, slots=True)
class Mp4Index:
    video: Track
    audio: Track | None


_HEAD = struct.Struct(">I4s")
_U64 = struct.Struct(">Q")
#: Box types a plain MP4 or QuickTime file starts with.
_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"})
_FRAGMENT_BOXES = frozenset({b"moof", b"mfra", b"sidx", b"styp", b"ssix"})
#: A moov above this is not a short clip's (an hour of video needs a few MB); let the demuxer have it.
_MAX_MOOV_BYTES = 16 * 1024 * 1024
#: More top-level boxes than this is not a plain MP4 either (encoders write three to six).
_MAX_TOP_LEVEL_BOXES = 256
#: Sample entry fourcc -> (configuration box, FFmpeg decoder).
_VIDEO_ENTRIES = {
    b"avc1": (b"avcC", "h264"),
    b"avc3": (b"avcC", "h264"),
    b"hvc1": (b"hvcC", "hevc"),
    b"hev1": (b"hvcC", "hevc"),
}
#: esds objectTypeIndication values FFmpeg maps to AAC (MPEG-4 audio, MPEG-2 AAC main/LC/SSR).
_AAC_OTIS = frozenset({0x40, 0x66, 0x67, 0x68})
#: AudioSpecificConfig object types FFmpeg decodes with its "aac" decoder (HE-AAC's 5 and 29 hide the
#: real type further on; they go to the demuxer).
_AAC_OBJECT_TYPES = frozenset({1, 2, 3, 4})
_RATE_ONE = 0x00010000


def read_index(fd: int, file_size: int) -> Mp4Index:
    """Reads and checks the index of the MP4 open as ``fd`` (``file_size`` bytes long).

    Raises:
        Truncated: a box or a sample runs past the end of the file.
        Unsupported: anything this reader does not fully understand (see the module docstring).
    """
    moov, mdats = _top_level(fd, file_size)
    try:
        return _read_moov(moov, mdats, file_size)
    except (struct.error, IndexError, ValueError) as exc:
        raise Unsupported(f"unreadable index: {exc}") from exc


def _top_level(fd: int, file_size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The ``moov`` payload and the ``mdat`` payload ranges, checking the boxes tile the file."""
    moov: bytes | None = None
    mdats: list[tuple[int, int]] = []
    offset = 0
    for _ in range(_MAX_TOP_LEVEL_BOXES):
        if offset >= file_size:
            break
        head = os.pread(fd, 16, offset)
        if len(head) < 8:
            raise Truncated("a box header is cut off")
        size, kind = _HEAD.unpack_from(head)
        header = 8
        if size == 1:
            if len(head) < 16:
                raise Truncated("a box header is cut off")
            size, header = _U64.unpack_from(head, 8)[0], 16
        elif size == 0:
            size = file_size - offset
        if (offset == 0 and kind not in _FIRST_BOXES) or not all(0x20 <= c < 0x7F for c in kind):
            raise Unsupported(f"top-level box {kind!r} at {offset}")
        if size < header:
            raise Unsupported(f"box {kind!r} of {size} bytes")
        end = offset + size
        if end > file_size:
            raise Truncated(f"box {kind.decode()} runs {end - file_size} bytes past the end")
        if kind == b"moov":
            if moov is not None or size > _MAX_MOOV_BYTES:
                raise Unsupported("several or huge moov boxes")
            moov = os.pread(fd, size - header, offset + header)
            if len(moov) != size - header:
                raise Truncated("the moov box is cut off")
        elif kind == b"mdat":
            mdats.append((offset + header, end))
        elif kind in _FRAGMENT_BOXES:
            raise Unsupported("fragmented MP4")
        offset = end
    else:
        raise Unsupported("too many top-level boxes")
    if moov is None or not mdats:
        raise Unsupported("no moov or no mdat")
    return moov, mdats


def _boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload start, payload end)`` of the boxes in ``buf[start:end]``."""
    offset = start
    while offset < end:
        if end - offset < 8:
            if any(buf[offset:end]):  # QuickTime may end a list with a zero "terminator"
                raise Unsupported("stray bytes between boxes")
            return
        size, kind = _HEAD.unpack_from(buf, offset)
        header = 8
        if size == 1:
            size, header = _U64.unpack_from(buf, offset + 8)[0], 16
        if size < header or offset + size > end:
            raise Unsupported(f"box {kind!r} does not fit its parent")
        yield kind, offset + header, offset + size
        offset += size


def _children(buf: bytes, start: int, end: int, unique: frozenset[bytes]) -> dict[bytes, tuple[int, int]]:
    """The boxes of ``unique`` types found in ``buf[start:end]``; each may appear at most once."""
    found: dict[bytes, tuple[int, int]] = {}
    for kind, a, b in _boxes(buf, start, end):
        if kind in unique:
            if kind in found:
                raise Unsupported(f"several {kind!r} boxes")
            found[kind] = (a, b)
    return found


def _need(found: dict[bytes, tuple[int, int]], kind: bytes) -> tuple[int, int]:
    if kind not in found:
        raise Unsupported(f"no {kind!r} box")
    return found[kind]


_MOOV_KIDS = frozenset({b"mvhd", b"mvex", b"cmov", b"udta", b"meta"})
_TRAK_KIDS = frozenset({b"edts", b"mdia"})
_MDIA_KIDS = frozenset({b"mdhd", b"hdlr", b"minf"})
_STBL_KIDS = frozenset({b"stsd", b"stts", b"ctts", b"stsc", b"stsz", b"stz2", b"stco", b"co64"})


def _read_moov(buf: bytes, mdats: list[tuple[int, int]], file_size: int) -> Mp4Index:
    found = _children(buf, 0, len(buf), _MOOV_KIDS)
    if b"mvex" in found or b"cmov" in found:
        raise Unsupported("fragmented or compressed moov")
    for kind in (b"udta", b"meta"):  # cover art becomes an extra video stream in FFmpeg
        if kind in found and b"covr" in buf[slice(*found[kind])]:
            raise Unsupported("cover art")
    movie_timescale = _timescale(buf, *_need(found, b"mvhd"))
    video: Track | None = None
    audio: Track | None = None
    for kind, start, end in _boxes(buf, 0, len(buf)):
        if kind != b"trak":
            continue
        trak = _children(buf, start, end, _TRAK_KIDS)
        mdia = _children(buf, *_need(trak, b"mdia"), _MDIA_KIDS)
        h, _ = _need(mdia, b"hdlr")
        handler = buf[h + 8 : h + 12]
        if handler not in (b"vide", b"soun"):
            raise Unsupported(f"a {handler!r} track")  # FFmpeg may still make it a video or sound stream
        if (handler == b"vide" and video is not None) or (handler == b"soun" and audio is not None):
            continue  # only the first of each is inspected, as with the demuxer
        track = _read_track(buf, trak, mdia, handler, movie_timescale, mdats, file_size)
        if handler == b"vide":
            video = track
        else:
            audio = track
    if video is None:
        raise Unsupported("no video track")
    return Mp4Index(video=video, audio=audio)


def _read_track(
    buf: bytes,
    trak: dict[bytes, tuple[int, int]],
    mdia: dict[bytes, tuple[int, int]],
    handler: bytes,
    movie_timescale: int,
    mdats: list[tuple[int, int]],
    file_size: int,
) -> Track:
    timescale = _timescale(buf, *_need(mdia, b"mdhd"))
    if timescale == 0:
        raise Unsupported("zero timescale")
    minf = _children(buf, *_need(mdia, b"minf"), frozenset({b"stbl"}))
    stbl = _children(buf, *_need(minf, b"stbl"), _STBL_KIDS)
    if b"stz2" in stbl:
        raise Unsupported("compact sample sizes (stz2)")
    if handler == b"vide":
        codec, config, width, height = _video_entry(buf, *_need(stbl, b"stsd"))
    else:
        codec, config = _audio_entry(buf, *_need(stbl, b"stsd"))
        width = height = 0

    sizes = _sample_sizes(buf, *_need(stbl, b"stsz"), file_size)
    count = len(sizes)
    if count == 0 or 0 in sizes:
        raise Unsupported("no samples, or empty samples")
    offsets = _chunk_offsets(buf, stbl)
    _check_sample_ranges(buf, *_need(stbl, b"stsc"), sizes, offsets, mdats, file_size)

    deltas = _expand(_pairs(buf, *_need(stbl, b"stts")), count, "stts")
    if 0 in deltas:
        raise Unsupported("zero sample durations")
    starts = list(accumulate(deltas, initial=0))[:count]  # decode times
    if b"ctts" in stbl:
        a, b = stbl[b"ctts"]
        shifts = _expand(_pairs(buf, a, b), count, "ctts")
        if any(s >= 0x80000000 for s in shifts):  # FFmpeg reads them signed whatever the version
            raise Unsupported("negative composition offsets")
        starts = list(map(add, starts, shifts))
    first, last_start = min(starts), max(starts)
    span = max(map(add, starts, deltas)) - first
    if b"edts" in trak:
        _check_edit_list(buf, trak[b"edts"], timescale, movie_timescale, first, last_start, deltas[0], handler)
    return Track(
        codec=codec,
        config=config,
        width=width,
        height=height,
        timescale=timescale,
        samples=count,
        span=span,
        first_offset=offsets[0],
        first_size=sizes[0],
    )


def _timescale(buf: bytes, start: int, end: int) -> int:
    """The timescale in an ``mvhd`` or ``mdhd`` payload (after creation and modification times)."""
    at = start + (20 if buf[start] == 1 else 12)
    if at + 4 > end:
        raise Unsupported("a header box is too short")
    return int(struct.unpack_from(">I", buf, at)[0])


def _sample_entry(buf: bytes, start: int, end: int) -> tuple[bytes, int, int]:
    """The one sample entry of an ``stsd`` payload: ``(fourcc, payload start, payload end)``."""
    if struct.unpack_from(">I", buf, start + 4)[0] != 1:
        raise Unsupported("several sample descriptions")
    entries = list(_boxes(buf, start + 8, end))
    if len(entries) != 1:
        raise Unsupported("several sample descriptions")
    return entries[0]


def _video_entry(buf: bytes, start: int, end: int) -> tuple[str, bytes, int, int]:
    fourcc, a, b = _sample_entry(buf, start, end)
    if fourcc not in _VIDEO_ENTRIES:
        raise Unsupported(f"video codec {fourcc!r}")
    config_box, codec = _VIDEO_ENTRIES[fourcc]
    width, height = struct.unpack_from(">HH", buf, a + 24)
    kids = _children(buf, a + 78, b, frozenset({config_box}))
    c, d = _need(kids, config_box)
    return codec, bytes(buf[c:d]), width, height


def _audio_entry(buf: bytes, start: int, end: int) -> tuple[str, bytes]:
    fourcc, a, b = _sample_entry(buf, start, end)
    if fourcc != b"mp4a":
        raise Unsupported(f"audio codec {fourcc!r}")
    version = struct.unpack_from(">H", buf, a + 8)[0]
    if version not in (0, 1):
        raise Unsupported(f"sound sample entry version {version}")
    kids = _children(buf, a + (28 if version == 0 else 44), b, frozenset({b"esds"}))
    c, d = _need(kids, b"esds")
    return "aac", _aac_config(buf[c:d])


def _descriptor(esds: bytes, pos: int, tag: int) -> tuple[int, int]:
    """Payload ``(start, end)`` of the MPEG-4 descriptor with ``tag`` at ``pos``."""
    if esds[pos] != tag:
        raise Unsupported(f"esds descriptor {esds[pos]} where {tag} was expected")
    pos += 1
    length = 0
    for _ in range(4):
        byte = esds[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    if pos + length > len(esds):
        raise Unsupported("esds descriptor runs past its box")
    return pos, pos + length


def _aac_config(esds: bytes) -> bytes:
    """The AudioSpecificConfig in an ``esds`` payload (FFmpeg's AAC extradata), checked to be AAC."""
    pos, _ = _descriptor(esds, 4, 0x03)  # ES_Descriptor, after the full-box version and flags
    flags = esds[pos + 2]
    pos += 3
    if flags & 0x80:  # streamDependenceFlag
        pos += 2
    if flags & 0x40:  # URL_Flag
        pos += 1 + esds[pos]
    if flags & 0x20:  # OCRstreamFlag
        pos += 2
    pos, _ = _descriptor(esds, pos, 0x04)  # DecoderConfigDescriptor
    if esds[pos] not in _AAC_OTIS:
        raise Unsupported(f"sound object type {esds[pos]:#x}")
    start, end = _descriptor(esds, pos + 13, 0x05)  # DecoderSpecificInfo
    config = bytes(esds[start:end])
    if len(config) < 2 or config[0] >> 3 not in _AAC_OBJECT_TYPES:
        raise Unsupported("not plain AAC")
    return config


def _table(buf: bytes, start: int, end: int, fields: int, fmt: str = "I") -> tuple[int, ...]:
    """The entry count at ``start + 4`` and that many entries of ``fields`` numbers each, flattened."""
    count = struct.unpack_from(">I", buf, start + 4)[0]
    width = struct.calcsize(fmt) * fields
    if start + 8 + count * width > end:
        raise Unsupported("a table runs past its box")
    return struct.unpack_from(f">{count * fields}{fmt}", buf, start + 8)


def _pairs(buf: bytes, start: int, end: int) -> tuple[int, ...]:
    return _table(buf, start, end, 2)


def _expand(pairs: tuple[int, ...], count: int, name: str) -> list[int]:
    """Run-length pairs ``(n, value, n, value...)`` as one value per sample; must cover ``count``."""
    covered = sum(pairs[0::2])
    if covered != count:  # checked first: a damaged table may claim billions of samples
        raise Unsupported(f"{name} covers {covered} samples, stsz {count}")
    return list(chain.from_iterable(map(repeat, pairs[1::2], pairs[0::2])))


def _sample_sizes(buf: bytes, start: int, end: int, file_size: int) -> tuple[int, ...]:
    if start + 12 > end:
        raise Unsupported("stsz is too short")
    uniform, count = struct.unpack_from(">II", buf, start + 4)
    if uniform:
        if uniform * count > file_size:  # more than the file could hold: the demuxer will say what
            raise Unsupported("stsz promises more bytes than the file has")
        return (uniform,) * count
    if start + 12 + 4 * count > end:
        raise Unsupported("stsz runs past its box")
    return struct.unpack_from(f">{count}I", buf, start + 12)


def _chunk_offsets(buf: bytes, stbl: dict[bytes, tuple[int, int]]) -> tuple[int, ...]:
    if (b"stco" in stbl) == (b"co64" in stbl):
        raise Unsupported("not exactly one of stco and co64")
    if b"stco" in stbl:
        return _table(buf, *stbl[b"stco"], 1)
    return _table(buf, *stbl[b"co64"], 1, "Q")


def _check_sample_ranges(
    buf: bytes,
    start: int,
    end: int,
    sizes: tuple[int, ...],
    offsets: tuple[int, ...],
    mdats: list[tuple[int, int]],
    file_size: int,
) -> None:
    """Lays the samples into chunks (stsc) and checks each chunk's bytes are in the file and an mdat."""
    runs = _table(buf, start, end, 3)  # (first chunk, samples per chunk, description index)...
    firsts, per_chunk, descriptions = runs[0::3], runs[1::3], runs[2::3]
    chunks = len(offsets)
    bounds = (*firsts, chunks + 1)
    if not firsts or firsts[0] != 1 or any(b <= a for a, b in pairwise(bounds)):
        raise Unsupported("stsc runs out of order")
    if 0 in per_chunk or any(d != 1 for d in descriptions):
        raise Unsupported("odd stsc entries")
    counts = list(chain.from_iterable(map(repeat, per_chunk, (b - a for a, b in pairwise(bounds)))))
    chunk_starts = list(accumulate(counts, initial=0))  # index of each chunk's first sample, then the total
    if chunk_starts[-1] != len(sizes):
        raise Unsupported(f"chunks hold {chunk_starts[-1]} samples, stsz {len(sizes)}")
    sums = list(accumulate(sizes, initial=0))
    ends = [o + sums[b] - sums[a] for o, (a, b) in zip(offsets, pairwise(chunk_starts), strict=True)]
    if max(ends) > file_size:
        raise Truncated(f"samples run {max(ends) - file_size} bytes past the end of the file")
    if len(mdats) == 1:
        low, high = mdats[0]
        if min(offsets) < low or max(ends) > high:
            raise Unsupported("samples outside the mdat box")
        return
    mdat_starts = [a for a, _ in mdats]
    for offset, stop in zip(offsets, ends, strict=True):
        i = bisect_right(mdat_starts, offset) - 1
        if i < 0 or stop > mdats[i][1]:
            raise Unsupported("samples outside the mdat boxes")


def _check_edit_list(
    buf: bytes,
    edts: tuple[int, int],
    timescale: int,
    movie_timescale: int,
    first: int,
    last_start: int,
    first_duration: int,
    handler: bytes,
) -> None:
    """Accepts only an edit list under which FFmpeg keeps every sample (so the spans agree).

    That is one edit at normal rate whose window holds every sample's start, except that sound may
    begin with one priming frame before the window (AAC encoders' 1024 or so samples of delay).
    """
    found = _children(buf, *edts, frozenset({b"elst"}))
    a, b = _need(found, b"elst")
    version = buf[a]
    count = struct.unpack_from(">I", buf, a + 4)[0]
    if count != 1 or movie_timescale == 0:
        raise Unsupported(f"an edit list of {count} entries")
    if a + 8 + (20 if version == 1 else 12) > b:
        raise Unsupported("elst runs past its box")
    if version == 1:
        duration, media_time, rate = struct.unpack_from(">QqI", buf, a + 8)
    else:
        duration, media_time, rate = struct.unpack_from(">IiI", buf, a + 8)
    if rate != _RATE_ONE or media_time < 0 or duration == 0:
        raise Unsupported("an empty, slowed or zero-length edit")
    window_end = media_time + (duration * timescale + movie_timescale // 2) // movie_timescale
    earliest = first + first_duration if handler == b"soun" else first
    if earliest < media_time or last_start >= window_end:
        raise Unsupported("the edit list cuts samples off")
