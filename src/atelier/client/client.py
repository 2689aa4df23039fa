"""``AtelierClient``: one server's API as typed namespaces, configured from ``Settings`` or by hand.

It assembles the resource modules over one ``HttpCore``: the inference verbs
(``client.chat``, ``complete``, ``embed``, ``tokenize``, ``health``) on the client itself, and
a namespace per noun (``client.files``, ``client.fine_tuning.jobs``, ``client.knowledge_bases``,
``client.clusters``, ``client.tenancies``...). It reads the key from the settings but knows
nothing else of the server: everything it learns comes from HTTP responses.
"""

from __future__ import annotations

import httpx

from atelier.client.admin import Alerts, Audit, KeyRing, Tenancies
from atelier.client.base import HttpCore
from atelier.client.clusters import Clusters, Costs, Endpoints
from atelier.client.files import Files
from atelier.client.evaluations import Evaluations
from atelier.client.fine_tuning import CustomModels, FineTuning
from atelier.client.identity import ApiKeys, Compartments, Groups, Policies, Users
from atelier.client.inference import Inference, Models
from atelier.client.knowledge_bases import KnowledgeBases
from atelier.settings import Settings

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
"""Generation on a CPU is slow: wait long for an answer, not for a connection."""


class AtelierClient(Inference):
    """Client of one Atelier server: the inference verbs, and a namespace per noun.

    Attributes:
        models: ``list()`` the models offered.
        custom_models: the models fine-tuning made (``adapter()`` downloads one's adapter).
        files: ``upload``, ``list``, ``get``, ``content``, ``delete``.
        fine_tuning: its ``jobs``: ``create``, ``list``, ``get``, ``cancel``, ``events``, ``checkpoints``.
        evaluations: ``create``, ``list``, ``get``, ``cancel``, ``events``: models scored on test files.
        knowledge_bases: ``create``, ``list``, ``get``, ``delete``, ``query``, ``ask``; their ``documents``.
        clusters, endpoints: dedicated capacity; ``costs``: ``estimate`` and ``metered``.
        tenancies: (operator) ``create``, ``list``, ``get``, ``limits``, ``set_limits``.
        compartments, users, groups, api_keys, policies: identity in your tenancy.
        key_ring, audit, alerts: encryption keys, the audit log, anomaly alerts.

    Args:
        base_url: the server's root URL (the ``/v1`` prefix is added per route).
        api_key: bearer key sent with every request; ``None`` sends no key.
        timeout: seconds, or an ``httpx.Timeout``.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        connection = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        http = HttpCore(connection, self.base_url)
        super().__init__(http)
        self.models = Models(http)
        self.custom_models = CustomModels(http)
        self.files = Files(http)
        self.fine_tuning = FineTuning(http)
        self.evaluations = Evaluations(http)
        self.knowledge_bases = KnowledgeBases(http)
        self.clusters = Clusters(http)
        self.endpoints = Endpoints(http)
        self.costs = Costs(http)
        self.tenancies = Tenancies(http)
        self.compartments = Compartments(http)
        self.users = Users(http)
        self.groups = Groups(http)
        self.api_keys = ApiKeys(http)
        self.policies = Policies(http)
        self.key_ring = KeyRing(http)
        self.audit = Audit(http)
        self.alerts = Alerts(http)

    @classmethod
    def from_env(
        cls,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> AtelierClient:
        """A client configured by ``Settings`` (``ATELIER_URL``, ``ATELIER_API_KEY``).

        The key is, in order: ``ATELIER_API_KEY``, ``ATELIER_ADMIN_KEY``, then the
        administrator key the server wrote to ``<data_dir>/admin.key`` on first start
        (so a local user needs no set-up).

        Args:
            settings: The settings; default read from the environment.
            url: The server's URL instead of the settings' one.
            transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
        """
        settings = settings or Settings()
        return cls(url or settings.url, resolve_api_key(settings), transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AtelierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_api_key(settings: Settings) -> str | None:
    """The key to send: ``api_key``, else ``admin_key``, else ``<data_dir>/admin.key``.

    Args:
        settings: Where the keys are configured.

    Returns:
        The key, or ``None`` when there is none (requests then carry no key).
    """
    for secret in (settings.api_key, settings.admin_key):
        if secret is not None and secret.get_secret_value():
            return secret.get_secret_value()
    path = settings.data_path / "admin.key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return key or None
