"""Retention per site: the policy file, due dates, and the two-step purge (plan, then approve).

``<site>/recording.toml`` (read here, not by provisioning/site.py; problems are reported with
file, line and field like every other site file)::

    retention = "end-of-next-month"   # Sendai 翌月末まで; Kawasaki "6-months"; "N-days"; "keep"
    approvers = 1                     # distinct admins who must approve a purge plan (1 or 2)
    yearly_calls = 60000              # for `recordings stats` projections
    average_call_seconds = 240        # used while no recording is stored yet

Retention classes (dates are site-local; a recording's class is fixed when it is archived):

* ``end-of-next-month``: kept at least to the end of the month after the recording month;
  due from 00:00 on the 1st of the month after that (Jan 31 -> kept through Feb 28/29).
* ``N-months``: kept through the same day N months later, clipped to the month's end
  (Aug 31 + 6 months -> Feb 28/29); due from the next local midnight.
* ``N-days``: kept through the day N days later; due from the next local midnight.
* ``keep``: never due (the default when the site has no recording.toml).

Purge: ``plan`` lists what is due at a given clock (never held recordings) and stores the list;
``approve`` records one admin's approval, and once ``approvers`` distinct admins approved, deletes
the plan's recordings that are still there, still due and not on legal hold at execution time.
Each deletion is a ``recording_deletions`` row and an audit row.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from provisioning.problems import Problem, ProblemsError, read_toml, take

POLICY_FILE = "recording.toml"
_CLASS = re.compile(r"^(end-of-next-month|keep|([1-9][0-9]{0,3})-(months|days))$")
DEFAULT_CALL_SECONDS = 240.0


class PolicyError(ProblemsError):
    pass


@dataclass(frozen=True)
class RecordingPolicy:
    retention: str = "keep"
    approvers: int = 1
    yearly_calls: int | None = None
    average_call_seconds: float = DEFAULT_CALL_SECONDS
    timezone: str = "Asia/Tokyo"
    site_id: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def valid_class(name: str) -> bool:
    return bool(_CLASS.match(name or ""))


def load_policy(site_dir: str | Path | None) -> RecordingPolicy:
    """The site's recording policy; defaults (keep forever, one approver) without the file."""
    if site_dir is None:
        return RecordingPolicy()
    site_dir = Path(site_dir)
    tz, site_id = _site_timezone(site_dir)
    path = site_dir / POLICY_FILE
    if not path.exists():
        return RecordingPolicy(timezone=tz, site_id=site_id)
    problems: list[Problem] = []
    data, rep = read_toml(path, problems)
    if data is None:
        raise PolicyError(problems)
    v = take(rep, data, (), {"retention": (str, "keep"), "approvers": (int, 1), "yearly_calls": (int, None),
                             "average_call_seconds": (float, DEFAULT_CALL_SECONDS)})
    if v["retention"] is not None and not valid_class(v["retention"]):
        rep.add(("retention",), "must be end-of-next-month, N-months, N-days or keep")
    if v["approvers"] is not None and v["approvers"] not in (1, 2):
        rep.add(("approvers",), "must be 1 or 2")
    if v["yearly_calls"] is not None and v["yearly_calls"] < 0:
        rep.add(("yearly_calls",), "must be 0 or more")
    if v["average_call_seconds"] is not None and v["average_call_seconds"] <= 0:
        rep.add(("average_call_seconds",), "must be greater than 0")
    if problems:
        raise PolicyError(problems)
    return RecordingPolicy(v["retention"], v["approvers"], v["yearly_calls"], v["average_call_seconds"],
                           tz, site_id)


def _site_timezone(site_dir: Path) -> tuple[str, str | None]:
    """The site's time zone and id from site.toml (validated by provisioning; tolerant here)."""
    import tomllib
    try:
        site = tomllib.loads((site_dir / "site.toml").read_text(encoding="utf-8")).get("site", {})
        tz = site.get("timezone") or "Asia/Tokyo"
        ZoneInfo(tz)
        return tz, site.get("id")
    except (OSError, tomllib.TOMLDecodeError, ZoneInfoNotFoundError, ValueError, AttributeError):
        return "Asia/Tokyo", None


# ------------------------------------------------------------------ date math

def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def keep_until(started_at: datetime, retention: str, tz: ZoneInfo) -> date | None:
    """The last site-local day the recording must be kept (inclusive); None: keep forever."""
    m = _CLASS.match(retention or "")
    if not m:
        raise ValueError(f"unknown retention class {retention!r}")
    if retention == "keep":
        return None
    day = started_at.astimezone(tz).date()
    if retention == "end-of-next-month":
        nxt = add_months(day.replace(day=1), 1)
        return nxt.replace(day=calendar.monthrange(nxt.year, nxt.month)[1])
    n, unit = int(m.group(2)), m.group(3)
    return add_months(day, n) if unit == "months" else day + timedelta(days=n)


def due_at(started_at: datetime, retention: str, tz: ZoneInfo) -> datetime | None:
    """The first instant (UTC) at which the recording may be deleted; None: never."""
    last = keep_until(started_at, retention, tz)
    if last is None:
        return None
    return datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz).astimezone(timezone.utc)


# ------------------------------------------------------------------ purge (two steps)

@dataclass(frozen=True)
class PlanItem:
    reception_no: str
    call_id: str
    started_at: datetime
    due_at: datetime
    outcome: str | None = None


@dataclass(frozen=True)
class PurgePlanView:
    id: int | None
    created_by: str
    as_of: datetime
    approvers_needed: int
    approved_by: tuple[str, ...]
    status: str                      # open | executed | empty
    items: tuple[PlanItem, ...]


def due_recordings(recorder, now: datetime) -> list[PlanItem]:
    """Recordings whose retention has run out at ``now`` and that are not on legal hold."""
    from sqlalchemy import select
    from .models import Recording
    tz = recorder.policy.tz
    out = []
    with recorder.sessions() as s:
        rows = s.scalars(select(Recording).where(Recording.legal_hold.is_(False),
                                                 Recording.status.in_(("archived", "missing", "damaged")))
                         .order_by(Recording.started_at, Recording.id)).all()
    for r in rows:
        due = due_at(r.started_at, r.retention_class, tz) if valid_class(r.retention_class) else None
        if due is not None and due <= now:
            out.append(PlanItem(r.reception_no, r.call_id, r.started_at, due))
    return out


def make_plan(recorder, *, by: str, now: datetime) -> PurgePlanView:
    from .models import PurgePlan, PurgePlanItem
    items = due_recordings(recorder, now)
    if not items:
        return PurgePlanView(None, by, now, recorder.policy.approvers, (), "empty", ())
    with recorder.sessions.begin() as s:
        plan = PurgePlan(created_at=recorder.clock(), created_by=by, as_of=now,
                         approvers_needed=recorder.policy.approvers, status="open")
        s.add(plan)
        s.flush()
        for it in items:
            s.add(PurgePlanItem(plan_id=plan.id, reception_no=it.reception_no, call_id=it.call_id, due_at=it.due_at))
    return get_plan(recorder, plan.id)


def get_plan(recorder, plan_id: int) -> PurgePlanView:
    from sqlalchemy import select
    from .models import PurgeApproval, PurgePlan, PurgePlanItem, Recording
    with recorder.sessions() as s:
        plan = s.get(PurgePlan, plan_id)
        if plan is None:
            raise LookupError(f"no purge plan {plan_id}")
        items = s.execute(select(PurgePlanItem, Recording.started_at)
                          .join(Recording, Recording.reception_no == PurgePlanItem.reception_no, isouter=True)
                          .where(PurgePlanItem.plan_id == plan_id).order_by(PurgePlanItem.id)).all()
        approvals = s.scalars(select(PurgeApproval.approved_by).where(PurgeApproval.plan_id == plan_id)
                              .order_by(PurgeApproval.id)).all()
        return PurgePlanView(plan.id, plan.created_by, plan.as_of, plan.approvers_needed, tuple(approvals),
                             plan.status, tuple(PlanItem(i.reception_no, i.call_id, started, i.due_at, i.outcome)
                                                for i, started in items))


def approve_plan(recorder, plan_id: int, *, by: str, now: datetime, on_delete=None) -> PurgePlanView:
    """Record ``by``'s approval; execute once enough distinct admins approved.

    At execution every item is re-checked: gone already, put on legal hold since the plan, or
    not due at ``now`` -> kept (outcome says why). ``on_delete(item)`` is called per deletion.
    """
    from sqlalchemy.exc import IntegrityError
    from .models import PurgeApproval, PurgePlan, PurgePlanItem
    plan = get_plan(recorder, plan_id)
    if plan.status != "open":
        raise ValueError(f"purge plan {plan_id} is already {plan.status}")
    if by in plan.approved_by:
        raise ValueError(f"purge plan {plan_id} is already approved by {by}; "
                         f"it needs {plan.approvers_needed} distinct approvers")
    try:
        with recorder.sessions.begin() as s:
            s.add(PurgeApproval(plan_id=plan_id, approved_by=by, approved_at=recorder.clock()))
    except IntegrityError:
        raise ValueError(f"purge plan {plan_id} is already approved by {by}") from None
    plan = get_plan(recorder, plan_id)
    if len(plan.approved_by) < plan.approvers_needed:
        return plan
    approvers = ",".join(plan.approved_by)
    tz = recorder.policy.tz
    for item in plan.items:
        rec = recorder.get(item.reception_no)
        if rec is None or rec.call_id != item.call_id or rec.status in ("deleting", "pending"):
            outcome = "gone" if rec is None or rec.call_id != item.call_id else "skipped"
        elif rec.legal_hold:
            outcome = "held"
        elif (d := due_at(rec.started_at, rec.retention_class, tz) if valid_class(rec.retention_class) else None) \
                is None or d > now:
            outcome = "not-due"
        else:
            recorder.delete(rec, approved_by=approvers, reason="retention", plan_id=plan_id, now=now)
            outcome = "deleted"
            if on_delete is not None:
                on_delete(item)
        with recorder.sessions.begin() as s:
            from sqlalchemy import update
            s.execute(update(PurgePlanItem).where(PurgePlanItem.plan_id == plan_id,
                                                  PurgePlanItem.reception_no == item.reception_no)
                      .values(outcome=outcome))
    with recorder.sessions.begin() as s:
        p = s.get(PurgePlan, plan_id, with_for_update=True)
        p.status, p.executed_at = "executed", recorder.clock()
    return get_plan(recorder, plan_id)
