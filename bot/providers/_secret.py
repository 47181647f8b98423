"""A holder for an API key that keeps it out of ``repr``, ``vars`` and tracebacks' locals dumps.

Each provider stores its key in a ``Secret`` instead of a plain ``str`` attribute, so a provider
printed in a log line, an error report or a debugger shows ``<secret>``; only the one place that
builds the ``Authorization`` header calls ``reveal()``.
"""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """Holds a key so that ``repr``/``vars`` of its owner cannot show it (``__slots__``: no ``__dict__``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"
