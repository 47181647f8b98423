"""Assembles the core from configuration: store, providers, model catalog, bot and worker."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from bot.catalog import Catalog, load_catalog
from bot.config import ConfigError, Settings
from bot.consent import enable_cameos
from bot.core import CorePolicy, ReelBot
from bot.providers.base import VideoProvider
from bot.providers.factory import build_providers
from bot.providers.registry import ProviderSet
from bot.store import Store, StoreError
from bot.worker import Worker


class StartupError(RuntimeError):
    """reelbot cannot start as configured; the message is one line naming what to fix."""


def prepare_data_dir(path: Path) -> None:
    """Makes the data directory owner-only if reelbot creates it; checks one it is given.

    A directory that already exists is the operator's: its mode is never changed (it may be the
    current directory, a mount, or shared on purpose), but reelbot must own it and be able to write
    it, since everything inside is private to the people who asked.

    Raises:
        StartupError: a file is in the way, the directory belongs to someone else, is read-only, or
            cannot be created.
    """
    shown = f"REELBOT_DATA_DIR {str(path)!r}"
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise StartupError(f"{shown} cannot be used ({exc.strerror or type(exc).__name__}).") from None
    if info is None:
        try:
            path.mkdir(parents=True, mode=0o700)
            path.chmod(0o700)  # whatever the umask: reelbot made it, so it is reelbot's to lock
        except FileExistsError:
            return prepare_data_dir(path)  # another process made it a moment ago
        except PermissionError:
            raise StartupError(f"{shown} cannot be created: permission denied.") from None
        except OSError as exc:
            raise StartupError(f"{shown} cannot be created ({exc.strerror or type(exc).__name__}).") from None
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"{shown} is a file, not a folder.")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise StartupError(f"{shown} belongs to another user (uid {info.st_uid}); use a folder of your own.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"{shown} is read-only for reelbot; make it writable or use another folder.")
    return None


def check_database(path: Path) -> None:
    """Refuses a database file SQLite cannot read, before the store opens a connection on it.

    Raises:
        StartupError: the file is not a SQLite database (damaged, or something else saved there).
    """
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StartupError(
            f"{path} is damaged or not a reelbot database ({exc}); move it aside to start afresh."
        ) from None


@dataclass
class App:
    settings: Settings
    store: Store
    providers: ProviderSet
    catalog: Catalog
    bot: ReelBot
    worker: Worker

    @property
    def provider(self) -> VideoProvider:
        """The default provider (the first one configured)."""
        return self.providers.get(None)

    async def close(self) -> None:
        await self.worker.stop()
        await self.providers.aclose()
        await self.store.close()


async def build_app(
    settings: Settings,
    *,
    provider: VideoProvider | None = None,
    providers: ProviderSet | None = None,
    webhooks: bool = False,
) -> App:
    """Opens the store and wires the core. Call ``await app.worker.start()`` once deliveries are registered.

    ``provider``/``providers`` replace the ones configuration would build (tests point them at fakes).
    ``webhooks``: this process listens at ``REELBOT_PUBLIC_URL`` (``reelbot serve``), so providers are asked to
    call back there; a process that does not listen (the terminal) polls at the usual pace instead.
    """
    data_dir: Path = settings.data_dir
    try:
        catalog = load_catalog(models_file=settings.models_file, default_model=settings.default_model)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    prepare_data_dir(data_dir)
    check_database(settings.db_path)
    try:
        store = await Store.open(settings.db_path)
    except StoreError as exc:  # e.g. a schema newer than this reelbot: the store's own one line
        raise StartupError(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise StartupError(f"{settings.db_path} cannot be opened ({exc}).") from None
    try:
        if providers is None:
            providers = ProviderSet.single(provider) if provider is not None else build_providers(settings)
        bot = ReelBot(store=store, providers=providers, catalog=catalog, policy=CorePolicy.from_settings(settings))
        enable_cameos(bot, data_dir=data_dir, admin_verify=settings.cameo_admin_verify, clips_dir=settings.clips_dir)
    except BaseException:
        await store.close()  # an open database thread would keep the process alive
        raise
    worker = Worker(
        bot=bot,
        clips_dir=settings.clips_dir,
        max_in_flight=settings.max_jobs_in_flight,
        max_per_user=settings.max_jobs_per_user,
        render_deadline_s=settings.render_deadline_s,
        max_attempts=settings.max_attempts,
        undelivered_ttl_s=settings.undelivered_ttl_s,
        webhook_base_url=settings.public_url if webhooks else None,
    )
    return App(settings=settings, store=store, providers=providers, catalog=catalog, bot=bot, worker=worker)


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, for log redaction."""
    values = [
        settings.openai_api_key,
        settings.slack_bot_token,
        settings.slack_app_token,
        settings.slack_signing_secret,
        settings.discord_bot_token,
        settings.fal_key,
        settings.openrouter_api_key,
        settings.openrouter_webhook_secret,
    ]
    return [v.get_secret_value() for v in values if v is not None]
