"""OpenRouter's video generation API (``/api/v1/videos``) as a ``VideoProvider``.

``OpenRouterProvider`` is the provider; ``webhooks`` checks and reads OpenRouter's signed
callbacks. The private modules hold the request body (``_request``), the job mapping
(``_normalise``), the error mapping (``_errors``) and the capped download (``_download``). Why
httpx and not the official SDK is in ``_client``'s docstring.
"""

from bot.providers.openrouter._client import OpenRouterProvider
from bot.providers.openrouter.webhooks import OpenRouterEvent, parse_openrouter_event, verify_openrouter_signature

__all__ = ["OpenRouterEvent", "OpenRouterProvider", "parse_openrouter_event", "verify_openrouter_signature"]
