"""security/limits.py: sliding windows, Retry-After, generation slots, per-tenancy overrides."""

from __future__ import annotations

import pytest

from atelier.errors import QuotaExceeded
from atelier.principal import Principal
from atelier.security.limits import (
    Limits,
    Overrides,
    RateLimiter,
    database_lookup,
    store_limits,
    stored_limits,
)
from atelier.store import repos
from atelier.store.db import Database

ALPHA = Principal("ten_alpha", "key_a", "admin")
BETA = Principal("ten_beta", "key_b", "admin")
DEFAULTS = Limits(requests_per_minute=3, concurrent_generations=2, tokens_per_minute=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(clock, overrides: dict[str, Overrides] | None = None, **kwargs) -> RateLimiter:
    overrides = overrides or {}
    return RateLimiter(DEFAULTS, overrides.get, clock=clock, **kwargs)


def test_requests_slide_over_sixty_seconds(clock):
    rl = limiter(clock)
    for t in (0, 10, 20):  # three requests at t = 0, 10, 20
        clock.now = 1000.0 + t
        rl.check_request(ALPHA)
    clock.now = 1030.0
    with pytest.raises(QuotaExceeded) as refused:
        rl.check_request(ALPHA)
    assert refused.value.retry_after == pytest.approx(30.0)  # the first one leaves at t = 60
    assert "3 requests per minute" in refused.value.message
    clock.now = 1060.0  # the first request (t = 0) has left the window
    rl.check_request(ALPHA)
    with pytest.raises(QuotaExceeded) as again:
        rl.check_request(ALPHA)
    assert again.value.retry_after == pytest.approx(10.0)  # the one at t = 10 leaves at t = 70


def test_a_refused_request_does_not_count(clock):
    rl = limiter(clock)
    for _ in range(3):
        rl.check_request(ALPHA)
    for _ in range(5):
        with pytest.raises(QuotaExceeded):
            rl.check_request(ALPHA)
    clock.now += 60.0
    for _ in range(3):
        rl.check_request(ALPHA)
    assert rl.usage("ten_alpha")["requests"] == 3


def test_tenancies_have_separate_windows(clock):
    rl = limiter(clock)
    for _ in range(3):
        rl.check_request(ALPHA)
    with pytest.raises(QuotaExceeded):
        rl.check_request(ALPHA)
    rl.check_request(BETA)  # beta is untouched by alpha's traffic


def test_generation_slots_are_counted_and_released(clock):
    rl = limiter(clock)
    first = rl.generation(ALPHA)
    with rl.generation(ALPHA):
        assert rl.usage("ten_alpha")["generations"] == 2
        with pytest.raises(QuotaExceeded) as refused:
            rl.generation(ALPHA)
        assert refused.value.retry_after == 1.0
        rl.generation(BETA).release()  # another tenancy's slots are its own
    assert rl.usage("ten_alpha")["generations"] == 1
    first.release()
    first.release()  # releasing twice gives back one slot only
    assert rl.usage("ten_alpha")["generations"] == 0


def test_a_slot_is_released_when_the_generation_fails(clock):
    rl = limiter(clock)
    for _ in range(5):
        with pytest.raises(RuntimeError):
            with rl.generation(ALPHA):
                raise RuntimeError("engine failed")
    assert rl.usage("ten_alpha")["generations"] == 0
    with rl.generation(ALPHA), rl.generation(ALPHA):
        pass


def test_token_budget_is_checked_before_a_generation(clock):
    rl = limiter(clock)
    rl.charge_tokens(ALPHA, 60)
    clock.now += 20
    rl.charge_tokens(ALPHA, 30)
    rl.generation(ALPHA, prompt_tokens=10).release()  # 90 + 10 fits in 100
    with pytest.raises(QuotaExceeded) as refused:
        rl.generation(ALPHA, prompt_tokens=11)
    assert refused.value.retry_after == pytest.approx(40.0)  # the 60 tokens charged at t = 0 leave at t = 60
    assert rl.usage("ten_alpha")["generations"] == 0  # a refusal takes no slot
    clock.now += 40
    rl.generation(ALPHA, prompt_tokens=11).release()
    with pytest.raises(QuotaExceeded, match="more than your tenancy's limit"):
        rl.check_tokens(ALPHA, 101)  # a prompt that can never fit


def test_a_spent_budget_refuses_any_generation(clock):
    rl = limiter(clock)
    rl.charge_tokens(ALPHA, 100)
    with pytest.raises(QuotaExceeded, match="100 tokens per minute"):
        rl.check_tokens(ALPHA)
    rl.check_tokens(BETA)


def test_charged_tokens_reach_the_observer(clock):
    seen = []
    rl = limiter(clock, on_tokens=lambda tenancy, n: seen.append((tenancy, n)))
    rl.charge_tokens(ALPHA, 7)
    rl.charge_tokens(ALPHA, 0)
    assert seen == [("ten_alpha", 7)]


def test_overrides_replace_defaults_field_by_field(clock):
    overrides = {"ten_alpha": Overrides(requests_per_minute=5, tokens_per_minute=None)}
    rl = limiter(clock, overrides)
    assert rl.limits_for("ten_alpha") == Limits(5, 2, 100)
    assert rl.limits_for("ten_beta") == DEFAULTS
    for _ in range(5):
        rl.check_request(ALPHA)
    with pytest.raises(QuotaExceeded):
        rl.check_request(ALPHA)


def test_stored_limits_are_cached_then_read_again(clock):
    calls = []
    current = {"ten_alpha": Overrides(requests_per_minute=1)}

    def lookup(tenancy_id):
        calls.append(tenancy_id)
        return current.get(tenancy_id)

    rl = RateLimiter(DEFAULTS, lookup, cache_seconds=5.0, clock=clock)
    assert rl.limits_for("ten_alpha").requests_per_minute == 1
    current["ten_alpha"] = Overrides(requests_per_minute=9)
    clock.now += 4
    assert rl.limits_for("ten_alpha").requests_per_minute == 1  # cached
    clock.now += 2
    assert rl.limits_for("ten_alpha").requests_per_minute == 9  # read again
    current["ten_alpha"] = Overrides(requests_per_minute=4)
    rl.invalidate("ten_alpha")
    assert rl.limits_for("ten_alpha").requests_per_minute == 4
    assert len(calls) == 3


def test_limits_round_trip_through_the_database(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.migrate()
    try:
        with db.session() as session:
            tenancy = repos.create_tenancy(session, "alpha")
            tenancy_id = tenancy.id
            assert stored_limits(session, tenancy_id) is None
            store_limits(session, tenancy_id, Overrides(requests_per_minute=7, concurrent_generations=None))
        lookup = database_lookup(db)
        assert lookup(tenancy_id).over(DEFAULTS) == Limits(7, 2, 100)
        assert lookup("ten_missing") is None
        with db.session() as session:
            stored = store_limits(session, tenancy_id, Overrides(tokens_per_minute=50))
        assert (stored.requests_per_minute, stored.tokens_per_minute) == (None, 50)
        assert lookup(tenancy_id).over(DEFAULTS) == Limits(3, 2, 50)
    finally:
        db.dispose()
