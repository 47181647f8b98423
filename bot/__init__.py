"""reelbot's render core: jobs, budgets, providers and the command language.

Nothing in this package imports a chat platform library; adapters live in ``adapters/``.
"""
