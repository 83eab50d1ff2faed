"""Alembic migrations: applied when a store opens, safely from several processes
at once, and producing exactly the schema the models describe."""

import multiprocessing
import sqlite3
import threading

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dbrx_serve.shared.jobstore import JobStore, StoreConfig
from dbrx_serve.shared.jobstore.migrate import current_revision, head_revision
from dbrx_serve.shared.jobstore.models import Base
from tests.shared.jobstore.jobstore_procs import KIND, open_and_submit

SPAWN = multiprocessing.get_context("spawn")
NUM_OPENERS = 4


def join_all(processes, timeout=120):
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    return [process.exitcode for process in processes]


def test_migrations_run_concurrently_from_several_processes(database_url):
    barrier = SPAWN.Barrier(NUM_OPENERS)
    openers = [SPAWN.Process(target=open_and_submit, args=(database_url, barrier, n)) for n in range(NUM_OPENERS)]
    assert join_all(openers) == [0] * NUM_OPENERS
    with JobStore(StoreConfig(database_url)) as store:
        assert sorted(j.spec["n"] for j in store.list_jobs(KIND)) == [0, 1, 2, 3]
        with store.engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            assert {"jobs", "job_events"} <= set(inspect(connection).get_table_names())


def test_the_migrations_build_the_schema_the_models_describe(store):
    """A model change without a new Alembic revision fails here."""
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(context, Base.metadata) if "alembic_version" not in repr(d)]
    assert diffs == []


def test_reopening_a_current_store_changes_nothing(store, database_url):
    job = store.submit(KIND, {"n": 1})
    with JobStore(StoreConfig(database_url)) as again:
        assert again.get(job.id) == job
        with again.engine.connect() as connection:
            assert current_revision(connection) == head_revision() == "0001"


def test_a_new_sqlite_store_waits_for_another_process_holding_the_file(tmp_path):
    """Switching a new file to WAL while another connection is mid-write: SQLite refuses
    at once ("database is locked") rather than wait, so opening retries until the busy timeout."""
    path = tmp_path / "jobs.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    threading.Timer(0.3, holder.commit).start()
    with JobStore(StoreConfig(f"sqlite:///{path}", busy_timeout_seconds=10)) as store:
        assert store.submit(KIND, {"n": 1}).spec == {"n": 1}
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    holder.close()
