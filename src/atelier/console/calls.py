"""One API call from a console page: its result, or the API's error shown in the page (never a traceback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from atelier.client import ApiError, ServerUnreachable
from atelier.console import actions

T = TypeVar("T")


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or ``None`` after showing the API's error in the page."""
    try:
        return fn(*args, **kwargs)
    except (ApiError, ServerUnreachable) as exc:
        st.error(actions.describe_error(exc), icon=":material/error:")
        return None
