"""First start: make sure an operator can log in.

On an empty database this creates the ``default`` tenancy and an operator key, gives the
tenancy the unit limits of ``Settings.default_tenancy_units`` (every other tenancy starts
at 0, as in OCI) and two local clusters on the default chat model, ``local-fine-tuning``
and ``local-hosting``, so that fine-tuning and serving work out of the box. On every
start each tenancy gets the ``Administrators`` group and the protected ``Tenant Admin
Policy`` if it lacks them (installs older than them get them then). The key is
the administrator's ``ATELIER_ADMIN_KEY`` when set; otherwise a fresh key is generated and
written once to ``<data dir>/admin.key`` (mode 0600, never world-readable even briefly).
Knows nothing about HTTP or printing: the caller shows the returned key.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from atelier.catalog import Catalog
from atelier.durable import write_atomically
from atelier.cloud.clusters import ClusterRequest, ClusterService
from atelier.cloud.unit_limits import set_unit_limits
from atelier.cloud.units import UnitTable, parse_units
from atelier.errors import AtelierError
from atelier.principal import Principal

from atelier.security.api_keys import install_key, issue_key
from atelier.security.tenancies import ensure_administration
from atelier.settings import Settings
from atelier.store import repos
from atelier.store.db import Database

log = logging.getLogger(__name__)

DEFAULT_TENANCY = "default"
ADMIN_KEY_FILE = "admin.key"
DEFAULT_CLUSTERS = (("local-fine-tuning", "fine-tuning"), ("local-hosting", "hosting"))
"""The clusters the default tenancy starts with: (name, type), on the default chat model."""


def ensure_operator(db: Database, settings: Settings, catalog: Catalog | None = None) -> str | None:
    """Create the default tenancy and the operator key if needed, and every tenancy's
    Administrators group and protected admin policy; safe on every start.

    Args:
        db: A migrated database.
        settings: Service settings (``data_path``, ``admin_key``, ``default_tenancy_units``...).
        catalog: The base models (the default clusters' sizing); default ``Catalog.load(settings.catalog_file)``.

    Returns:
        The raw operator key when one was just generated (also written to
        ``<data dir>/admin.key``): the caller prints it once. None otherwise: the database
        already had a tenancy, or ``admin_key`` was set (installed, or already installed).

    Raises:
        InvalidInput: ``admin_key`` is not an acceptable key (see ``install_key``), or
            ``default_tenancy_units`` or the unit table is malformed.
    """
    data_dir = settings.data_path
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key is not None else None
    raw: str | None = None
    created: str | None = None
    for attempt in range(2):
        try:
            raw, created = _ensure_once(db, data_dir, admin_key)
            break
        except IntegrityError:  # another process initialized the database at the same time
            if attempt:
                raise
    for attempt in range(2):
        try:
            with db.session() as session:
                for tenancy in repos.list_tenancies(session):
                    ensure_administration(session, tenancy.id)
            break
        except IntegrityError:  # another process added them at the same time
            if attempt:
                raise
    if created is not None:
        provision_default_tenancy(db, settings, catalog or Catalog.load(settings.catalog_file), created)
    return raw


def provision_default_tenancy(db: Database, settings: Settings, catalog: Catalog, tenancy_id: str) -> None:
    """Give the new default tenancy its unit limits and its local fine-tuning and hosting clusters.

    A cluster that cannot be made (the default chat model is not in the catalog, or the
    limits are too small for it) is skipped with a warning: the operator can create it later.

    Raises:
        InvalidInput: ``default_tenancy_units`` or the unit table is malformed.
    """
    table = UnitTable.load(settings.units_file)
    units = parse_units(settings.default_tenancy_units, table, param="default_tenancy_units")
    with db.session() as session:
        set_unit_limits(session, tenancy_id, units, table)
    clusters = ClusterService(db, catalog, table)
    operator = Principal(tenancy_id, "bootstrap", "operator")
    for name, kind in DEFAULT_CLUSTERS:
        try:
            spec = catalog.get(settings.default_chat_model, kind="chat")
            count = spec.sizing.fine_tuning_units if kind == "fine-tuning" else spec.sizing.hosting_units
            clusters.create(operator, ClusterRequest(
                name=name, type=kind, unit_type=spec.sizing.unit_type, unit_count=count, base_model=spec.name,
                description="Created on first start: the service's own workers and engine.",
            ))  # fmt: skip
        except AtelierError as exc:
            log.warning("default tenancy: no %s cluster %r: %s", kind, name, exc.message)


def _ensure_once(db: Database, data_dir: Path, admin_key: str | None) -> tuple[str | None, str | None]:
    """(the generated operator key or None, the id of the default tenancy if it was just created)."""
    with db.session() as session:
        fresh = not repos.any_tenancy(session)
        if not fresh and admin_key is None:
            return None, None
        tenancy = repos.get_tenancy_by_name(session, DEFAULT_TENANCY)
        created = None
        if tenancy is None:
            tenancy = repos.create_tenancy(session, DEFAULT_TENANCY)  # flushed: a racing start fails here
            created = tenancy.id if fresh else None
        if admin_key is not None:
            install_key(session, admin_key, tenancy.id, name="operator (ATELIER_ADMIN_KEY)", role="operator")
            return None, created
        _, raw = issue_key(session, tenancy.id, name="operator", role="operator", expires_in_days=None)
        # Written before the commit: if writing fails, nothing is committed and the next
        # start tries again, instead of leaving an operator key that nobody knows.
        write_private_file(data_dir / ADMIN_KEY_FILE, raw + "\n")
    return raw, created


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), atomically.

    The content goes to a temporary file created with mode 0600 (never wider, whatever
    the umask), then replaces ``path``.
    """
    write_atomically(path, text.encode("utf-8"), mode=0o600)
