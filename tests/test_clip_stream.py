"""``ClipStream``: a second reader gets exactly the file's bytes, or an error, never a part of them."""

from __future__ import annotations

import asyncio

import pytest

from bot.clip_stream import ClipStream, ClipStreamBroken

pytestmark = pytest.mark.timeout(10)


async def read_all(stream: ClipStream) -> bytes:
    return b"".join([chunk async for chunk in stream.chunks()])


async def test_the_reader_gets_every_byte_in_order_while_they_arrive() -> None:
    stream = ClipStream()
    reader = asyncio.create_task(read_all(stream))
    stream.begin(6)
    assert await stream.size() == 6
    stream.feed(b"abc")
    await asyncio.sleep(0)
    assert not reader.done()  # it waits for the rest, it does not end early
    stream.feed(b"def")
    stream.finish()
    assert await reader == b"abcdef"


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("no length", "declared no length"),
        ("started again", "started again"),
        ("fewer bytes", "not the 6 declared"),
        ("aborted", "the download failed"),
        ("reader behind", "fell behind"),
    ],
)
async def test_a_stream_that_cannot_match_the_file_breaks_instead(how: str, why: str) -> None:
    stream = ClipStream(max_buffered=4)
    reader = asyncio.create_task(read_all(stream))
    if how == "no length":
        stream.begin(None)
        with pytest.raises(ClipStreamBroken, match=why):
            await stream.size()
    else:
        stream.begin(6)
    if how == "started again":
        stream.feed(b"abc")
        stream.begin(6)  # a retried download starts from the first byte again
    elif how == "fewer bytes":
        stream.feed(b"abc")
        stream.finish()
    elif how == "aborted":
        stream.feed(b"abc")
        stream.abort("the download failed: ReadError")
    elif how == "reader behind":
        stream.feed(b"abc")
        stream.feed(b"def")  # 6 bytes waiting, over the 4 allowed: nobody holds them any longer
    with pytest.raises(ClipStreamBroken, match=why):
        await reader
    assert stream.broken is not None and why in stream.broken
    stream.finish()  # nothing revives a broken stream
    stream.feed(b"x")
    assert stream._chunks.qsize() <= 1  # only the wake-up marker: the bytes were let go


async def test_abort_after_the_end_changes_nothing() -> None:
    stream = ClipStream()
    stream.begin(3)
    stream.feed(b"abc")
    stream.finish()
    stream.abort("too late")
    assert stream.broken is None
    assert await read_all(stream) == b"abc"
