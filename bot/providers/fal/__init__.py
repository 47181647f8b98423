"""fal.ai's queue API as a ``VideoProvider``: one key, one protocol, many model families.

Why httpx and not the official ``fal-client`` package (1.0.x):

- It cannot be pointed at a test server cleanly: its hosts come from ``FAL_QUEUE_RUN_HOST`` read
  once at import and always prefixed ``https://``; a plain-http 127.0.0.1 fake needs the private
  module global ``fal_client.client.QUEUE_URL_FORMAT`` replaced (process-wide), and it takes no
  transport to inject.
- Its retry wrapper resends on every transport error and timeout, up to 10 times. For a submit
  whose body was already sent that can queue (and bill) the same render twice, and it hides
  whether anything was queued, which reelbot's failover to the next provider depends on.
- It ignores ``Retry-After``, polls every 0.1 s by default, and reelbot already has one render
  watcher per provider; only submit/status/result/cancel are needed, a few plain JSON calls.
- ``httpx`` is what fal-client itself uses underneath and is already a dependency; with an
  injectable transport it is tested like the ``/v1/videos`` client.

Only ``FalProvider`` (and ``request_id_of``, for matching webhooks to renders) are public; the
private modules hold the per-family inputs (``_inputs``), the error mapping (``_errors``), the
opaque id (``_handle``) and the CDN download (``_download``).
"""

from bot.providers.fal._client import FalProvider
from bot.providers.fal._handle import request_id_of

__all__ = ["FalProvider", "request_id_of"]
