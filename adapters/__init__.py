"""Platform adapters: each translates its platform's events into ``bot.jobs.ChatRequest`` and
implements ``bot.delivery.Delivery``. ``adapters.cli`` is the composition root (``reelbot``)."""
