"""The ``atelier`` command line (``atelier = "atelier.cli:app"``; ``python -m atelier``).

``main`` assembles the root app from one module per noun (``inference``, ``models``,
``finetune``, ``jobs``, ``files``, ``kb``, ``clusters``, ``endpoints``, ``costs``, ``admin``,
``api_keys``, ``limits``, ``audit``, ``keys``, ``console``, ``serve``) over the shared helpers
of ``common``. Embedders and tests run ``app`` with ``obj=State(...)``.
"""

from atelier.cli.common import State
from atelier.cli.main import app

__all__ = ["State", "app"]
