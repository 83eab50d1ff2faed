"""Alembic's entry point: runs on the connection `jobstore.migrate` hands over,
inside the transaction that already holds the migration lock."""

from alembic import context

from dbrx_serve.shared.jobstore.migrations import VERSION_TABLE
from dbrx_serve.shared.jobstore.models import Base

if context.is_offline_mode():
    raise SystemExit("the job store migrates online only: open a JobStore, it upgrades itself")

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata,
                  version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
