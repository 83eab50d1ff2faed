"""Bring the schema to the newest Alembic revision, safely from many processes.

The upgrade runs in one transaction that first takes a lock every opener
waits on: `pg_advisory_xact_lock` on PostgreSQL, the `BEGIN IMMEDIATE`
writer lock on SQLite (see engine.py). The second opener then finds the
schema current and does nothing. Both backends have transactional DDL, so a
crash mid-upgrade leaves the previous schema.
"""

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from .migrations import VERSION_TABLE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADVISORY_LOCK_KEY = zlib.crc32(b"dbrx_serve.jobstore.migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _lock_postgresql(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def _lock_sqlite(connection: Connection) -> None:
    """Nothing to do: the transaction began with BEGIN IMMEDIATE."""


MIGRATION_LOCKS = {"postgresql": _lock_postgresql, "sqlite": _lock_sqlite}


def upgrade(engine: Engine) -> None:
    with engine.begin() as connection:
        MIGRATION_LOCKS[engine.dialect.name](connection)
        if current_revision(connection) != head_revision():
            command.upgrade(alembic_config(connection), "head")
