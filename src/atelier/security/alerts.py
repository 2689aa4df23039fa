"""Anomaly alerts: detectors over sliding windows of audit entries and token usage.

The :class:`Monitor` subscribes to the audit log and sees every entry as it is appended;
the rate limiter reports the tokens each tenancy uses. Four detectors:

* ``unauthenticated_burst``: at least ``alert_unauthenticated_burst`` 401s from one source
  address within ``alert_window_seconds`` (someone guessing keys);
* ``enumeration``: at least ``alert_not_found_burst`` 404s on routes naming an object id,
  from one key within the window (someone walking ids);
* ``new_address``: a key used from an address it was never seen from, once it has been seen
  from a first one (addresses known per key are read from the audit log at start);
* ``token_spike``: a tenancy's tokens in the last minute above ``alert_token_spike_factor``
  × its trailing average per minute (over up to ``alert_token_baseline_minutes`` before the
  last one) and above ``alert_token_spike_floor``; a tenancy is judged once a minute of its
  history was observed (so a restart does not make every busy tenancy look like a spike).

An alert is raised synchronously, as the entry that completes a burst arrives: one row in
``alerts``, one ``alert.raised`` audit entry, and a POST of its JSON to
``alert_webhook_url`` when set (in a background thread, with a timeout; failures are logged).
A burst raises one alert per kind and subject (address, key or tenancy) per window, not one
per request. The counters are this process's memory. Knows nothing about HTTP routes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from sqlalchemy import select

from atelier.security.audit import AuditEntry, AuditEvent, AuditLog
from atelier.settings import Settings
from atelier.store.db import Database
from atelier.store.tables import Alert as AlertRow
from atelier.store.tables import AuditEntry as EntryRow
from atelier.store.tables import utcnow

log = logging.getLogger(__name__)

Kind = Literal["unauthenticated_burst", "enumeration", "new_address", "token_spike"]
KINDS: tuple[Kind, ...] = ("unauthenticated_burst", "enumeration", "new_address", "token_spike")
ALERT_ACTION = "alert.raised"
"""The audit action of a raised alert."""
WEBHOOK_TIMEOUT = 5.0
"""Seconds a webhook POST may take."""
MINUTE = 60.0


@dataclass(frozen=True)
class Thresholds:
    """When the detectors fire (from the settings ``alert_*``)."""

    window: float = 60.0
    """Seconds of the burst windows, and of the de-duplication of alerts."""
    unauthenticated_burst: int = 20
    """401s from one address within the window."""
    not_found_burst: int = 20
    """404s on object ids from one key within the window."""
    spike_factor: float = 10.0
    """Tokens of the last minute over this × the trailing average per minute."""
    spike_floor: int = 20_000
    """Tokens of the last minute under which no spike is raised."""
    baseline_minutes: int = 60
    """Minutes before the last one that the trailing average spans."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            window=float(settings.alert_window_seconds),
            unauthenticated_burst=settings.alert_unauthenticated_burst,
            not_found_burst=settings.alert_not_found_burst,
            spike_factor=settings.alert_token_spike_factor,
            spike_floor=settings.alert_token_spike_floor,
            baseline_minutes=settings.alert_token_baseline_minutes,
        )


@dataclass(frozen=True)
class RaisedAlert:
    """An alert as stored and posted."""

    id: str
    kind: Kind
    tenancy_id: str | None
    key_id: str | None
    source: str | None
    detail: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what the webhook receives)."""
        return {
            "object": "alert",
            "id": self.id,
            "kind": self.kind,
            "tenancy_id": self.tenancy_id,
            "key_id": self.key_id,
            "source": self.source,
            "detail": self.detail,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class _Pending:
    kind: Kind
    tenancy_id: str | None
    key_id: str | None
    source: str | None
    detail: str
    request_id: str | None


class _Burst:
    """Times of events within the window; fires once per window."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def add(self, now: float, window: float) -> int:
        self.times.append(now)
        while self.times and self.times[0] <= now - window:
            self.times.popleft()
        return len(self.times)


class _Usage:
    """A tenancy's tokens: each charge of the last minute, per-minute totals before it."""

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.recent: deque[tuple[float, int]] = deque()
        self.recent_total = 0
        self.minutes: dict[int, int] = {}

    def add(self, now: float, n: int, baseline_minutes: int) -> tuple[int, float | None]:
        """Record ``n`` tokens.

        Returns:
            Tokens of the last minute, and the average per minute over the (up to)
            ``baseline_minutes`` before it, or None while less than a minute of that
            history was observed (a tenancy just seen, or every tenancy after a restart).
        """
        self.recent.append((now, n))
        self.recent_total += n
        while self.recent and self.recent[0][0] <= now - MINUTE:
            when, old = self.recent.popleft()
            self.recent_total -= old
            minute = int(when // MINUTE)
            self.minutes[minute] = self.minutes.get(minute, 0) + old
        horizon = now - MINUTE - baseline_minutes * MINUTE
        first_bucket = int(horizon // MINUTE)
        for minute in [m for m in self.minutes if m < first_bucket]:
            del self.minutes[minute]
        covered = (now - MINUTE) - max(self.first_seen, horizon)
        if covered < MINUTE:
            return self.recent_total, None
        return self.recent_total, sum(self.minutes.values()) / (covered / MINUTE)


class Monitor:
    """Watches audit entries and token usage; raises deduplicated alerts.

    Args:
        db: The metadata database (``alerts``; ``audit_entries`` for the known addresses).
        audit: The audit log alerts are recorded in (``alert.raised``); None records none.
        thresholds: When the detectors fire.
        webhook_url: Where each alert's JSON is POSTed, if anywhere.
        clock: Seconds (tests pass a fake one); windows are measured with it.
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog | None,
        thresholds: Thresholds | None = None,
        *,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._db = db
        self._audit = audit
        self.thresholds = thresholds or Thresholds()
        self.webhook_url = webhook_url
        self._clock = clock
        self._lock = threading.Lock()
        self._unauthenticated: dict[str, _Burst] = {}
        self._not_found: dict[str, _Burst] = {}
        self._addresses: dict[str, set[str]] = {}
        self._usage: dict[str, _Usage] = {}
        self._fired: dict[tuple[str, str], float] = {}
        self._webhooks: list[threading.Thread] = []

    @classmethod
    def for_service(cls, db: Database, audit: AuditLog, settings: Settings) -> Monitor:
        """The service's monitor: thresholds and webhook from ``settings``, subscribed to
        ``audit``, known addresses read from the log."""
        monitor = cls(db, audit, Thresholds.from_settings(settings), webhook_url=settings.alert_webhook_url)
        monitor.load_known_addresses()
        audit.subscribe(monitor.observe)
        return monitor

    def load_known_addresses(self) -> int:
        """Remember every (key, address) pair already in the audit log.

        Returns:
            The number of pairs read.
        """
        query = (
            select(EntryRow.key_id, EntryRow.source)
            .where(EntryRow.key_id.is_not(None), EntryRow.source.is_not(None), EntryRow.action != ALERT_ACTION)
            .distinct()
        )
        with self._db.session() as session:
            pairs = session.execute(query).all()
        with self._lock:
            for key_id, source in pairs:
                self._addresses.setdefault(key_id, set()).add(source)
        return len(pairs)

    # --- detectors ---------------------------------------------------------------------

    def observe(self, entry: AuditEntry) -> list[RaisedAlert]:
        """Feed one appended audit entry to the detectors (an ``AuditLog`` observer).

        Returns:
            The alerts it raised (usually none).
        """
        if entry.action == ALERT_ACTION:
            return []
        now = self._clock()
        window = self.thresholds.window
        pending: list[_Pending] = []
        with self._lock:
            if entry.status == 401 and entry.source:
                count = self._unauthenticated.setdefault(entry.source, _Burst()).add(now, window)
                if count >= self.thresholds.unauthenticated_burst and self._first(now, "401", entry.source):
                    pending.append(_Pending(
                        "unauthenticated_burst", None, None, entry.source,
                        f"{count} requests refused as unauthenticated (401) from {entry.source} "
                        f"within {window:.0f} s",
                        entry.request_id,
                    ))  # fmt: skip
            if entry.status == 404 and entry.key_id and entry.resource_id is not None:
                count = self._not_found.setdefault(entry.key_id, _Burst()).add(now, window)
                if count >= self.thresholds.not_found_burst and self._first(now, "404", entry.key_id):
                    pending.append(_Pending(
                        "enumeration", entry.tenancy_id, entry.key_id, entry.source,
                        f"{count} requests for object ids answered 404 for key {entry.key_id} within {window:.0f} s "
                        f"(last: {entry.action})",
                        entry.request_id,
                    ))  # fmt: skip
            if entry.key_id and entry.source:
                known = self._addresses.setdefault(entry.key_id, set())
                if entry.source not in known:
                    if known:
                        pending.append(_Pending(
                            "new_address", entry.tenancy_id, entry.key_id, entry.source,
                            f"key {entry.key_id} used from {entry.source}, an address it was never used from "
                            f"(known: {', '.join(sorted(known)[:5])}{'…' if len(known) > 5 else ''})",
                            entry.request_id,
                        ))  # fmt: skip
                    known.add(entry.source)
        return self._raise_all(pending)

    def observe_tokens(self, tenancy_id: str, n: int) -> list[RaisedAlert]:
        """Feed tokens used by a tenancy to the usage-spike detector (``RateLimiter.on_tokens``).

        Returns:
            The alert it raised, if any.
        """
        if n <= 0:
            return []
        now = self._clock()
        t = self.thresholds
        pending: list[_Pending] = []
        with self._lock:
            usage = self._usage.get(tenancy_id)
            if usage is None:
                usage = self._usage[tenancy_id] = _Usage(now)
            last_minute, average = usage.add(now, n, t.baseline_minutes)
            if (
                average is not None
                and last_minute > t.spike_floor
                and last_minute > t.spike_factor * average
                and self._first(now, "tokens", tenancy_id)
            ):
                pending.append(_Pending(
                    "token_spike", tenancy_id, None, None,
                    f"tenancy {tenancy_id} used {last_minute} tokens in the last minute; its average over the "
                    f"{t.baseline_minutes} minutes before was {average:.0f} per minute",
                    None,
                ))  # fmt: skip
        return self._raise_all(pending)

    def _first(self, now: float, kind: str, subject: str) -> bool:
        """Whether no alert of this kind on this subject was raised within the window (and mark it)."""
        last = self._fired.get((kind, subject))
        if last is not None and now - last < self.thresholds.window:
            return False
        self._fired[(kind, subject)] = now
        if len(self._fired) > 10_000:  # forget marks older than the window
            self._fired = {k: v for k, v in self._fired.items() if now - v < self.thresholds.window}
        return True

    # --- raising -----------------------------------------------------------------------

    def _raise_all(self, pending: list[_Pending]) -> list[RaisedAlert]:
        raised = []
        for item in pending:
            try:
                raised.append(self._raise(item))
            except Exception:  # noqa: BLE001 - an alert that cannot be stored is logged, never fails a request
                log.exception("alert %s could not be recorded", item.kind)
        return raised

    def _raise(self, item: _Pending) -> RaisedAlert:
        """Store the alert, append it to the audit log, post it to the webhook."""
        with self._db.session() as session:
            row = AlertRow(
                tenancy_id=item.tenancy_id, kind=item.kind, key_id=item.key_id, source=item.source,
                detail=item.detail, created_at=utcnow(),
            )  # fmt: skip
            session.add(row)
            session.flush()
            alert = RaisedAlert(row.id, item.kind, row.tenancy_id, row.key_id, row.source, row.detail, row.created_at)
        log.warning("alert %s (%s): %s", alert.id, alert.kind, alert.detail)
        if self._audit is not None:
            self._audit.append(AuditEvent(
                request_id=item.request_id or f"req_{uuid.uuid4().hex}",
                tenancy_id=alert.tenancy_id,
                key_id=alert.key_id,
                action=ALERT_ACTION,
                resource_id=alert.id,
                outcome=alert.kind,
                source=alert.source,
            ))  # fmt: skip
        if self.webhook_url:
            thread = threading.Thread(
                target=post_webhook, args=(self.webhook_url, alert.to_dict()), name="alert-webhook", daemon=True
            )
            thread.start()
            self._webhooks = [t for t in self._webhooks if t.is_alive()] + [thread]
        return alert

    def wait_for_webhooks(self, timeout: float = WEBHOOK_TIMEOUT + 1) -> None:
        """Wait until the webhook posts under way are done (at shutdown, and in tests)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._webhooks):
            thread.join(max(0.0, deadline - time.monotonic()))


def post_webhook(url: str, payload: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT) -> bool:
    """POST ``payload`` as JSON to ``url``; a failure is logged, never raised.

    Returns:
        Whether the receiver answered with a 2xx status.
    """
    try:
        response = httpx.post(url, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        log.error("alert webhook %s failed: %s", url, exc)
        return False
    if not response.is_success:
        log.error("alert webhook %s answered %s", url, response.status_code)
        return False
    return True


def list_alerts(
    db: Database,
    tenancy_id: str | None,
    *,
    every_tenancy: bool = False,
    kind: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[RaisedAlert]:
    """Stored alerts, oldest first.

    Args:
        db: The metadata database.
        tenancy_id: Only this tenancy's alerts (ignored with ``every_tenancy``).
        every_tenancy: Every alert, those without a tenancy (401 bursts) included.
        kind: Only this kind.
        since: Raised at or after this time.
        limit: At most this many (the newest ones when there are more).
    """
    query = select(AlertRow)
    if not every_tenancy:
        query = query.where(AlertRow.tenancy_id == tenancy_id)
    if kind is not None:
        query = query.where(AlertRow.kind == kind)
    if since is not None:
        query = query.where(AlertRow.created_at >= since)
    query = query.order_by(AlertRow.created_at.desc(), AlertRow.id.desc()).limit(max(0, limit))
    with db.session() as session:
        rows = list(session.scalars(query))
        alerts = [RaisedAlert(r.id, r.kind, r.tenancy_id, r.key_id, r.source, r.detail, r.created_at) for r in rows]
    return alerts[::-1]
