"""``python -m atelier`` runs the CLI."""

from atelier.cli import app

app()
