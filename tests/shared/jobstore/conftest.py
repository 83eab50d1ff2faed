"""Job store fixtures: every test runs on a fresh SQLite file, and on a fresh
PostgreSQL schema when DBRX_TEST_POSTGRES_URL is set (dropped afterwards)."""

import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dbrx_serve.shared.jobstore import JobStore, StoreConfig

POSTGRES_URL = os.environ.get("DBRX_TEST_POSTGRES_URL")


def schema_url(url: str, schema: str) -> str:
    """The same database, with `schema` as the only search path: tables land there."""
    return make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


def postgres_schema(url: str):
    schema = f"jobstore_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(url, schema)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    elif not POSTGRES_URL:
        pytest.skip("set DBRX_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    else:
        yield from postgres_schema(POSTGRES_URL)


@pytest.fixture
def store(database_url):
    with JobStore(StoreConfig(database_url)) as opened:
        yield opened
