"""All of reelbot's SQL: jobs, budgets and their ledger, leases, platform dedupe, consent and audit.

One SQLite file in WAL mode. Schema changes are versioned migrations (``schema.py``) applied at
open. Every job state change is one ``Store.transition`` (checked against ``bot.jobs.MOVES``, with
its money, in one transaction), so a crash loses nothing that was said to happen. The ledger and
the audit log are append-only (triggers).

Money moves only inside ``BEGIN IMMEDIATE`` transactions: the write lock is taken before the
budget is read, so concurrent requests (in this process or another) cannot both spend the last
dollar. Each job has at most one reserve row and at most one of settle/release in the ledger,
enforced by a unique index, which makes settlement idempotent.

``Store`` is one object over one connection; its parts live in one module each (jobs, leases,
money, audit), and ``CameoStore`` holds the consent tables on the same connection.
"""

from __future__ import annotations

from bot.store._base import IllegalTransition, NoSuchJob, StopRequested, StoreError
from bot.store.audit import AuditStore
from bot.store.consent import Cameo, CameoEvent, CameoStore, ConsentRequest
from bot.store.jobs import JobStore, new_job_id
from bot.store.leases import LeaseStore, lease_owner_id, lease_owner_is_gone
from bot.store.money import Admission, LedgerMismatch, LedgerTotals, MoneyStore, Usage


class Store(JobStore, LeaseStore, MoneyStore, AuditStore):
    """The SQLite store. Open with ``await Store.open(path)``; close with ``await store.close()``."""


__all__ = [
    "Admission",
    "Cameo",
    "CameoEvent",
    "CameoStore",
    "ConsentRequest",
    "IllegalTransition",
    "LedgerMismatch",
    "LedgerTotals",
    "NoSuchJob",
    "StopRequested",
    "Store",
    "StoreError",
    "Usage",
    "lease_owner_id",
    "lease_owner_is_gone",
    "new_job_id",
]
