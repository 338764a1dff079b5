import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from cti.calls import CallStore
from provisioning.db import Base, DatabaseUnavailable, MIGRATIONS, current_revision, make_engine, upgrade

KEY = b"k" * 32
JST = timezone(timedelta(hours=9))


def test_upgrade_on_empty_db_is_idempotent(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no alembic.ini anywhere near: config is built in code
    upgrade(db_url)
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
        assert heads == [current_revision(engine)]
        # the migrations build exactly what the models declare: no drift between the two
        import acd.queue_log, cti.calls, cti.modes, recorder.models  # noqa: F401  (register their tables on Base.metadata)
        for table in Base.metadata.tables.values():
            assert {c["name"] for c in inspect(engine).get_columns(table.name)} == set(table.columns.keys()), table.name
        cols = {c["name"] for c in inspect(engine).get_columns("calls")}
        assert {"call_id", "caller_hash", "started_at", "ivr_path", "outcome", "hangup_cause"} <= cols
        assert "caller" not in cols and "caller_number" not in cols
    finally:
        engine.dispose()
    assert MIGRATIONS.is_dir() and (MIGRATIONS / "env.py").exists()


def test_call_lifecycle(db_engine):
    store = CallStore(db_engine, caller_key=KEY)
    t0 = datetime(2025, 8, 1, 8, 0, 5, tzinfo=JST)
    store.start("1722466805.1", "0223984894", "PJSIP/ntt-00000001", caller="09012345678", started_at=t0)
    store.update("1722466805.1", ivr_path="main>1>general", language="ja", queue="general")
    store.update("1722466805.1", agent="op1001", answered_at=t0 + timedelta(seconds=40))
    done = store.finish("1722466805.1", "answered", hangup_cause="16", ended_at=t0 + timedelta(minutes=5))
    assert done.outcome == "answered" and done.agent == "op1001"
    got = store.get("1722466805.1")
    assert got == done
    assert got.started_at == t0 and got.started_at.tzinfo == timezone.utc
    assert got.ended_at - got.answered_at == timedelta(minutes=4, seconds=20)
    assert store.get("nope") is None


def test_caller_number_is_never_stored(db_engine):
    store = CallStore(db_engine, caller_key=KEY)
    rec = store.start("c1", "0223984894", "PJSIP/x-1", caller="+81 90-1234-5678")
    other = store.start("c2", "0223984894", "PJSIP/x-2", caller="09012345678")
    assert rec.caller_hash == other.caller_hash  # same person, different formats
    assert rec.caller_hash == hmac.new(KEY, b"09012345678", hashlib.sha256).hexdigest()
    with db_engine.connect() as conn:
        dump = repr(conn.execute(text("SELECT * FROM calls")).all())
    assert "1234" not in dump and "5678" not in dump
    anon = CallStore(db_engine)  # no key: nothing at all
    assert anon.start("c3", "0223984894", "PJSIP/x-3", caller="09012345678").caller_hash is None
    assert store.start("c4", "0223984894", "PJSIP/x-4", caller="anonymous").caller_hash is None


def test_failure_paths(db_engine):
    store = CallStore(db_engine, caller_key=KEY)
    with pytest.raises(KeyError):
        store.update("missing", queue="general")
    with pytest.raises(KeyError):
        store.finish("missing", "abandoned")
    store.start("c1", "0223984894", "PJSIP/x-1")
    with pytest.raises(ValueError, match="already exists"):
        store.start("c1", "0223984894", "PJSIP/x-1")
    with pytest.raises(ValueError, match="ivr_path"):
        store.update("c1", ivr_path="main>" * 100)
    with pytest.raises(ValueError, match="call_id"):
        store.start("x" * 65, "0223984894", "PJSIP/x-1")
    with pytest.raises(ValueError, match="outcome"):
        store.finish("c1", "exploded")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.update("c1", answered_at=datetime(2025, 8, 1, 8, 0))
    with pytest.raises(TypeError):
        store.update("c1", caller_hash="forged")
    with pytest.raises(ValueError):
        CallStore(db_engine, caller_key=b"short")
    assert store.get("c1").outcome is None  # nothing half-applied


def test_list_newest_first(db_engine):
    store = CallStore(db_engine)
    base = datetime(2025, 8, 1, tzinfo=timezone.utc)
    for i in range(5):
        store.start(f"c{i}", "0223984894", f"PJSIP/x-{i}", started_at=base + timedelta(minutes=i))
    assert [c.call_id for c in store.list(limit=3)] == ["c4", "c3", "c2"]
    assert len(store.list()) == 5


def test_sqlite_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_unreachable_postgres_gives_clear_error():
    with pytest.raises(DatabaseUnavailable) as e:
        upgrade("postgresql+psycopg://madoguchi:hunter2@127.0.0.1:1/nowhere")
    msg = str(e.value)
    assert "cannot connect to database" in msg and "127.0.0.1:1" in msg
    assert "hunter2" not in msg


def test_unopenable_sqlite_gives_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailable, match="cannot"):
        upgrade(f"sqlite:///{blocker / 'sub' / 'db.sqlite3'}")
