"""Cloud services: the resources a tenancy creates and manages, each service taking the Principal first.

Knows nothing about HTTP (the routes in ``atelier.api`` call these services) nor about
model math (``atelier.tuning`` and ``atelier.engine``).
"""
