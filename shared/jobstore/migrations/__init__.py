"""Alembic migrations of the job store, run in code by `jobstore.migrate` (no alembic.ini)."""

VERSION_TABLE = "jobstore_alembic_version"  # our own, so other Alembic users of the database don't collide
