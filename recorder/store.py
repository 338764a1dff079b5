"""The recorder: finalize a call's spool WAV into an encrypted archive + a ``recordings`` row,
and reconcile whatever a crash left behind.

Finalize steps (each followed by a named crash point, see :data:`STEPS`)::

    started        spool file found and settled, nothing written yet
    claimed        row inserted (status pending, reception number, archive path)
    encrypted      <archive>.tmp written (hash + encrypt in one pass) and fsynced
    renamed        tmp renamed over <archive>, folder fsynced
    committed      row: status archived, sha256, key id, size, duration
    spool_removed  spool WAV deleted, spool folder fsynced

A crash anywhere leaves a state :meth:`Recorder.reconcile` completes: a pending row is finished
from the spool file (or, when only the archive survived, by verifying the archive); an archived
row whose spool file is still there has it removed; a spool file without a row is finalized
with what the call log knows; a stale ``.tmp`` is removed; an archive without a row is restored
from its authenticated header. What cannot be recovered is flagged (``missing``, ``damaged``)
and logged, never silently dropped.

Crash injection for tests: ``MADOGUCHI_RECORDER_CRASH_AT=<step>`` makes the process ``os._exit``
right after that step; ``hook=`` gets each step name (raise in it to simulate a failure).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field, fields as dc_fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from provisioning.db import session_factory

from . import archive as ar
from .crypto import (ArchiveError, IntegrityError, KeyConfigError, KeyRing, UnavailableKeys,
                     decrypt_chunks, read_header)
from .models import ReceptionCounter, Recording, RecordingDeletion, RecordingTranscript
from .retention import RecordingPolicy, load_policy

log = logging.getLogger("madoguchi.recorder")

STEPS = ("started", "claimed", "encrypted", "renamed", "committed", "spool_removed")
CRASH_ENV = "MADOGUCHI_RECORDER_CRASH_AT"
_OPERATOR = re.compile(r"^[A-Za-z0-9_.@-]{1,32}$")


class NoRecording(LookupError):
    """There is no spool file (nor a row) for this call."""


@dataclass(frozen=True)
class RecordingMeta:
    """What the call handler knows when the call ends."""
    started_at: datetime
    ended_at: datetime | None = None
    operators: tuple[str, ...] = ()
    queue: str | None = None
    direction: str = "in"
    language: str | None = None
    reception_no: str | None = None     # from Recorder.reception_number() at arrival, else assigned here


@dataclass(frozen=True)
class RecordingRecord:
    id: int
    reception_no: str
    call_id: str
    started_at: datetime
    ended_at: datetime | None
    duration: float | None
    operators: tuple[str, ...]
    queue: str | None
    direction: str
    language: str | None
    retention_class: str
    sha256: str | None
    key_id: str | None
    path: str
    size: int | None
    status: str
    legal_hold: bool
    hold_reason: str | None
    note: str | None
    created_at: datetime
    archived_at: datetime | None

    @classmethod
    def of(cls, row: Recording) -> "RecordingRecord":
        d = {f.name: getattr(row, f.name) for f in dc_fields(cls)}
        d["operators"] = tuple(filter(None, (row.operators or "").split(",")))
        return cls(**d)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dc_fields(self)}
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat(timespec="seconds")
        d["operators"] = list(self.operators)
        return d


@dataclass
class ReconcileReport:
    finalized: list[str] = field(default_factory=list)        # spool -> archive (pending or row-less)
    completed: list[str] = field(default_factory=list)        # archive verified, row marked archived
    spool_removed: list[str] = field(default_factory=list)    # already archived, leftover spool deleted
    temp_removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)         # row rebuilt from an archive header
    deletions_finished: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # flagged: no audio anywhere
    damaged: list[str] = field(default_factory=list)          # flagged: archive fails verification
    active: list[str] = field(default_factory=list)           # spool files still being written

    @property
    def flagged(self) -> list[str]:
        return self.missing + self.damaged

    def lines(self) -> list[str]:
        return [f"{k}: {', '.join(v)}" for k, v in self.__dict__.items() if v]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")


class Recorder:
    """The adapter-facing API (the AGI call handler, later the FreeSWITCH one)."""

    def __init__(self, engine: Engine, recordings_dir: str | Path, spool_dir: str | Path, keys: KeyRing,
                 site_dir: str | Path | None = None, *, policy: RecordingPolicy | None = None,
                 settle_seconds: float = 0.0, hook: Callable[[str], None] | None = None,
                 clock: Callable[[], datetime] = _now):
        self.engine = engine
        self.sessions = session_factory(engine)
        self.recordings_dir = Path(recordings_dir)
        self.spool_dir = Path(spool_dir)
        self.keys = keys
        self.policy = policy or load_policy(site_dir)
        self.settle_seconds = settle_seconds
        self.hook = hook
        self.clock = clock

    # ------------------------------------------------------------ paths and numbers
    def spool_path(self, call_id: str) -> Path:
        """Give this to MixMonitor: ``EXEC MixMonitor <path>,`` (the folder exists after this call)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        return ar.recording_spool_path(self.spool_dir, call_id)

    def archive_path(self, rec: RecordingRecord | Recording) -> Path:
        return self.recordings_dir / rec.path

    def reception_number(self, started_at: datetime) -> str:
        """The next 受付番号 of the site-local day: ``YYYYMMDD-NNNNNN``."""
        _aware("started_at", started_at)
        for _ in range(20):
            try:
                with self.sessions.begin() as s:
                    return self._next_reception(s, started_at)
            except DBIntegrityError:   # another process created the day's counter first
                continue
        raise RuntimeError("could not allocate a reception number")

    def _next_reception(self, s, started_at: datetime) -> str:
        day = started_at.astimezone(self.policy.tz).strftime("%Y%m%d")
        # UPDATE first: takes the write lock at once (SQLite) / the row lock (PostgreSQL)
        res = s.execute(update(ReceptionCounter).where(ReceptionCounter.day == day)
                        .values(last=ReceptionCounter.last + 1))
        if res.rowcount == 0:
            s.add(ReceptionCounter(day=day, last=1))
            s.flush()
            n = 1
        else:
            n = s.scalar(select(ReceptionCounter.last).where(ReceptionCounter.day == day))
        if n > 999_999:
            raise OverflowError(f"more than 999999 reception numbers on {day}")
        return f"{day}-{n:06d}"

    # ------------------------------------------------------------ finalize
    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)
        if os.environ.get(CRASH_ENV) == name:
            os._exit(70)

    async def finalize(self, call_id: str, meta: RecordingMeta) -> RecordingRecord:
        """Archive the call's spool file (blocking work in a thread); idempotent per call id."""
        return await asyncio.to_thread(self.finalize_sync, call_id, meta)

    def finalize_sync(self, call_id: str, meta: RecordingMeta, *, note: str | None = None) -> RecordingRecord:
        ar.check_call_id(call_id)
        self._check_meta(meta)
        spool = ar.recording_spool_path(self.spool_dir, call_id)
        existing = self.get(call_id=call_id)
        if existing is not None and existing.status == "archived":
            self._remove_spool(spool)
            return existing
        if not spool.exists():
            raise NoRecording(f"no recording for call {call_id} ({spool.name} not in the spool folder)")
        self._settle(spool)
        self._step("started")
        rec = existing or self._claim(call_id, meta, note)
        self._step("claimed")
        return self._archive_from_spool(rec, spool)

    def _check_meta(self, meta: RecordingMeta) -> None:
        _aware("started_at", meta.started_at)
        _aware("ended_at", meta.ended_at)
        for op in meta.operators:
            if not _OPERATOR.match(op or ""):
                raise ValueError(f"operator id {op!r} must be 1-32 of A-Z a-z 0-9 _ . @ -")
        if len(",".join(meta.operators)) > 255:
            raise ValueError("too many operators")
        if meta.direction not in ("in", "out"):
            raise ValueError("direction must be in or out")
        if meta.queue is not None and len(meta.queue) > 32 or meta.language is not None and len(meta.language) > 8:
            raise ValueError("queue (32) or language (8) too long")
        if meta.reception_no is not None:
            ar.check_reception_no(meta.reception_no)

    def _settle(self, spool: Path) -> None:
        """Wait until the PBX stopped writing (size unchanged for ``settle_seconds``)."""
        if self.settle_seconds <= 0:
            return
        deadline = time.monotonic() + max(10 * self.settle_seconds, 5.0)
        size = spool.stat().st_size
        while time.monotonic() < deadline:
            time.sleep(self.settle_seconds)
            now = spool.stat().st_size
            if now == size:
                return
            size = now

    def _claim(self, call_id: str, meta: RecordingMeta, note: str | None) -> RecordingRecord:
        """Insert the pending row (and allocate the reception number) in one transaction."""
        for _ in range(20):
            try:
                with self.sessions.begin() as s:
                    no = meta.reception_no or self._next_reception(s, meta.started_at)
                    row = Recording(reception_no=no, call_id=call_id, started_at=meta.started_at,
                                    ended_at=meta.ended_at, operators=",".join(meta.operators) or None,
                                    queue=meta.queue, direction=meta.direction, language=meta.language,
                                    retention_class=self.policy.retention, path=ar.archive_relpath(no, call_id),
                                    status="pending", legal_hold=False, note=note, created_at=self.clock())
                    s.add(row)
                return RecordingRecord.of(row)
            except DBIntegrityError:
                existing = self.get(call_id=call_id)
                if existing is not None:
                    return existing     # a concurrent finalizer claimed it first
                if meta.reception_no is not None and self.get(meta.reception_no) is not None:
                    raise ValueError(f"reception number {meta.reception_no} is already used") from None
                # else: lost the race creating the day's counter; try again
        raise RuntimeError("could not claim the recording")

    def _archive_from_spool(self, rec: RecordingRecord, spool: Path) -> RecordingRecord:
        sha, key_id, size, total = ar.write_archive(spool, self.archive_path(rec), self.keys,
                                                    self._header_meta(rec), self._step)
        done = self._mark_archived(rec.id, sha, key_id, size, (total - 44) / (ar.RATE * ar.WIDTH))
        self._step("committed")
        self._remove_spool(spool)
        self._step("spool_removed")
        log.info("recording %s (call %s) archived", rec.reception_no, rec.call_id)
        return done

    @staticmethod
    def _header_meta(rec) -> dict:
        return {"call_id": rec.call_id, "reception_no": rec.reception_no,
                "started_at": rec.started_at.astimezone(timezone.utc).isoformat()}

    def _mark_archived(self, rec_id: int, sha: str, key_id: str, size: int, duration: float,
                       note: str | None = None) -> RecordingRecord:
        with self.sessions.begin() as s:
            row = s.get(Recording, rec_id, with_for_update=True)
            row.status, row.sha256, row.key_id, row.size = "archived", sha, key_id, size
            row.duration, row.archived_at = round(duration, 3), self.clock()
            if note:
                row.note = note
        return RecordingRecord.of(row)

    def _remove_spool(self, spool: Path) -> bool:
        try:
            spool.unlink()
        except FileNotFoundError:
            return False
        ar.fsync_dir(spool.parent)
        return True

    # ------------------------------------------------------------ reading
    def get(self, reception_no: str | None = None, *, call_id: str | None = None) -> RecordingRecord | None:
        with self.sessions() as s:
            q = select(Recording)
            q = q.where(Recording.reception_no == reception_no) if reception_no else q.where(Recording.call_id == call_id)
            row = s.scalars(q).one_or_none()
            return RecordingRecord.of(row) if row else None

    def open_audio(self, rec: RecordingRecord) -> Iterator[bytes]:
        """The plain archived WAV, chunk by chunk, each verified; the whole file's SHA-256 is
        checked against the row at the end (IntegrityError on any mismatch)."""
        if rec.status != "archived":
            raise ArchiveError(f"recording {rec.reception_no} is {rec.status}, not archived")
        path = self.archive_path(rec)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ArchiveError(f"archive file of {rec.reception_no} is missing ({rec.path})") from None

        def gen():
            h = hashlib.sha256()
            with f:
                for chunk in decrypt_chunks(f, self.keys, {"call_id": rec.call_id,
                                                           "reception_no": rec.reception_no}):
                    h.update(chunk)
                    yield chunk
            if rec.sha256 and h.hexdigest() != rec.sha256:
                raise IntegrityError(f"recording {rec.reception_no}: SHA-256 differs from the stored one")
        return gen()

    def verify(self, rec: RecordingRecord) -> tuple[str, int]:
        """Decrypt the whole archive: (sha256 of the plain WAV, its size)."""
        path = self.archive_path(rec)
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for chunk in decrypt_chunks(f, self.keys, {"call_id": rec.call_id, "reception_no": rec.reception_no}):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    # ------------------------------------------------------------ deletion
    def delete(self, rec: RecordingRecord, *, approved_by: str, reason: str, plan_id: int | None = None,
               now: datetime | None = None) -> None:
        """Delete archive, transcript and row; leave a ``recording_deletions`` row.

        The row is first marked ``deleting`` so an interrupted deletion is finished by reconcile
        (and its archive never restored as an orphan)."""
        with self.sessions.begin() as s:
            s.execute(update(Recording).where(Recording.id == rec.id).values(status="deleting",
                                                                            note=f"{reason} by {approved_by}"[:255]))
        self._finish_delete(rec.id, approved_by=approved_by, reason=reason, plan_id=plan_id, now=now)

    def _finish_delete(self, rec_id: int, *, approved_by: str, reason: str, plan_id: int | None,
                       now: datetime | None) -> None:
        with self.sessions() as s:
            row = s.get(Recording, rec_id)
            if row is None:
                return
            path = self.recordings_dir / row.path
        path.unlink(missing_ok=True)
        path.with_name(path.name + ar.TMP_SUFFIX).unlink(missing_ok=True)
        if path.parent.exists():
            ar.fsync_dir(path.parent)
        with self.sessions.begin() as s:
            row = s.get(Recording, rec_id, with_for_update=True)
            if row is None:
                return
            s.add(RecordingDeletion(deleted_at=now or self.clock(), reception_no=row.reception_no,
                                    call_id=row.call_id, started_at=row.started_at, sha256=row.sha256,
                                    plan_id=plan_id, approved_by=approved_by[:255], reason=reason[:64]))
            s.execute(delete(RecordingTranscript).where(RecordingTranscript.recording_id == row.id))
            s.execute(delete(Recording).where(Recording.id == row.id))
        log.warning("recording %s (call %s) deleted: %s, approved by %s", row.reception_no, row.call_id,
                    reason, approved_by)

    # ------------------------------------------------------------ reconcile
    def reconcile(self, now: datetime | None = None, *, stale_seconds: float = 120.0,
                  verify: bool = False) -> ReconcileReport:
        """Complete or flag everything a crash left behind. Run at startup (before serving).

        ``stale_seconds``: spool and temp files modified more recently are left alone (a call
        still being recorded). ``verify``: also decrypt every archived recording.
        """
        now = now or self.clock()
        cutoff = now.timestamp() - stale_seconds
        rep = ReconcileReport()
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.recordings_dir.mkdir(parents=True, exist_ok=True, mode=0o750)

        # 1. half-written temp files: always regenerable (from the spool) or already renamed
        for tmp in self.recordings_dir.glob(f"[0-9][0-9][0-9][0-9]/[0-9][0-9]/*{ar.ARCHIVE_SUFFIX}{ar.TMP_SUFFIX}"):
            if tmp.stat().st_mtime <= cutoff:
                tmp.unlink(missing_ok=True)
                rep.temp_removed.append(tmp.name)

        # 2. rows that are not plainly archived
        with self.sessions() as s:
            rows = [RecordingRecord.of(r) for r in s.scalars(select(Recording).order_by(Recording.id))]
        for rec in rows:
            spool = ar.recording_spool_path(self.spool_dir, rec.call_id)
            archive = self.archive_path(rec)
            if rec.status == "deleting":
                self._finish_delete(rec.id, approved_by="reconcile", reason="purge (completed by reconcile)",
                                    plan_id=None, now=now)
                rep.deletions_finished.append(rec.reception_no)
            elif rec.status == "archived":
                if not archive.exists():
                    if spool.exists():
                        self._refinalize(rec, spool, rep, "archive file was missing; re-archived from spool")
                    else:
                        self._flag(rec, "missing", "archive file is missing", rep.missing)
                    continue
                if spool.exists() and self._remove_spool(spool):
                    rep.spool_removed.append(rec.reception_no)
                if verify:
                    try:
                        sha, _ = self.verify(rec)
                        if sha != rec.sha256:
                            raise IntegrityError("SHA-256 differs from the stored one")
                    except ArchiveError as e:
                        self._flag(rec, "damaged", str(e), rep.damaged)
            elif rec.status in ("pending", "missing", "damaged"):
                if spool.exists():
                    if spool.stat().st_mtime > cutoff:
                        rep.active.append(rec.call_id)
                        continue
                    self._refinalize(rec, spool, rep, None)
                elif archive.exists():
                    try:
                        sha, n = self.verify(rec)
                    except ArchiveError as e:
                        self._flag(rec, "damaged", f"archive fails verification: {e}", rep.damaged)
                        continue
                    self._mark_archived(rec.id, sha, self._key_id_of(archive), archive.stat().st_size,
                                        (n - 44) / (ar.RATE * ar.WIDTH), note="completed by reconcile")
                    rep.completed.append(rec.reception_no)
                elif rec.status == "pending":
                    self._flag(rec, "missing", "no spool file and no archive", rep.missing)

        # 3. spool files nobody finalized
        known = {r.call_id for r in rows}
        for spool in sorted(self.spool_dir.glob("*.wav")):
            call_id = spool.stem
            if call_id in known:
                continue
            try:
                ar.check_call_id(call_id)
            except ValueError:
                log.warning("recording spool: ignoring %s (not named after a PBX uniqueid)", spool.name)
                continue
            if spool.stat().st_mtime > cutoff:
                rep.active.append(call_id)
                continue
            try:
                self.finalize_sync(call_id, self._meta_from_call_log(call_id, spool),
                                   note="finalized by reconcile")
                rep.finalized.append(call_id)
            except (ar.SpoolError, ArchiveError, ValueError) as e:
                log.error("recording spool %s cannot be archived: %s", spool.name, e)
                rep.damaged.append(call_id)

        # 4. archives nobody knows about
        with self.sessions() as s:
            paths = set(s.scalars(select(Recording.path)))
            deleted = set(s.scalars(select(RecordingDeletion.call_id)))
        for path in sorted(self.recordings_dir.glob(f"[0-9][0-9][0-9][0-9]/[0-9][0-9]/*{ar.ARCHIVE_SUFFIX}")):
            rel = path.relative_to(self.recordings_dir).as_posix()
            if rel not in paths:
                self._restore(path, rel, deleted, rep)
        for line in rep.lines():
            log.warning("recording reconcile: %s", line)
        return rep

    def _refinalize(self, rec: RecordingRecord, spool: Path, rep: ReconcileReport, note: str | None) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Recording).where(Recording.id == rec.id).values(status="pending", note=note))
        try:
            self._archive_from_spool(RecordingRecord.of(self._row(rec.id)), spool)
            rep.finalized.append(rec.call_id)
        except (ar.SpoolError, ArchiveError) as e:
            self._flag(rec, "damaged", f"spool file unusable: {e}", rep.damaged)

    def _row(self, rec_id: int) -> Recording:
        with self.sessions() as s:
            return s.get(Recording, rec_id)

    def _flag(self, rec: RecordingRecord, status: str, note: str, into: list) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Recording).where(Recording.id == rec.id).values(status=status, note=note[:255]))
        log.error("recording %s (call %s) flagged %s: %s", rec.reception_no, rec.call_id, status, note)
        into.append(rec.reception_no)

    def _key_id_of(self, path: Path) -> str:
        with open(path, "rb") as f:
            return read_header(f).key_id

    def _meta_from_call_log(self, call_id: str, spool: Path) -> RecordingMeta:
        from cti.calls import Call
        with self.sessions() as s:
            call = s.scalars(select(Call).where(Call.call_id == call_id)).one_or_none()
        if call is not None:
            return RecordingMeta(started_at=call.started_at, ended_at=call.ended_at,
                                 operators=(call.agent,) if call.agent else (), queue=call.queue,
                                 language=call.language)
        try:
            with open(spool, "rb") as f:
                secs = ar.probe_wav(f, spool.stat().st_size).seconds
        except (OSError, ar.SpoolError):
            secs = 0.0
        end = datetime.fromtimestamp(spool.stat().st_mtime, timezone.utc)
        return RecordingMeta(started_at=end - timedelta(seconds=secs), ended_at=end)

    def _restore(self, path: Path, rel: str, deleted: set[str], rep: ReconcileReport) -> None:
        try:
            with open(path, "rb") as f:
                meta = read_header(f).meta
            call_id = ar.check_call_id(meta.get("call_id"))
            no = ar.check_reception_no(meta.get("reception_no"))
            started = datetime.fromisoformat(meta["started_at"])
        except (ArchiveError, ValueError, KeyError, TypeError, OSError) as e:
            log.error("recording archive %s has no row and an unreadable header: %s", rel, e)
            rep.damaged.append(rel)
            return
        if call_id in deleted:   # an interrupted purge: finish it, never resurrect
            path.unlink(missing_ok=True)
            rep.deletions_finished.append(no)
            return
        row = Recording(reception_no=no, call_id=call_id, started_at=started, direction="in",
                        retention_class=self.policy.retention, path=rel, status="pending", legal_hold=False,
                        note="restored from archive header", created_at=self.clock())
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except DBIntegrityError:
            log.error("recording archive %s: reception number or call id already used by another row", rel)
            rep.damaged.append(rel)
            return
        rec = RecordingRecord.of(row)
        try:
            sha, n = self.verify(rec)
        except ArchiveError as e:
            self._flag(rec, "damaged", f"restored archive fails verification: {e}", rep.damaged)
            return
        self._mark_archived(rec.id, sha, self._key_id_of(path), path.stat().st_size,
                            (n - 44) / (ar.RATE * ar.WIDTH))
        rep.restored.append(no)


KEY_FILE = "recording.keys"


def recorder_from_config(config, site_dir: str | Path | None = None, keys: KeyRing | None = None,
                         *, keys_required: bool = True, **kwargs) -> Recorder:
    """The recorder of a deployment: database from the config (migrated), archives in
    ``storage.recordings_dir``, spool in ``<recordings_dir>/spool`` (where MixMonitor writes),
    keys from ``MADOGUCHI_RECORDING_KEYS`` or ``<data_dir>/recording.keys``, policy from
    ``<site>/recording.toml`` (``site_dir`` or the config's ``site.dir``)."""
    from agi.app import database_url
    from provisioning.db import make_engine, upgrade
    url = database_url(config)
    upgrade(url)
    if keys is None:
        try:
            keys = KeyRing.load(Path(config.storage.data_dir) / KEY_FILE)
        except KeyConfigError as e:
            if keys_required:
                raise
            keys = UnavailableKeys(e)
    recordings = Path(config.storage.recordings_dir)
    return Recorder(make_engine(url), recordings, recordings / "spool", keys,
                    site_dir if site_dir is not None else config.site.dir, **kwargs)
