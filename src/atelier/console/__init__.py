"""The research console: a Streamlit app over Atelier's HTTP API (``atelier console``).

It talks to the service only through ``atelier.client`` (so keys, policies, limits and
audit apply to it like to any client) and knows nothing about the server's internals.
``actions`` holds what it asks the API and how answers are turned into what is shown, and
``playground`` the playground's form and streamed answers (no Streamlit in either, so they
are unit-tested); ``app`` is the Streamlit script (the research assistant's page and the
navigation), ``playground_page`` the Playground page.
"""

from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
"""The Streamlit script that ``atelier console`` runs."""
