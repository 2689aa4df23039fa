"""Model math only. This package knows nothing about HTTP, databases, tenants or policies."""
