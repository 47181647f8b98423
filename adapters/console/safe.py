"""The one way text reaches the terminal: control characters shown, never obeyed.

Prompts, names, file names and reasons can hold raw escape sequences (``ESC [ 2 J`` clears the
screen, ``ESC ] 52`` writes the clipboard, OSC 8 makes hidden links) or bidi overrides that make
a line read differently from what it is. A terminal obeys them, so everything the terminal adapter
prints passes through ``terminal_text``, which replaces each such character with a visible escape
(``\\x1b``, ``\\u202e``). Newlines and tabs stay as they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls except tab and newline, DEL, C1 controls, and the bidi embedding/override/isolate marks.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(text: str) -> str:
    """``text`` with every character a terminal would act on replaced by its visible escape."""
    return _UNSAFE.sub(_visible, text)


def json_line(payload: dict[str, Any]) -> str:
    """One JSON line that is also safe to show on a terminal (``json`` leaves C1 and bidi marks raw)."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", json.dumps(payload, ensure_ascii=False))


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None
