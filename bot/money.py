"""Money in integer micro-USD, and the price list.

Floats never hold money here: a micro-dollar is the smallest unit we count, prices are
exact integers per second of video, and formatting goes through ``Decimal``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000

# Price per generated second, in micro-USD, by (model, size). A pair that is not here has no
# known price, and a job for it is refused rather than treated as free.
PRICE_PER_SECOND_MICROS: dict[tuple[str, str], int] = {
    ("sora-2", "720x1280"): 100_000,
    ("sora-2", "1280x720"): 100_000,
    ("sora-2-pro", "720x1280"): 300_000,
    ("sora-2-pro", "1280x720"): 300_000,
    ("sora-2-pro", "1024x1792"): 500_000,
    ("sora-2-pro", "1792x1024"): 500_000,
    # 1080p was added in 2026-03; its price comes from a single transcription of the pricing
    # page, so these sizes are only offered when REELBOT_ALLOW_1080P is set.
    ("sora-2-pro", "1080x1920"): 700_000,
    ("sora-2-pro", "1920x1080"): 700_000,
}


class UnknownPriceError(LookupError):
    """Raised when a model and size have no price: such a clip is refused, never free."""


def price_per_second(model: str, size: str) -> int:
    """Micro-USD per second for ``model`` at ``size``.

    Raises:
        UnknownPriceError: when the pair is not on the price list.
    """
    try:
        return PRICE_PER_SECOND_MICROS[(model, size)]
    except KeyError:
        raise UnknownPriceError(f"No price is known for {model} at {size}.") from None


def clip_cost(model: str, size: str, seconds: int) -> int:
    """Exact cost of one clip in micro-USD: seconds x price(model, size)."""
    return seconds * price_per_second(model, size)


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
