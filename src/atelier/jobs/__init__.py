"""Background jobs: a queue in the metadata database (leases, heartbeats) and worker processes.

Knows nothing about HTTP; what a job of a given kind does lives in its handler
(``jobs/handlers.py``), which knows nothing about leases.
"""
