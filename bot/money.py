"""Money in integer micro-USD.

Floats never hold money here: a micro-dollar is the smallest unit we count, prices are exact integers per
second of video (from the model catalog, ``bot.catalog``), and formatting goes through ``Decimal``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000


class UnknownPriceError(LookupError):
    """Raised when a model has no price for what was asked: such a clip is refused, never free."""


def clip_cost(per_second_micros: int, seconds: int) -> int:
    """Exact cost of one clip in micro-USD: seconds x the price per second."""
    if isinstance(per_second_micros, bool) or not isinstance(per_second_micros, int):
        raise TypeError("prices are whole micro-USD")
    return seconds * per_second_micros


def usd_to_micros(value: Decimal | int | str) -> int:
    """Converts a dollar amount to micro-USD, refusing fractions of a micro-dollar."""
    amount = Decimal(str(value)) * MICROS_PER_USD
    if amount != amount.to_integral_value():
        raise ValueError(f"{value} has more than six decimal places")
    return int(amount)


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def usd_string(micros: int) -> str:
    """``"2.40"``: a plain decimal string for machine-readable output (never a float)."""
    return format_usd(micros).lstrip("$").replace(",", "")


def format_usd(micros: int) -> str:
    """``$1.20`` style: cents always shown, extra digits only when they carry value."""
    amount = micros_to_decimal(micros)
    cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if cents == amount:
        return f"${cents:,.2f}"
    return f"${amount.normalize():,f}"
