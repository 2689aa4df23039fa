"""Per-tenancy request limits: requests per minute, concurrent generations, tokens per minute.

Each tenancy has three limits: the service defaults (settings ``rate_*``) unless the
operator stored an override in ``tenancy_limits`` (None there means the default). Over a
limit, :class:`QuotaExceeded` says how many seconds until a slot frees (``Retry-After``;
the official clients wait that long and retry).

The defaults are what a tenancy gets on the embedded default, where one person often
owns the service: 60,000 requests per minute (1,000 a second), out of reach of one client
that sends its requests one after another (an evaluation loop: the cheapest request, a
model list, takes about 6 ms on a 2-core machine, a 3-token chat on the tiny test model
15 ms), so the request limit only stops floods of parallel requests; 32 concurrent
generations (a whole engine batch) and 200,000 tokens per minute bound the work. A shared
service sets each tenancy's own limits (``atelier admin limits set``).

Windows slide over the last 60 seconds, as a loop::

    drop the events older than now - 60 s
    if count (or tokens) of the events left + this one > limit: refuse, retry after
        (time of the oldest event that must leave) + 60 s - now
    else: record this one

The counters live in this process's memory: one service process enforces its own limits.
A deployment running several processes behind a balancer would keep the same windows in a
shared store (Redis sorted sets or a database table) behind this same interface. Knows
nothing about HTTP: the API calls :meth:`RateLimiter.check_request` from its authorize gate
and holds a :class:`GenerationSlot` around each generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy.orm import Session

from atelier.errors import QuotaExceeded
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store.db import Database
from atelier.store.tables import TenancyLimits, utcnow

log = logging.getLogger(__name__)

WINDOW = 60.0
"""Seconds the request and token windows span."""
CACHE_SECONDS = 5.0
"""How long a tenancy's stored limits are reused before being read again."""
SLOT_RETRY_AFTER = 1.0
"""``Retry-After`` when every generation slot is taken (how long one lasts is not known)."""


@dataclass(frozen=True)
class Limits:
    """The limits of one tenancy."""

    requests_per_minute: int
    """Requests in any 60 s window."""
    concurrent_generations: int
    """Generations running at once (chat and text completions, streamed or not)."""
    tokens_per_minute: int
    """Prompt + completion tokens in any 60 s window."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The service defaults (``rate_requests_per_minute``...)."""
        return cls(
            settings.rate_requests_per_minute, settings.rate_concurrent_generations, settings.rate_tokens_per_minute
        )


@dataclass(frozen=True)
class Overrides:
    """A tenancy's stored limits; None where the service default applies."""

    requests_per_minute: int | None = None
    concurrent_generations: int | None = None
    tokens_per_minute: int | None = None
    updated_at: datetime | None = None

    def over(self, defaults: Limits) -> Limits:
        """The effective limits: each override, else the default."""
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(defaults, f.name)
            for f in fields(Limits)
        }
        return Limits(**values)


LimitsLookup = Callable[[str], Overrides | None]
"""``lookup(tenancy_id)``: the tenancy's stored overrides, or None when it has none."""


# --- stored overrides ---------------------------------------------------------------------


def stored_limits(session: Session, tenancy_id: str) -> Overrides | None:
    """The overrides stored for ``tenancy_id`` (None when none were ever set)."""
    row = session.get(TenancyLimits, tenancy_id)
    if row is None:
        return None
    return Overrides(row.requests_per_minute, row.concurrent_generations, row.tokens_per_minute, row.updated_at)


def store_limits(session: Session, tenancy_id: str, overrides: Overrides) -> Overrides:
    """Replace the overrides of ``tenancy_id`` (the caller checked that the tenancy exists).

    Returns:
        What was stored, with its time.
    """
    row = session.get(TenancyLimits, tenancy_id)
    if row is None:
        row = TenancyLimits(tenancy_id=tenancy_id)
        session.add(row)
    row.requests_per_minute = overrides.requests_per_minute
    row.concurrent_generations = overrides.concurrent_generations
    row.tokens_per_minute = overrides.tokens_per_minute
    row.updated_at = utcnow()
    session.flush()
    return Overrides(row.requests_per_minute, row.concurrent_generations, row.tokens_per_minute, row.updated_at)


def database_lookup(db: Database) -> LimitsLookup:
    """A lookup reading ``tenancy_limits`` in ``db`` (one short session per call)."""

    def lookup(tenancy_id: str) -> Overrides | None:
        with db.session() as session:
            return stored_limits(session, tenancy_id)

    return lookup


# --- the windows ------------------------------------------------------------------------


class _Window:
    """Amounts recorded over the last ``WINDOW`` seconds (count of requests, or tokens)."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def slide(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW:
            _, amount = self.events.popleft()
            self.total -= amount

    def wait_for(self, room: int, now: float) -> float:
        """Seconds until at most ``room`` is used (0 when it already is)."""
        excess = self.total - room
        if excess <= 0:
            return 0.0
        for when, amount in self.events:
            excess -= amount
            if excess <= 0:
                return max(0.0, when + WINDOW - now)
        return WINDOW

    def add(self, now: float, amount: int) -> None:
        if amount > 0:
            self.events.append((now, amount))
            self.total += amount


class GenerationSlot:
    """One concurrent-generation slot of a tenancy, held until :meth:`release`.

    Use it as a context manager (released on exit, an exception included), or release it
    by hand when the generation outlives the call that took it (a streamed response).
    Releasing twice is harmless.
    """

    def __init__(self, limiter: RateLimiter, tenancy_id: str):
        self._limiter = limiter
        self.tenancy_id = tenancy_id
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the slot back (once)."""
        if not self._released:
            self._released = True
            self._limiter._release(self.tenancy_id)

    def __enter__(self) -> GenerationSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RateLimiter:
    """In-process per-tenancy limits (``app.state.limits``).

    Args:
        defaults: The limits of a tenancy without overrides.
        limits_lookup: ``lookup(tenancy_id)`` → stored overrides or None (see
            :func:`database_lookup`); its answers are cached ``cache_seconds``.
        cache_seconds: How long an answer of the lookup is reused.
        clock: Monotonic seconds (tests pass a fake one).
        on_tokens: Called as ``on_tokens(tenancy_id, n)`` after tokens are charged (the
            anomaly monitor's usage-spike detector); its exceptions are logged.
    """

    def __init__(
        self,
        defaults: Limits,
        limits_lookup: LimitsLookup,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_tokens: Callable[[str, int], None] | None = None,
    ):
        self.defaults = defaults
        self._lookup = limits_lookup
        self._cache_seconds = cache_seconds
        self._clock = clock
        self.on_tokens = on_tokens
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Limits]] = {}
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._running: dict[str, int] = {}

    # --- limits ---------------------------------------------------------------------------

    def limits_for(self, tenancy_id: str) -> Limits:
        """The effective limits of a tenancy (stored overrides over the defaults, cached)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(tenancy_id)
            if cached is not None and cached[0] > now:
                return cached[1]
        overrides = self._lookup(tenancy_id)
        limits = overrides.over(self.defaults) if overrides is not None else self.defaults
        with self._lock:
            self._cache[tenancy_id] = (now + self._cache_seconds, limits)
        return limits

    def invalidate(self, tenancy_id: str | None = None) -> None:
        """Forget cached limits (of one tenancy, or all) so the next request reads them again."""
        with self._lock:
            if tenancy_id is None:
                self._cache.clear()
            else:
                self._cache.pop(tenancy_id, None)

    # --- requests -------------------------------------------------------------------------

    def check_request(self, principal: Principal) -> None:
        """Count one request of the principal's tenancy, or refuse it.

        Raises:
            QuotaExceeded: The tenancy made ``requests_per_minute`` requests in the last
                60 s; ``retry_after`` is the time until the oldest of them leaves the window.
        """
        tenancy = principal.tenancy_id
        limit = self.limits_for(tenancy).requests_per_minute
        now = self._clock()
        with self._lock:
            window = self._requests.setdefault(tenancy, _Window())
            window.slide(now)
            if window.total + 1 > limit:
                wait = window.wait_for(limit - 1, now)
                raise QuotaExceeded(
                    f"Rate limit reached: your tenancy may make {limit} requests per minute. "
                    f"Retry in {wait:.0f} s.",
                    retry_after=wait,
                )
            window.add(now, 1)

    # --- generations ----------------------------------------------------------------------

    def check_tokens(self, principal: Principal, upcoming: int = 0) -> None:
        """Refuse to start a generation whose prompt does not fit in the tenancy's token budget.

        Args:
            principal: The caller.
            upcoming: Tokens the generation will use at least (its prompt).

        Raises:
            QuotaExceeded: Tokens used in the last 60 s plus ``upcoming`` exceed
                ``tokens_per_minute``; ``retry_after`` is the time until enough leave the window.
        """
        tenancy = principal.tenancy_id
        limit = self.limits_for(tenancy).tokens_per_minute
        if upcoming > limit:
            raise QuotaExceeded(
                f"This request's prompt has {upcoming} tokens, more than your tenancy's limit of "
                f"{limit} tokens per minute.",
                retry_after=WINDOW,
            )
        now = self._clock()
        with self._lock:
            window = self._tokens.setdefault(tenancy, _Window())
            window.slide(now)
            if window.total + max(upcoming, 1) > limit:
                wait = window.wait_for(limit - max(upcoming, 1), now)
                raise QuotaExceeded(
                    f"Token rate limit reached: your tenancy may use {limit} tokens per minute "
                    f"({window.total} used in the last minute). Retry in {wait:.0f} s.",
                    retry_after=wait,
                )

    def generation(self, principal: Principal, prompt_tokens: int = 0) -> GenerationSlot:
        """Take a concurrent-generation slot of the principal's tenancy, after checking its token budget.

        Args:
            principal: The caller.
            prompt_tokens: The prompt's length (checked against the token budget).

        Returns:
            The slot; release it when the generation ends (``with`` does).

        Raises:
            QuotaExceeded: The token budget is spent (see :meth:`check_tokens`), or the
                tenancy already runs ``concurrent_generations`` generations.
        """
        self.check_tokens(principal, prompt_tokens)
        tenancy = principal.tenancy_id
        limit = self.limits_for(tenancy).concurrent_generations
        with self._lock:
            running = self._running.get(tenancy, 0)
            if running >= limit:
                raise QuotaExceeded(
                    f"Concurrency limit reached: your tenancy may run {limit} generations at once. "
                    "Retry when one has finished.",
                    retry_after=SLOT_RETRY_AFTER,
                )
            self._running[tenancy] = running + 1
        return GenerationSlot(self, tenancy)

    def _release(self, tenancy_id: str) -> None:
        with self._lock:
            left = self._running.get(tenancy_id, 0) - 1
            if left > 0:
                self._running[tenancy_id] = left
            else:
                self._running.pop(tenancy_id, None)

    def charge_tokens(self, principal: Principal, n: int) -> None:
        """Record ``n`` tokens used by the principal's tenancy (prompt + completion, or embedded)."""
        if n <= 0:
            return
        tenancy = principal.tenancy_id
        now = self._clock()
        with self._lock:
            window = self._tokens.setdefault(tenancy, _Window())
            window.slide(now)
            window.add(now, n)
        if self.on_tokens is not None:
            try:
                self.on_tokens(tenancy, n)
            except Exception:  # noqa: BLE001 - monitoring never fails a request
                log.exception("token observer failed for tenancy %s", tenancy)

    # --- reading --------------------------------------------------------------------------

    def usage(self, tenancy_id: str) -> dict[str, int]:
        """What the tenancy uses now: requests and tokens in the last 60 s, generations running."""
        now = self._clock()
        with self._lock:
            counts = {}
            for name, windows in (("requests", self._requests), ("tokens", self._tokens)):
                window = windows.get(tenancy_id)
                if window is not None:
                    window.slide(now)
                counts[name] = window.total if window is not None else 0
            counts["generations"] = self._running.get(tenancy_id, 0)
        return counts
