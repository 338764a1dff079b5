"""Database plumbing: declarative Base, engines, Alembic upgrades run from code.

The Alembic environment lives inside the package (``provisioning/migrations``) and its Config
is built here, so upgrades work from an installed wheel without an alembic.ini.
"""
from __future__ import annotations

from datetime import timezone
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import DateTime, TypeDecorator

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    pass


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message names it (password masked)."""


def _show(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def make_engine(url: str | URL, **kwargs) -> Engine:
    url = make_url(url)
    if url.get_backend_name() == "postgresql":
        # fail fast instead of hanging for the OS TCP timeout when the server is down
        kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", 5)
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")      # off by default in SQLite
            cur.execute("PRAGMA busy_timeout=5000")    # AGI sessions write concurrently
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")  # readers (reports) do not block the call log
            cur.close()
    return engine


def check_connection(engine: Engine) -> None:
    """Open one connection or raise DatabaseUnavailable with a readable reason."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise DatabaseUnavailable(f"cannot connect to database {_show(engine.url)}: {reason}") from None


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str | URL | Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`; safe to run repeatedly."""
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            try:
                Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DatabaseUnavailable(f"cannot create folder for {_show(engine.url)}: {e.strerror}") from None
        check_connection(engine)
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    finally:
        if engine is not url:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def session_factory(engine: Engine) -> sessionmaker:
    # expire_on_commit=False: rows stay readable after the session closes
    return sessionmaker(engine, expire_on_commit=False)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, on SQLite (which has no time zones) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
