"""Routes of Atelier's own resources (tenancies, identity, keys, policies, audit, alerts, limits)."""
