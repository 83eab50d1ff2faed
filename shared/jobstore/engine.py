"""One SQLAlchemy engine per store, tuned per backend.

SQLite: pysqlite's own transaction handling is switched off so that we emit
`BEGIN IMMEDIATE` ourselves: every write transaction takes the database's
single writer lock up front (no lock upgrades, no deadlocks), waits up to
the busy timeout for it, and reads run in WAL snapshots beside the writer.
Read-only sessions ask for a plain deferred `BEGIN` via an execution option.
"""

import logging
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from .config import StoreConfig

log = logging.getLogger("dbrx_serve.jobstore")
BEGIN_OPTION = "jobstore_begin"  # execution option: the SQLite BEGIN statement to emit


def make_engine(config: StoreConfig) -> Engine:
    return ENGINE_MAKERS[config.backend](config)


def _sqlite_engine(config: StoreConfig) -> Engine:
    Path(make_url(config.database_url).database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(config.database_url, pool_size=config.pool_size,
                           connect_args={"timeout": config.busy_timeout_seconds})
    timeout_ms = int(config.busy_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        for pragma in (f"busy_timeout = {timeout_ms}", "synchronous = NORMAL", "foreign_keys = ON"):
            dbapi_connection.execute(f"PRAGMA {pragma}")
        _enter_wal_mode(dbapi_connection, config.busy_timeout_seconds)

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql(connection.get_execution_options().get(BEGIN_OPTION, "BEGIN IMMEDIATE"))

    return engine


def _enter_wal_mode(dbapi_connection, timeout_seconds: float) -> None:
    """Switch the file to WAL (persistent, so usually already done).

    The switch needs the file to itself, and SQLite answers "database is
    locked" at once, without calling the busy handler, while another
    connection is mid-write; that happens when several processes open a new
    store together. Retry until the busy timeout. A file system without WAL
    support leaves the old mode, which still works, one writer at a time.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                mode = dbapi_connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    log.warning("the job store stays in %r journal mode: its file system lacks WAL", mode)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _postgresql_engine(config: StoreConfig) -> Engine:
    return create_engine(config.database_url, pool_size=config.pool_size, pool_pre_ping=True)


ENGINE_MAKERS = {"sqlite": _sqlite_engine, "postgresql": _postgresql_engine}


def reader(engine: Engine) -> Engine:
    """The same pool, but SQLite read transactions do not take the writer lock."""
    return engine.execution_options(**{BEGIN_OPTION: "BEGIN"})
