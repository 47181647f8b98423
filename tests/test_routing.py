"""Failover rules: a job moves to the model's next provider only when nothing can have started."""

from __future__ import annotations

import pytest

from bot.providers.base import ErrorKind, ProviderError, Route
from bot.routing import MAX_RATE_LIMIT_WAIT_S, may_fail_over, next_route

ROUTES = (Route("fal", "fal-ai/veo3.1/fast"), Route("openrouter", "google/veo-3.1-fast"), Route("openai", "veo"))


@pytest.mark.parametrize(
    ("error", "retries_left", "moves"),
    [
        (ProviderError(ErrorKind.UNAVAILABLE, "refused", retryable=True), False, True),
        (ProviderError(ErrorKind.UNAVAILABLE, "refused", retryable=True), True, True),
        (ProviderError(ErrorKind.SERVER, "ingress 503, no request id", retryable=True), False, True),
        (ProviderError(ErrorKind.SERVER, "ingress 503, no request id", retryable=True), True, True),
        (ProviderError(ErrorKind.SERVER, "500 with a request id", retryable=True, ambiguous=True), False, False),
        (ProviderError(ErrorKind.TIMEOUT, "read timeout after sending", retryable=True, ambiguous=True), False, False),
        (ProviderError(ErrorKind.QUOTA, "402 no credits"), True, True),
        (ProviderError(ErrorKind.AUTH, "401"), True, True),
        (ProviderError(ErrorKind.MODERATION, "blocked"), False, False),
        (ProviderError(ErrorKind.BAD_REQUEST, "422"), False, False),
        (ProviderError(ErrorKind.RATE_LIMITED, retryable=True, retry_after=2.0), True, False),
        (ProviderError(ErrorKind.RATE_LIMITED, retryable=True, retry_after=2.0), False, True),
        (ProviderError(ErrorKind.RATE_LIMITED, retryable=True, retry_after=MAX_RATE_LIMIT_WAIT_S + 1), True, True),
    ],
)
def test_only_failures_that_started_nothing_move_a_job(error: ProviderError, retries_left: bool, moves: bool) -> None:
    assert may_fail_over(error, retries_left=retries_left) is moves


def test_the_next_route_follows_the_order_of_preference() -> None:
    assert next_route(ROUTES, "fal") == ROUTES[1]
    assert next_route(ROUTES, "openrouter") == ROUTES[2]
    assert next_route(ROUTES, "openai") is None
    assert next_route(ROUTES, "local") == ROUTES[0]
    assert next_route((), "fal") is None
