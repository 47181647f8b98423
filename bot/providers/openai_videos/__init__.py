"""OpenAI's ``/v1/videos`` (Sora 2) protocol, and relays that copy it, as a ``VideoProvider``.

Only ``OpenAIVideosProvider`` is public; the private modules hold the retry policy
(``_retry``), the error mapping (``_errors``) and the normalisation of relay variants
(``_normalise``).
"""

from bot.providers.openai_videos._client import OpenAIVideosProvider

__all__ = ["OpenAIVideosProvider"]
