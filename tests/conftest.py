"""Shared fixtures.

Database tests run against SQLite and PostgreSQL (`db_url` is parametrised). PostgreSQL is
``postgresql+psycopg://postgres@127.0.0.1:5432/test`` unless MADOGUCHI_TEST_PG_URL says
otherwise; each test gets its own schema (via search_path) so parallel runs never collide.
Unreachable PostgreSQL skips those tests locally but fails them when CI is set.
"""
from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

PG_URL = os.environ.get("MADOGUCHI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_admin_url() -> URL:
    url = make_url(PG_URL)
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except Exception as e:  # any driver error means "no usable server"
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
        msg = f"PostgreSQL not reachable at {url.render_as_string(hide_password=True)}: {reason}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (required when CI is set)")
        pytest.skip(msg + " (set MADOGUCHI_TEST_PG_URL; CI=1 turns this skip into a failure)")
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """URL of an empty database (no tables)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    admin = request.getfixturevalue("pg_admin_url")
    schema = f"madoguchi_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield admin.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def db_engine(db_url):
    """An engine on a migrated database."""
    from provisioning.db import make_engine, upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()
