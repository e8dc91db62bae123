"""pytest-django helpers shared by fixtures."""

from __future__ import annotations

import pytest


def database_of(request: pytest.FixtureRequest) -> bool:
    """Give the test its database now, if it has one (transactional or not); False if none."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )
    if transactional:
        request.getfixturevalue("transactional_db")
    elif marker is not None or "db" in request.fixturenames:
        request.getfixturevalue("db")
    else:
        return False
    return True
