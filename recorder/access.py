"""Who may do what with recordings, and the audit trail of every attempt.

Users and roles live in the database (``users``). Every action names its user; the role is
checked each time against the current row (a disabled or unknown user is refused), and every
attempt lands in ``recording_access``: one row per search result shown, playback, export,
hold, purge step and user change, refused ones included.

| action | admin | supervisor | operator |
| --- | --- | --- | --- |
| search, play | all | all | only calls they took part in |
| export (plain WAV + JSON) | yes | no | no |
| hold / release, purge plan / approve, users, transcribe, reconcile, audit | yes | no | no |
| stats | yes | yes | no |

The first user of an empty ``users`` table can be created without an acting user and must be an
admin (bootstrap); after that only an admin adds users.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from . import archive as ar
from .crypto import ArchiveError, decrypt_bytes
from .models import ROLES, Recording, RecordingAccess, RecordingTranscript, User
from .retention import PurgePlanView, approve_plan, due_at, get_plan, make_plan, valid_class
from .store import Recorder, RecordingRecord

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

PERMISSIONS = {
    "search": ("admin", "supervisor", "operator"),
    "play": ("admin", "supervisor", "operator"),
    "export": ("admin",),
    "hold": ("admin",),
    "purge": ("admin",),
    "users": ("admin",),
    "transcribe": ("admin",),
    "reconcile": ("admin",),
    "audit": ("admin",),
    "stats": ("admin", "supervisor"),
}


class AccessDenied(PermissionError):
    pass


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str
    enabled: bool
    created_at: datetime
    created_by: str | None


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    user: str
    action: str
    reception_no: str | None
    allowed: bool
    detail: str | None


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def normalize_text(s: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", s).casefold()).strip()


class Access:
    def __init__(self, recorder: Recorder, clock=None):
        self.rec = recorder
        self.sessions = recorder.sessions
        self.clock = clock or recorder.clock

    # ------------------------------------------------------------ audit and checks
    def _audit(self, user: str | None, action: str, allowed: bool, reception_no: str | None = None,
               detail: str | None = None) -> None:
        with self.sessions.begin() as s:
            s.add(RecordingAccess(at=self.clock(), user=(user or "-")[:64], action=action[:16],
                                  reception_no=reception_no, allowed=allowed,
                                  detail=detail[:255] if detail else None))

    def _user(self, name: str | None) -> User | None:
        if not name or not _NAME.match(name):
            return None
        with self.sessions() as s:
            return s.scalars(select(User).where(User.name == name)).one_or_none()

    def require(self, user: str | None, action: str, reception_no: str | None = None,
                detail: str | None = None) -> User:
        """The acting user's row if the role allows ``action``; otherwise audit and raise."""
        row = self._user(user)
        why = None
        if row is None:
            why = f"unknown user {user!r}" if user else "no user given (--user or MADOGUCHI_USER)"
        elif not row.enabled:
            why = f"user {user} is disabled"
        elif row.role not in PERMISSIONS[action]:
            why = f"{action} needs role {' or '.join(PERMISSIONS[action])}; {user} is {row.role}"
        if why:
            self._audit(user, action, False, reception_no, f"refused: {why}" + (f"; {detail}" if detail else ""))
            raise AccessDenied(why)
        return row

    def _may_see(self, user: User, rec: RecordingRecord) -> bool:
        return user.role != "operator" or user.name in rec.operators

    # ------------------------------------------------------------ users
    def add_user(self, name: str, role: str, *, by: str | None) -> UserRecord:
        if not _NAME.match(name or ""):
            raise ValueError("user name must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with self.sessions() as s:
            empty = s.scalar(select(func.count()).select_from(User)) == 0
        if empty:
            if role != "admin":
                raise ValueError("the first user must be an admin")
            self._audit(by or name, "user-add", True, None, f"bootstrap {name} as {role}")
        else:
            self.require(by, "users", detail=f"add {name} as {role}")
            self._audit(by, "user-add", True, None, f"{name} as {role}")
        row = User(name=name, role=role, enabled=True, created_at=self.clock(), created_by=by)
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except IntegrityError:
            raise ValueError(f"user {name} already exists") from None
        return UserRecord(row.name, row.role, row.enabled, row.created_at, row.created_by)

    def set_enabled(self, name: str, enabled: bool, *, by: str | None) -> None:
        self.require(by, "users", detail=f"{'enable' if enabled else 'disable'} {name}")
        with self.sessions.begin() as s:
            n = s.execute(update(User).where(User.name == name).values(enabled=enabled)).rowcount
        if not n:
            raise ValueError(f"no user {name}")
        self._audit(by, "user-enable" if enabled else "user-disable", True, None, name)

    def users(self, *, by: str | None) -> list[UserRecord]:
        self.require(by, "users", detail="list")
        with self.sessions() as s:
            return [UserRecord(u.name, u.role, u.enabled, u.created_at, u.created_by)
                    for u in s.scalars(select(User).order_by(User.name))]

    # ------------------------------------------------------------ search
    def _day_start(self, d: date) -> datetime:
        return datetime.combine(d, time(0), tzinfo=self.rec.policy.tz).astimezone(timezone.utc)

    def search(self, user: str | None, *, date_from: date | None = None, date_to: date | None = None,
               operator: str | None = None, queue: str | None = None, reception_no: str | None = None,
               text: str | None = None, limit: int = 100) -> list[RecordingRecord]:
        """Recordings matching every criterion, oldest first; dates are site-local days (inclusive)."""
        criteria = ", ".join(f"{k}={v}" for k, v in (("from", date_from), ("to", date_to), ("operator", operator),
                                                    ("queue", queue), ("reception", reception_no),
                                                    ("text", text)) if v is not None)
        u = self.require(user, "search", detail=criteria or "all")
        if not 0 < limit <= 10_000:
            raise ValueError("limit must be 1-10000")
        q = select(Recording).where(Recording.status != "deleting")
        if date_from:
            q = q.where(Recording.started_at >= self._day_start(date_from))
        if date_to:
            q = q.where(Recording.started_at < self._day_start(date_to + timedelta(days=1)))
        if queue:
            q = q.where(Recording.queue == queue)
        if reception_no:
            q = q.where(Recording.reception_no == reception_no)
        for op in filter(None, [operator, u.name if u.role == "operator" else None]):
            e = _like_escape(op)
            q = q.where(or_(Recording.operators == op, Recording.operators.like(f"{e},%", escape="\\"),
                            Recording.operators.like(f"%,{e}", escape="\\"),
                            Recording.operators.like(f"%,{e},%", escape="\\")))
        q = q.order_by(Recording.started_at, Recording.id)
        if text:
            needle = normalize_text(text)
            q = q.join(RecordingTranscript, RecordingTranscript.recording_id == Recording.id)
            out = []
            with self.sessions() as s:
                for row, t in s.execute(q.add_columns(RecordingTranscript.ciphertext)):
                    if needle in normalize_text(self._transcript_text(row, t)):
                        out.append(RecordingRecord.of(row))
                        if len(out) >= limit:
                            break
        else:
            with self.sessions() as s:
                out = [RecordingRecord.of(r) for r in s.scalars(q.limit(limit))]
        for r in out:
            self._audit(u.name, "search", True, r.reception_no, criteria or "all")
        if not out:
            self._audit(u.name, "search", True, None, f"no result; {criteria or 'all'}")
        return out

    def _transcript_text(self, row: Recording, blob: bytes) -> str:
        return decrypt_bytes(blob, self.rec.keys, {"call_id": row.call_id, "reception_no": row.reception_no}
                             ).decode("utf-8")

    def transcript(self, rec: RecordingRecord) -> str | None:
        with self.sessions() as s:
            t = s.get(RecordingTranscript, rec.id)
            if t is None:
                return None
            row = s.get(Recording, rec.id)
            return self._transcript_text(row, t.ciphertext)

    # ------------------------------------------------------------ playback and export
    def _target(self, user: str | None, action: str, reception_no: str) -> RecordingRecord:
        u = self.require(user, action, reception_no)
        rec = self.rec.get(reception_no)
        if rec is None:
            self._audit(user, action, False, reception_no, "no such recording")
            raise LookupError(f"no recording {reception_no}")
        if not self._may_see(u, rec):
            self._audit(user, action, False, reception_no, "refused: operators may only use their own calls")
            raise AccessDenied(f"{user} may only {action} recordings of calls they took part in")
        return rec

    def play(self, user: str | None, reception_no: str, out: BinaryIO) -> RecordingRecord:
        """Decrypt the recording as a stream of WAV bytes into ``out``."""
        rec = self._target(user, "play", reception_no)
        try:
            for chunk in self.rec.open_audio(rec):
                out.write(chunk)
        except ArchiveError as e:
            self._audit(user, "play", False, reception_no, f"failed: {e}")
            raise
        self._audit(user, "play", True, reception_no)
        return rec

    def export(self, user: str | None, reception_no: str, out_dir: str | Path) -> tuple[Path, Path]:
        """Admin only: a plain WAV and a metadata JSON in ``out_dir`` (written atomically)."""
        rec = self._target(user, "export", reception_no)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        local = rec.started_at.astimezone(self.rec.policy.tz)
        stem = f"{rec.reception_no}_{local:%Y%m%d-%H%M%S}_{'-'.join(rec.operators) or 'none'}"
        wav, meta = out_dir / f"{stem}.wav", out_dir / f"{stem}.json"
        tmp = wav.with_name(wav.name + ".part")
        try:
            with open(tmp, "wb") as f:
                for chunk in self.rec.open_audio(rec):
                    f.write(chunk)
            os.replace(tmp, wav)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, ArchiveError):
                self._audit(user, "export", False, reception_no, f"failed: {e}")
            raise
        d = rec.as_dict()
        for k in ("id", "path", "note", "key_id"):
            d.pop(k)
        d["started_at_local"] = local.isoformat(timespec="seconds")
        d.update(exported_by=user, exported_at=self.clock().isoformat(timespec="seconds"),
                 file=wav.name, format="WAV PCM 8 kHz mono 16-bit", transcript=self.transcript(rec))
        meta.write_text(json.dumps(d, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        self._audit(user, "export", True, reception_no, f"to {wav}"[:255])
        return wav, meta

    # ------------------------------------------------------------ legal hold
    def hold(self, user: str | None, reception_no: str, reason: str, on: bool = True) -> RecordingRecord:
        self._target(user, "hold", reception_no)
        if on and not reason:
            raise ValueError("a legal hold needs a reason")
        with self.sessions.begin() as s:
            s.execute(update(Recording).where(Recording.reception_no == reception_no)
                      .values(legal_hold=on, hold_reason=reason[:255] if on else None))
        self._audit(user, "hold" if on else "release", True, reception_no, reason)
        return self.rec.get(reception_no)

    # ------------------------------------------------------------ purge
    def purge_plan(self, user: str | None, now: datetime) -> PurgePlanView:
        self.require(user, "purge", detail="plan")
        plan = make_plan(self.rec, by=user, now=now)
        self._audit(user, "purge-plan", True, None, f"plan {plan.id}: {len(plan.items)} due at {now.isoformat()}")
        return plan

    def purge_show(self, user: str | None, plan_id: int) -> PurgePlanView:
        self.require(user, "purge", detail=f"show plan {plan_id}")
        return get_plan(self.rec, plan_id)

    def purge_approve(self, user: str | None, plan_id: int, now: datetime) -> PurgePlanView:
        self.require(user, "purge", detail=f"approve plan {plan_id}")

        def deleted(item):
            self._audit(user, "delete", True, item.reception_no, f"plan {plan_id}, due {item.due_at.isoformat()}")
        plan = approve_plan(self.rec, plan_id, by=user, now=now, on_delete=deleted)
        self._audit(user, "purge-approve", True, None, f"plan {plan_id}: {plan.status}, "
                                                       f"{len(plan.approved_by)}/{plan.approvers_needed} approvals")
        return plan

    # ------------------------------------------------------------ audit trail
    def audit_log(self, user: str | None, limit: int = 100) -> list[AuditRecord]:
        self.require(user, "audit")
        with self.sessions() as s:
            rows = s.scalars(select(RecordingAccess).order_by(RecordingAccess.id.desc()).limit(limit)).all()
            return [AuditRecord(r.at, r.user, r.action, r.reception_no, r.allowed, r.detail) for r in rows]

    def keep_until(self, rec: RecordingRecord) -> datetime | None:
        if not valid_class(rec.retention_class):
            return None
        return due_at(rec.started_at, rec.retention_class, self.rec.policy.tz)
