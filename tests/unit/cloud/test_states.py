"""Lifecycle moves of clusters and endpoints: the allowed ones pass, every other one is a Conflict."""

from __future__ import annotations

import pytest

from atelier.cloud.states import CLUSTER_MOVES, CLUSTER_STATES, ENDPOINT_MOVES, ENDPOINT_STATES, can_move, move
from atelier.errors import Conflict

ALLOWED_CLUSTER = {
    ("creating", "active"), ("creating", "failed"), ("creating", "deleting"),
    ("active", "updating"), ("active", "deleting"), ("active", "needs_attention"),
    ("updating", "active"), ("updating", "failed"), ("updating", "needs_attention"),
    ("needs_attention", "active"), ("needs_attention", "updating"), ("needs_attention", "deleting"),
    ("failed", "deleting"), ("deleting", "deleted"), ("deleting", "failed"),
}  # fmt: skip
ALLOWED_ENDPOINT = {
    ("creating", "active"), ("creating", "failed"), ("creating", "deleting"),
    ("active", "updating"), ("active", "deleting"), ("updating", "active"), ("updating", "failed"),
    ("failed", "deleting"), ("deleting", "deleted"), ("deleting", "failed"),
}  # fmt: skip


@pytest.mark.parametrize(("moves", "states", "allowed"), [
    (CLUSTER_MOVES, CLUSTER_STATES, ALLOWED_CLUSTER),
    (ENDPOINT_MOVES, ENDPOINT_STATES, ALLOWED_ENDPOINT),
])  # fmt: skip
def test_every_pair_of_states(moves, states, allowed):
    assert set(moves) == set(states)
    for current in states:
        for target in states:
            expected = (current, target) in allowed
            assert can_move(moves, current, target) is expected, (current, target)
            if expected:
                assert move(moves, "cluster 'dac_1'", current, target) == target
            else:
                with pytest.raises(Conflict) as caught:
                    move(moves, "cluster 'dac_1'", current, target)
                assert caught.value.code == "invalid_state"
                assert f"cluster 'dac_1' is {current}; it cannot become {target}" == caught.value.message


def test_deleted_is_final_and_endpoints_never_need_attention():
    assert not CLUSTER_MOVES["deleted"] and not ENDPOINT_MOVES["deleted"]
    assert "needs_attention" not in ENDPOINT_STATES
