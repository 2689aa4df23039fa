"""First start: the default tenancy gets its unit limits and a local fine-tuning and hosting cluster."""

from __future__ import annotations

import logging

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.cloud.clusters import ClusterService
from atelier.cloud.unit_limits import unit_limits
from atelier.cloud.units import UnitTable
from atelier.principal import Principal
from atelier.cloud.bootstrap import DEFAULT_TENANCY, ensure_operator
from atelier.settings import Settings
from atelier.store import repos

TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"))
CATALOG = Catalog(list(BUILTIN) + [TINY])


def default_tenancy(db) -> Principal:
    with db.session() as s:
        return Principal(repos.get_tenancy_by_name(s, DEFAULT_TENANCY).id, "k", "operator")


def test_first_start_provisions_the_default_tenancy_once(db, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", admin_key="operator-key-0123456789", default_chat_model="tiny")
    ensure_operator(db, settings, CATALOG)
    ensure_operator(db, settings, CATALOG)  # later starts change nothing
    principal = default_tenancy(db)
    clusters = ClusterService(db, CATALOG, UnitTable.load()).list(principal)
    assert [(c.name, c.type, c.unit_count, c.base_model, c.state) for c in clusters] == [
        ("local-fine-tuning", "fine-tuning", 2, "tiny", "active"), ("local-hosting", "hosting", 1, "tiny", "active")]
    with db.session() as s:
        assert unit_limits(s, principal.tenancy_id, UnitTable.load()) == {"small": 16, "large": 0, "embed": 2}


def test_limits_come_from_the_settings_and_a_cluster_that_does_not_fit_is_skipped(db, tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "data", default_tenancy_units="small=2", default_chat_model="tiny")
    with caplog.at_level(logging.WARNING, logger="atelier.cloud.bootstrap"):
        assert ensure_operator(db, settings, CATALOG) is not None  # the generated operator key
    principal = default_tenancy(db)
    clusters = ClusterService(db, CATALOG, UnitTable.load()).list(principal)
    assert [c.name for c in clusters] == ["local-fine-tuning"]
    assert "no hosting cluster 'local-hosting'" in caplog.text and "limit of 2" in caplog.text
    with db.session() as s:
        assert unit_limits(s, principal.tenancy_id, UnitTable.load())["small"] == 2
