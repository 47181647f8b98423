"""Failover: when a job may move from one provider of its model to the next.

A model is served by several providers in order of preference (the catalog's routes). A job
moves on only when its current provider provably started nothing: sending a render that may
have started to a second provider could pay twice, so an ambiguous failure never moves a job
(the existing rule for lost creates holds for every provider). The price is the model's,
whichever provider serves it, so a move never costs more than was reserved.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.providers.base import ErrorKind, ProviderError, Route

# Failures that say nothing was queued at this provider and another may well do better:
# unreachable, an ingress 5xx without a request id, rate limited past what we wait, out of
# credit, a rejected key, or a model this provider no longer serves.
_MOVABLE = frozenset(
    {
        ErrorKind.UNAVAILABLE,
        ErrorKind.SERVER,
        ErrorKind.RATE_LIMITED,
        ErrorKind.QUOTA,
        ErrorKind.AUTH,
        ErrorKind.MODEL_UNAVAILABLE,
    }
)
# A rate limit asking for a longer wait than this is "past its wait": the next provider is tried.
MAX_RATE_LIMIT_WAIT_S = 30.0


def may_fail_over(error: ProviderError, *, retries_left: bool) -> bool:
    """Whether a failed submission may go to the model's next provider.

    An unreachable provider or one answering a 5xx that queued nothing loses the job to the next
    provider at once; a rate limit with a short wait is waited out in place first.

    Args:
        error: what the provider said.
        retries_left: whether the worker would still try this provider again.
    """
    if error.ambiguous or error.kind not in _MOVABLE:
        return False
    if error.kind in (ErrorKind.UNAVAILABLE, ErrorKind.SERVER):
        return True  # unreachable, or an ingress 5xx that queued nothing: the next provider now, not after retries
    if error.kind is ErrorKind.RATE_LIMITED and error.retry_after is not None:
        return error.retry_after > MAX_RATE_LIMIT_WAIT_S or not retries_left
    if error.retryable and retries_left:
        return False
    return True


def next_route(routes: Sequence[Route], current_provider: str) -> Route | None:
    """The route after the one through ``current_provider``; None when it was the last."""
    names = [route.provider for route in routes]
    if current_provider not in names:
        return routes[0] if routes else None
    index = names.index(current_provider)
    return routes[index + 1] if index + 1 < len(routes) else None
