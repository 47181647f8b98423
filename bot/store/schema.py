"""The schema: versioned migrations, applied in order at open (``PRAGMA user_version`` counts them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, budgets, ledger, dedupe, audit
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        request_key TEXT NOT NULL UNIQUE,
        platform TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        thread_id TEXT,
        prompt TEXT NOT NULL,
        model TEXT NOT NULL,
        size TEXT NOT NULL,
        seconds INTEGER NOT NULL,
        cameo TEXT,
        state TEXT NOT NULL,
        cost_micros INTEGER NOT NULL,
        budget_period TEXT,
        provider TEXT NOT NULL DEFAULT '',
        provider_video_id TEXT,
        progress INTEGER NOT NULL DEFAULT 0,
        card_ref TEXT,
        clip_path TEXT,
        delivered_ref TEXT,
        error TEXT,
        tries INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        remix_of TEXT,
        reference_path TEXT,
        lease_owner TEXT,
        lease_expires REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        queued_at REAL,
        started_at REAL
    );
    CREATE INDEX jobs_by_state ON jobs(state, queued_at);
    CREATE INDEX jobs_by_user ON jobs(platform, workspace_id, user_id, created_at);
    CREATE TABLE budget_limits (
        subject TEXT PRIMARY KEY,
        limit_micros INTEGER NOT NULL CHECK (limit_micros >= 0),
        set_by TEXT NOT NULL,
        set_at REAL NOT NULL
    );
    CREATE TABLE budget_usage (
        user_key TEXT NOT NULL,
        period TEXT NOT NULL,
        spent_micros INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
        reserved_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
        warned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_key, period)
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        user_key TEXT NOT NULL,
        period TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'release')),
        amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
        at REAL NOT NULL
    );
    CREATE UNIQUE INDEX ledger_once ON ledger(job_id, CASE kind WHEN 'reserve' THEN 0 ELSE 1 END);
    CREATE TABLE seen_events (
        key TEXT PRIMARY KEY,
        at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: likeness consent. The audit is append-only: triggers refuse updates and deletes.
    """
    CREATE TABLE cameos (
        owner_key TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        display_name TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('unconfirmed', 'active', 'revoked')),
        audience TEXT NOT NULL DEFAULT 'only_me'
            CHECK (audience IN ('only_me', 'approved', 'workspace', 'everyone')),
        asset_path TEXT,
        asset_hash TEXT,
        asset_kind TEXT,
        likeness_path TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX cameos_by_user ON cameos(platform, user_id);
    CREATE TABLE cameo_allowed (
        owner_key TEXT NOT NULL,
        user_key TEXT NOT NULL,
        PRIMARY KEY (owner_key, user_key)
    );
    CREATE TABLE cameo_forbidden (
        owner_key TEXT NOT NULL,
        word TEXT NOT NULL,
        PRIMARY KEY (owner_key, word)
    );
    CREATE TABLE consent_requests (
        id TEXT PRIMARY KEY,
        owner_key TEXT NOT NULL,
        requester_key TEXT NOT NULL,
        job_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'withdrawn')),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        decided_at REAL
    );
    CREATE INDEX consent_pending ON consent_requests(status, expires_at);
    CREATE TABLE cameo_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        owner_key TEXT NOT NULL,
        actor_key TEXT NOT NULL,
        action TEXT NOT NULL,
        job_id TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX cameo_audit_by_owner ON cameo_audit(owner_key, id);
    CREATE TRIGGER cameo_audit_no_update BEFORE UPDATE ON cameo_audit
        BEGIN SELECT RAISE(ABORT, 'the cameo audit is append-only'); END;
    CREATE TRIGGER cameo_audit_no_delete BEFORE DELETE ON cameo_audit
        BEGIN SELECT RAISE(ABORT, 'the cameo audit is append-only'); END
    """,
    # 3: usage follows the ledger. Every reserve, settle and release row moves the owner's
    # budget_usage in the same statement, so the two cannot disagree and admission saves a write.
    """
    CREATE TRIGGER ledger_moves_usage AFTER INSERT ON ledger BEGIN
        INSERT INTO budget_usage (user_key, period) VALUES (NEW.user_key, NEW.period)
            ON CONFLICT (user_key, period) DO NOTHING;
        UPDATE budget_usage SET
            reserved_micros = reserved_micros
                + CASE NEW.kind WHEN 'reserve' THEN NEW.amount_micros ELSE -NEW.amount_micros END,
            spent_micros = spent_micros + CASE NEW.kind WHEN 'settle' THEN NEW.amount_micros ELSE 0 END
        WHERE user_key = NEW.user_key AND period = NEW.period;
    END
    """,
    # 4: when the render itself started (submission may have waited out rate limits before it).
    """
    ALTER TABLE jobs ADD COLUMN render_started_at REAL
    """,
    # 5: the model catalog's options: aspect ratio, resolution, sound, seed and negative prompt.
    """
    ALTER TABLE jobs ADD COLUMN aspect TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN resolution TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN audio INTEGER;
    ALTER TABLE jobs ADD COLUMN seed INTEGER;
    ALTER TABLE jobs ADD COLUMN negative TEXT NOT NULL DEFAULT ''
    """,
    # 6: the state machine's bookkeeping and append-only money and audit.
    # ``attempts`` counts how often the step ``attempt_step`` was begun (a claim increments it, in
    # the claiming transaction, so crashes survive restarts); ``not_before`` is the backoff after a
    # crash; ``undelivered_at`` starts the undelivered lifetime; ``stop_to``/``stop_reason`` say how a
    # job whose stop was asked for must end (cancelled or refused, and why).
    """
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN attempt_step TEXT;
    ALTER TABLE jobs ADD COLUMN not_before REAL;
    ALTER TABLE jobs ADD COLUMN undelivered_at REAL;
    ALTER TABLE jobs ADD COLUMN stop_to TEXT;
    ALTER TABLE jobs ADD COLUMN stop_reason TEXT;
    UPDATE jobs SET undelivered_at = updated_at WHERE state = 'undelivered';
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit is append-only'); END
    """,
    # 7: a cameo bound to its person. Every file of every registration is listed (per owner, never
    # shared), so revocation can delete them all; the face embedding and who verified the cameo
    # are kept with it (owner-only database) and cleared on revocation.
    """
    ALTER TABLE cameos ADD COLUMN embedding BLOB;
    ALTER TABLE cameos ADD COLUMN embedding_model TEXT;
    ALTER TABLE cameos ADD COLUMN verified_by TEXT;
    ALTER TABLE cameos ADD COLUMN verified_at REAL;
    CREATE TABLE cameo_files (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner_key TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE INDEX cameo_files_by_owner ON cameo_files(owner_key);
    INSERT OR IGNORE INTO cameo_files (owner_key, path, created_at)
        SELECT owner_key, asset_path, updated_at FROM cameos WHERE asset_path IS NOT NULL;
    INSERT OR IGNORE INTO cameo_files (owner_key, path, created_at)
        SELECT owner_key, likeness_path, updated_at FROM cameos WHERE likeness_path IS NOT NULL;
    CREATE INDEX jobs_by_cameo ON jobs(cameo, state)
    """,
    # 8: where a render waits in its provider's own queue (fal tells), shown on the card.
    """
    ALTER TABLE jobs ADD COLUMN provider_position INTEGER
    """,
)


def statements(script: str) -> Iterator[str]:
    """Splits a migration into statements; a trigger's body keeps its inner semicolons."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()
