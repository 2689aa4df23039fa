"""The metadata store: database, tables, migrations and tenancy-scoped repositories.

Knows nothing about HTTP, models or policies: it keeps rows and answers queries.
"""

from atelier.store.db import Database

__all__ = ["Database"]
